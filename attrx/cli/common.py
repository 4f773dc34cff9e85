"""What the stage commands share: argument types and the check for the training extra."""

from __future__ import annotations

import argparse


def csv_list(s: str) -> list[str]:
    items = [x.strip() for x in s.split(",") if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list, e.g. colour,pattern")
    return items


def need_training_extra() -> None:
    # OpenMP threads that wait for work sleep instead of spinning: two trainings sharing a machine
    # then slow each other about 2x rather than fighting for the cores (set it yourself to override)
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise SystemExit(
            f"attrx: this command needs the training extra ({e.name} is not installed): "
            "pip install torch==2.13.0 && pip install 'attrx[train]'"
        ) from None

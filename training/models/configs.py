"""The built-in model configs: one JSON file per architecture under training/configs/ (open_clip's
model_configs/). Read without torch, so the CLI can list them in its help."""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def list_configs() -> list[str]:
    """The built-in configs' names."""
    return sorted(q.stem for q in CONFIG_DIR.glob("*.json"))


def config_path(name_or_path: str) -> Path:
    """A built-in name (`tiny`, `momo-tiny`, ...) or a path to a JSON file -> the file."""
    p = Path(name_or_path)
    if not p.suffix:
        p = CONFIG_DIR / f"{name_or_path}.json"
    if not p.is_file():
        raise FileNotFoundError(f"model config {name_or_path!r} not found; built-in configs: "
                                f"{', '.join(list_configs())}")
    return p


def config_families() -> list[str]:
    """The families the built-in configs are for, in the order their configs sort."""
    families = (json.loads((CONFIG_DIR / f"{n}.json").read_text()).get("family", "cma-clip") for n in list_configs())
    return list(dict.fromkeys(families))

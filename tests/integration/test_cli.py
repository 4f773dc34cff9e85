"""The `attrx` command as a user runs it: flags, ablations, --init-from, bad catalog rows."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attrx.cli import main

ATTRS = "category,colour,pattern,gender"
FAST = ["--warmup-epochs", "1", "--e2e-epochs", "0", "--tune-epochs", "0", "--quiet", "--threads", "2",
        "--val-frac", "0.2", "--test-frac", "0.2"]


def _attrx() -> str:
    exe = Path(sys.executable).parent / "attrx"
    return str(exe) if exe.exists() else shutil.which("attrx")


def test_checkpoints_before_the_eos_change_keep_their_layout():
    """A config without text_sequence (every checkpoint made before it existed) keeps the old
    layout: the pooled state prepended to the token states."""
    import torch

    from attrx.training.models.cma_clip import CMAClip, CMAClipConfig
    from attrx.training.models.factory import load_config

    raw = load_config("tiny").model_dump()
    raw.pop("text_sequence")
    old = CMAClip(CMAClipConfig.model_validate(raw), [3])
    assert old.cfg.text_sequence == "pooled+tokens"
    seen = []
    old.blocks[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    old.eval()(torch.ones(1, 24, dtype=torch.long), torch.ones(1, 24, dtype=torch.long), torch.zeros(1, 3, 64, 64),
               torch.ones(1), torch.ones(1))
    assert seen == [1 + 24 + (64 // 16) ** 2 + 1]


def test_cli_errors_are_clear(demo_catalog, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", str(demo_catalog), "--attributes", "colour,sleeve", "--out", str(tmp_path)])
    assert "missing column(s) sleeve" in str(e.value)
    with pytest.raises(SystemExit) as e:
        main(["train", str(tmp_path / "nope.csv"), "--attributes", "colour", "--out", str(tmp_path)])
    assert "does not exist" in str(e.value)
    with pytest.raises(SystemExit) as e:
        main(["train", str(demo_catalog), "--attributes", "colour", "--out", str(tmp_path),
              "--init-from", str(tmp_path)])
    assert "no config.json" in str(e.value)
    with pytest.raises(SystemExit) as e:
        main(["validate-bundle", str(tmp_path)])
    assert "invalid bundle" in str(e.value) and "manifest.json is missing" in str(e.value)


def test_console_script_validates_a_bundle(bundle):
    r = subprocess.run([_attrx(), "validate-bundle", str(bundle)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "is valid: tiny-test" in r.stdout
    r = subprocess.run([_attrx(), "train", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--no-mwa" in r.stdout and "--init-from" in r.stdout


def test_service_modules_do_not_import_torch():
    """The serving install has no torch: no module of attrx.service, nor the CLI's parser, may import
    torch, transformers, attrx.export or training code at module level (the CLI does so lazily, inside
    training commands). The parser reads two torch-free training modules only: the training and
    pre-training parameters (their defaults, for --help) and the list of built-in model configs. Every
    service module is imported, so a new one is covered too."""
    allowed = ("attrx.training", "attrx.training.params", "attrx.training.models", "attrx.training.models.configs")
    code = ("import importlib, pkgutil, sys, attrx.service, attrx.cli\n"
            "for m in pkgutil.walk_packages(attrx.service.__path__, 'attrx.service.'):\n"
            "    importlib.import_module(m.name)\n"
            "attrx.cli.build_parser()\n"
            "bad = sorted(m for m in sys.modules if m in ('torch', 'transformers') or m.startswith('attrx.export')\n"
            f"             or (m.startswith('attrx.training') and m not in {allowed!r}))\n"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"service imports {r.stdout.strip()} at module level {r.stderr[-2000:]}"



"""The `attrx` command as a user runs it: flags, ablations, --init-from, bad catalog rows."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.cli import main

ATTRS = "category,colour,pattern,gender"
FAST = ["--warmup-epochs", "1", "--e2e-epochs", "0", "--tune-epochs", "0", "--quiet", "--threads", "2",
        "--val-frac", "0.2", "--test-frac", "0.2"]


def _attrx() -> str:
    exe = Path(sys.executable).parent / "attrx"
    return str(exe) if exe.exists() else shutil.which("attrx")


@pytest.fixture()
def messy_catalog(demo_catalog, tmp_path) -> Path:
    """The demo catalog plus malformed rows: no id, neither title nor image, a corrupt image."""
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    lines = demo_catalog.read_text().splitlines()
    img_dir = demo_catalog.parent / "images"
    body = [ln.replace("images/", f"{img_dir}/") for ln in lines[1:]]
    extra = [",No id,,cap,red,solid,men", "bad-2,,,cap,red,solid,men", "bad-3,A cap,corrupt.jpg,cap,red,solid,men"]
    p = tmp_path / "messy.csv"
    p.write_text("\n".join([lines[0], *body[:100], *extra, *body[100:]]) + "\n")
    return p


def test_cli_ablation_flags_and_bad_rows(messy_catalog, tmp_path):
    out = tmp_path / "ck"
    main(["train", "--catalog", str(messy_catalog), "--attributes", ATTRS, "--out", str(out), "--no-mwa", *FAST])
    errors = [json.loads(x) for x in (out / "catalog_errors.jsonl").read_text().splitlines()]
    assert [(e["line"], e["id"]) for e in errors] == [(102, None), (103, "bad-2"), (104, "bad-3")]
    assert errors[0]["reason"] == "no id" and "neither" in errors[1]["reason"] and "corrupt.jpg" in errors[2]["reason"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["use_mwa"] is False and cfg["counts"]["skipped"] == 3
    main(["eval", "--checkpoint", str(out), "--catalog", str(messy_catalog), "--quiet", "--min-positives", "1"])
    main(["export", "--checkpoint", str(out), "--out", str(tmp_path / "b")])
    import onnxruntime as ort

    from export.onnx import example_inputs
    from training.checkpoint import load_checkpoint

    ck = load_checkpoint(out)
    feeds = example_inputs(ck.model, 16, ck.preprocess.max_text_len, ck.preprocess.image_size)
    outs = ort.InferenceSession(str(tmp_path / "b" / "model.onnx")).run(None, feeds)
    both = (feeds["text_present"] > 0) & (feeds["image_present"] > 0)
    assert both.any()
    np.testing.assert_allclose(outs[1][both], 0.5)  # no learned modality weights


def test_cli_no_swa_trains(demo_catalog, tmp_path):
    main(["train", "--catalog", str(demo_catalog), "--attributes", "colour", "--out", str(tmp_path / "ck"),
          "--no-swa", *FAST])
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["model"]["use_swa"] is False


def test_init_from_local_clip_folder_freezes_towers_in_warmup(demo_catalog, tmp_path):
    """A Hugging Face CLIP folder (here: a tiny random one saved with save_pretrained) seeds the towers;
    the warm-up stage leaves them exactly as loaded."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from training import text
    from training.checkpoint import load_checkpoint

    tok = text.train_wordpiece([ln.split(",")[1] for ln in demo_catalog.read_text().splitlines()[1:]], 300)
    ids = text.special_ids(tok)
    cfg = CLIPConfig(
        text_config={"vocab_size": tok.get_vocab_size(), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 20, **ids},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 48, "patch_size": 12})
    torch.manual_seed(1)
    clip = CLIPModel(cfg)
    src = tmp_path / "clip"
    clip.save_pretrained(src)
    text.save(tok, src / "tokenizer.json")
    (src / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25] * 3}))

    out = tmp_path / "ck"
    main(["train", "--catalog", str(demo_catalog), "--attributes", "colour", "--out", str(out),
          "--init-from", str(src), *FAST])
    ck = load_checkpoint(out)
    assert ck.preprocess.image_size == 48 and ck.preprocess.image_mean == (0.5, 0.5, 0.5)
    assert ck.preprocess.max_text_len == 20
    torch.testing.assert_close(ck.model.text.embeddings.token_embedding.weight,
                               clip.text_model.embeddings.token_embedding.weight)
    torch.testing.assert_close(ck.model.vision.embeddings.patch_embedding.weight,
                               clip.vision_model.embeddings.patch_embedding.weight)
    # and the model made from it goes all the way: eval -> export -> a real server answers
    import httpx

    from tests.conftest import Server

    main(["eval", "--checkpoint", str(out), "--catalog", str(demo_catalog), "--quiet", "--min-positives", "1"])
    main(["export", "--checkpoint", str(out), "--out", str(tmp_path / "bundle")])
    server = Server(tmp_path / "bundle")
    try:
        r = httpx.post(server.url + "/v1/extract", json={"title": "Nimbus Men Blue Cap"}, timeout=10)
        assert r.status_code == 200 and r.json()["predictions"]["colour"]["modality_weights"]["text"] == 1.0
    finally:
        server.stop()


def test_cli_errors_are_clear(demo_catalog, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--catalog", str(demo_catalog), "--attributes", "colour,sleeve", "--out", str(tmp_path)])
    assert "missing column(s) sleeve" in str(e.value)
    with pytest.raises(SystemExit) as e:
        main(["train", "--catalog", str(tmp_path / "nope.csv"), "--attributes", "colour", "--out", str(tmp_path)])
    assert "does not exist" in str(e.value)
    with pytest.raises(SystemExit) as e:
        main(["train", "--catalog", str(demo_catalog), "--attributes", "colour", "--out", str(tmp_path),
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
    """The serving install has no torch: service/ may import it only lazily, inside training commands."""
    code = ("import sys, service.preprocess, service.catalog, service.bundle, service.cli; "
            "service.cli.build_parser(); "
            "bad = sorted(m for m in ('torch', 'transformers', 'training', 'export') if m in sys.modules); "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"service imports {r.stdout.strip()} at module level"

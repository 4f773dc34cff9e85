"""`attrx train` from the command line: ablation flags, bad rows, CLIP folders, devices and precisions."""

import json
from pathlib import Path

import numpy as np
import pytest

from attrx.cli import main

ATTRS = "category,colour,pattern,gender"
FAST = ["--warmup-epochs", "1", "--e2e-epochs", "0", "--tune-epochs", "0", "--quiet", "--threads", "2",
        "--val-frac", "0.2", "--test-frac", "0.2"]


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
    main(["train", str(messy_catalog), "--attributes", ATTRS, "--out", str(out), "--no-mwa", *FAST])
    errors = [json.loads(x) for x in (out / "catalog_errors.jsonl").read_text().splitlines()]
    assert [(e["line"], e["id"]) for e in errors] == [(102, None), (103, "bad-2"), (104, "bad-3")]
    assert errors[0]["reason"] == "no id" and "neither" in errors[1]["reason"] and "corrupt.jpg" in errors[2]["reason"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["use_mwa"] is False and cfg["counts"]["skipped"] == 3
    main(["eval", "--checkpoint", str(out), str(messy_catalog), "--quiet", "--min-positives", "1"])
    main(["export", "--checkpoint", str(out), "--out", str(tmp_path / "b")])
    import onnxruntime as ort

    from attrx.export.onnx_export import example_inputs
    from attrx.training.models.checkpoint import load_checkpoint

    ck = load_checkpoint(out)
    feeds = example_inputs(ck.model, 16, ck.preprocess.max_text_len, ck.preprocess.image_size)
    outs = ort.InferenceSession(str(tmp_path / "b" / "model.onnx")).run(None, feeds)
    both = (feeds["text_present"] > 0) & (feeds["image_present"] > 0)
    assert both.any()
    np.testing.assert_allclose(outs[1][both], 0.5)  # no learned modality weights


def test_cli_no_swa_trains(demo_catalog, tmp_path):
    main(["train", str(demo_catalog), "--attributes", "colour", "--out", str(tmp_path / "ck"),
          "--no-swa", *FAST])
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["model"]["use_swa"] is False


def _tiny_clip_folder(demo_catalog, folder, projection_dim: int = 16):
    """A tiny random Hugging Face CLIPModel saved with save_pretrained, with a tokenizer."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from attrx.training.data import tokenizer

    tok = tokenizer.train_wordpiece([ln.split(",")[1] for ln in demo_catalog.read_text().splitlines()[1:]], 300)
    ids = tokenizer.special_ids(tok)
    cfg = CLIPConfig(
        text_config={"vocab_size": tok.get_vocab_size(), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 20, **ids},
        vision_config={"hidden_size": 24, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 48, "patch_size": 12},
        projection_dim=projection_dim)
    torch.manual_seed(1)
    clip = CLIPModel(cfg)
    clip.save_pretrained(folder)
    tokenizer.save(tok, folder / "tokenizer.json")
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25] * 3}))
    return clip


def test_init_from_clip_starts_from_its_projections(demo_catalog, tmp_path):
    """T' and I' start in CLIP's joint space: the projections are CLIP's own, and the fusion width
    is its projection_dim; the text sequence holds the EOS state once, T' is read there."""
    import torch

    from attrx.training.models.factory import create_model
    from attrx.training.params import TrainConfig

    clip = _tiny_clip_folder(demo_catalog, tmp_path / "clip")
    cfg = TrainConfig(catalog=str(demo_catalog), attributes=["colour"], out=str(tmp_path / "o"),
                      init_from=str(tmp_path / "clip"))
    model, pre = create_model(cfg, [3], {}, 300)
    assert model.cfg.fusion.width == 16 and model.cfg.text_sequence == "tokens"
    torch.testing.assert_close(model.proj_t.weight, clip.text_projection.weight)
    torch.testing.assert_close(model.proj_v.weight, clip.visual_projection.weight)
    assert not model.proj_t.bias.any() and not model.proj_v.bias.any()
    # the sequence-wise attention sees L text states (not L + 1) and the image patches
    seen = []
    model.blocks[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    ids = torch.full((2, pre.max_text_len), 0, dtype=torch.long)
    ids[:, :4] = torch.tensor([clip.config.text_config.bos_token_id, 7, 8, clip.config.text_config.eos_token_id])
    mask = (torch.arange(pre.max_text_len) < 4).long().expand(2, -1)
    model.eval()(ids, mask, torch.zeros(2, 3, 48, 48), torch.ones(2), torch.ones(2))
    assert seen == [pre.max_text_len + (48 // 12) ** 2 + 1]
    assert model._eos_index(ids, mask).tolist() == [3, 3]


def test_init_from_local_clip_folder_freezes_towers_in_warmup(demo_catalog, tmp_path):
    """A Hugging Face CLIP folder (here: a tiny random one saved with save_pretrained) seeds the towers;
    the warm-up stage leaves them exactly as loaded."""
    import torch

    from attrx.training.models.checkpoint import load_checkpoint

    src = tmp_path / "clip"
    clip = _tiny_clip_folder(demo_catalog, src)

    out = tmp_path / "ck"
    main(["train", str(demo_catalog), "--attributes", "colour", "--out", str(out),
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
    from helpers import Server

    main(["eval", "--checkpoint", str(out), str(demo_catalog), "--quiet", "--min-positives", "1"])
    main(["export", "--checkpoint", str(out), "--out", str(tmp_path / "bundle")])
    server = Server(tmp_path / "bundle")
    try:
        r = httpx.post(server.url + "/v1/extract", json={"title": "Nimbus Men Blue Cap"}, timeout=10)
        assert r.status_code == 200 and r.json()["predictions"]["colour"]["modality_weights"]["text"] == 1.0
    finally:
        server.stop()


def test_train_device_and_precision(demo_catalog, tmp_path, capsys):
    """bf16 autocast on the CPU trains and still writes fp32 weights; what cannot run here is refused
    by name. (CUDA runs are tested where torch sees a GPU.)"""
    import torch

    from attrx.training.models.checkpoint import load_checkpoint

    out = tmp_path / "ck"
    main(["train", str(demo_catalog), "--attributes", "colour", "--out", str(out),
          "--device", "cpu", "--amp", "bf16", *FAST])
    assert "training on cpu at bf16" in capsys.readouterr().out
    ck = load_checkpoint(out)
    assert all(p.dtype == torch.float32 for p in ck.model.parameters())
    assert json.loads((out / "config.json").read_text())["training"]["amp"] == "bf16"
    with pytest.raises(SystemExit, match="--amp fp16 needs --device cuda"):
        main(["train", str(demo_catalog), "--attributes", "colour", "--out", str(tmp_path / "x"),
              "--device", "cpu", "--amp", "fp16", *FAST])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--device cuda: CUDA is not available"):
            main(["train", str(demo_catalog), "--attributes", "colour", "--out", str(tmp_path / "y"),
                  "--device", "cuda", *FAST])


def test_train_on_cuda(demo_catalog, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch (this machine has no GPU; the CPU build of torch is installed)")
    from attrx.training.models.checkpoint import load_checkpoint  # pragma: no cover - GPU machines only

    for prec in ("fp16", "bf16"):
        out = tmp_path / prec
        main(["train", str(demo_catalog), "--attributes", "colour", "--out", str(out),
              "--device", "cuda", "--amp", prec, *FAST])
        assert next(load_checkpoint(out).model.parameters()).device.type == "cpu"

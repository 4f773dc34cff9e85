"""SIMLA on the real demo catalog: pre-training's losses, fine-tuning from it, export with its
self- and cross-attention fused, parity with each modality missing, and serving the concept head's
evidence through the same server as every family."""

import base64
import json

import httpx
import numpy as np
import pytest
import torch
from helpers import Server
from safetensors.torch import load_file

from attrx.cli import main
from attrx.service.contract.bundle import CONCEPT_OUTPUTS, load_bundle

LOSSES = {"itc", "itm", "mlm", "xmm", "concept"}


@pytest.fixture(scope="session")
def simla_pretrained(demo_catalog, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "simla"
    main(["pretrain", "--family", "simla", str(demo_catalog), "--out", str(out), "--steps", "48",
          "--batch-size", "16", "--quiet", "--threads", "2"])
    return out


@pytest.fixture(scope="session")
def simla_checkpoint(simla_pretrained, demo_catalog, tmp_path_factory):
    ck = tmp_path_factory.mktemp("simla") / "ck"
    main(["train", "--family", "simla", "--init-from", str(simla_pretrained), str(demo_catalog),
          "--attributes", "colour,pattern,gender", "--out", str(ck), "--warmup-epochs", "1", "--e2e-epochs", "2",
          "--tune-epochs", "0", "--quiet", "--threads", "2", "--val-frac", "0.2", "--test-frac", "0.2"])
    return ck


def test_every_pretraining_loss_is_finite_and_falls(simla_pretrained):
    log = [json.loads(x) for x in (simla_pretrained / "pretrain_log.jsonl").read_text().splitlines()]
    assert len(log) == 48 and set(log[0]) - {"stage", "step"} == LOSSES
    for name in LOSSES:
        v = np.array([r[name] for r in log])
        assert np.isfinite(v).all(), name
        assert v[-10:].mean() < v[:10].mean(), (name, v[:10].mean(), v[-10:].mean())
    assert (simla_pretrained / "pretrain_losses.png").read_bytes()[:4] == b"\x89PNG"
    cfg = json.loads((simla_pretrained / "config.json").read_text())
    assert cfg["kind"] == "pretrained-encoder" and cfg["family"] == "simla"
    keys = load_file(str(simla_pretrained / "model.safetensors"))
    # the classifier's own weights (the pre-training heads are dropped), the concept head among them
    assert "concept.weight" in keys and not any(k.startswith(("itm_head", "pix_head", "heads.")) for k in keys)


def test_fine_tuning_starts_from_the_pretrained_weights(simla_pretrained, demo_catalog, tmp_path):
    from attrx.training.models.checkpoint import load_checkpoint

    ck = tmp_path / "ck"
    main(["train", "--family", "simla", "--init-from", str(simla_pretrained), str(demo_catalog),
          "--attributes", "colour", "--out", str(ck), "--warmup-epochs", "1", "--e2e-epochs", "0",
          "--tune-epochs", "0", "--quiet", "--threads", "2", "--val-frac", "0.2", "--test-frac", "0.2"])
    pre = load_file(str(simla_pretrained / "model.safetensors"))
    model = load_checkpoint(ck).model
    # warm-up keeps the shared layers and embeddings as pre-trained; the cross-attention trains
    torch.testing.assert_close(model.text.tok_embed.weight, pre["text.tok_embed.weight"])
    torch.testing.assert_close(model.text.layers[2].block.qkv.weight, pre["text.layers.2.block.qkv.weight"])
    assert not torch.equal(model.text.layers[2].cross.q.weight, pre["text.layers.2.cross.q.weight"])


def _missing(ex: dict, which: str) -> dict:
    ex = {k: v.copy() for k, v in ex.items()}
    ex["text_present" if which == "title" else "image_present"][:] = 0.0
    ex["image_present" if which == "title" else "text_present"][:] = 1.0
    return ex


def test_export_fuses_self_and_cross_attention_with_parity_for_each_modality_missing(simla_checkpoint, tmp_path):
    from attrx.export.build import export_bundle
    from attrx.export.onnx_export import attention_calls, attention_nodes, example_inputs
    from attrx.export.parity import check_parity
    from attrx.training.models.checkpoint import load_checkpoint

    out = tmp_path / "bundle"
    export_bundle(simla_checkpoint, out, name="simla-test", precisions=["fp32", "fp16"])
    b = load_bundle(out)
    assert b.manifest.model.family == "simla" and b.manifest.model.concepts
    assert b.manifest.parity["max_abs_diff"] <= 1e-4
    nodes = attention_nodes(out / "model.onnx")
    ck = load_checkpoint(simla_checkpoint)
    layers = ck.model.cfg.num_layers
    # every attention one fused node: the ViT's 2, the shared layers' self-attention in both passes,
    # and the multimodal pass's cross-attention
    assert nodes == {"self": 2 + 2 * layers, "cross": layers}
    ex = example_inputs(ck.model, 8, ck.preprocess.max_text_len, ck.preprocess.image_size, seed=3)
    assert attention_calls(ck.model, ex, unimodal=True) == nodes
    names = list(b.manifest.model.outputs)
    assert names[-2:] == list(CONCEPT_OUTPUTS)
    report = check_parity(ck.model, out / "model.onnx",
                          {"no_title": _missing(ex, "title"), "no_image": _missing(ex, "image")}, names)
    assert all(r["max_abs_diff"] <= 1e-4 for r in report.values()), report
    assert "fp16" in b.manifest.variants or "fp16" in b.manifest.refused  # the gate decided, either way


def test_the_server_answers_with_the_images_evidence(simla_checkpoint, demo_catalog, tmp_path):
    out = tmp_path / "bundle"
    main(["export", "--checkpoint", str(simla_checkpoint), "--out", str(out), "--name", "simla-test"])
    row = demo_catalog.read_text().splitlines()[1].split(",")
    title, image = row[1], (demo_catalog.parent / row[2]).read_bytes()
    server = Server(out)
    try:
        r = httpx.post(server.url + "/v1/extract", data={"title": title}, files={"image": ("a.jpg", image)},
                       timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        words = [w["word"] for w in body["evidence"]["image_backs"]]
        assert words and set(words) <= set(title.lower().replace("'", " ' ").replace("-", " - ").split())
        scores = [w["score"] for w in body["evidence"]["image_backs"]]
        assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
        w = body["predictions"]["colour"]["modality_weights"]
        assert 0 < w["text"] < 1 and abs(w["text"] + w["image"] - 1) < 1e-6
        r = httpx.post(server.url + "/v1/extract", json={"title": title}, timeout=10)
        assert "evidence" not in r.json()  # no image: nothing for the image to back
        assert all(p["modality_weights"] == {"text": 1.0, "image": 0.0} for p in r.json()["predictions"].values())
        r = httpx.post(server.url + "/v1/extract", files={"image": ("a.jpg", image)}, timeout=10)
        assert all(p["modality_weights"] == {"text": 0.0, "image": 1.0} for p in r.json()["predictions"].values())
        items = [{"id": "x", "title": title}, {"id": "y", "title": title, "image_base64": base64.b64encode(image).decode()}]
        r = httpx.post(server.url + "/v1/extract/batch", json=items, timeout=10)
        assert r.status_code == 200
        res = r.json()["results"]
        assert "evidence" not in res[0] and res[1]["evidence"] == body["evidence"]
    finally:
        server.stop()


def test_eval_reports_what_the_image_itself_backs(simla_checkpoint, demo_catalog, tmp_path):
    main(["eval", "--checkpoint", str(simla_checkpoint), str(demo_catalog), "--quiet",
          "--min-positives", "1", "--out", str(tmp_path / "ev"), "--report", str(tmp_path / "report")])
    con = json.loads((tmp_path / "ev" / "metrics.json").read_text())["concepts"]
    assert con["attribute"] == "colour" and con["products"] > 20 and 0 <= con["rank1"] <= 1
    assert set(con["per_colour"]) <= set(json.loads((simla_checkpoint / "config.json").read_text())
                                         ["attributes"]["colour"])
    assert (tmp_path / "report" / "concepts_colour.png").read_bytes()[:4] == b"\x89PNG"
    assert "What the image itself backs" in (tmp_path / "report" / "summary.md").read_text()


def test_simla_refuses_flags_of_other_families(demo_catalog, tmp_path):
    for flag in ("--no-swa", "--modality-specific-layernorm"):
        with pytest.raises(SystemExit, match=f"{flag} does not apply to SIMLA"):
            main(["train", "--family", "simla", str(demo_catalog), "--attributes", "colour",
                  "--out", str(tmp_path), flag, "--quiet"])
    with pytest.raises(SystemExit, match="--stage1-steps does not apply to --family simla"):
        main(["pretrain", "--family", "simla", str(demo_catalog), "--out", str(tmp_path),
              "--stage1-steps", "3"])
    with pytest.raises(SystemExit, match="--lock-image, --steps do not apply to --family momo"):
        main(["pretrain", str(demo_catalog), "--out", str(tmp_path), "--steps", "3", "--lock-image"])
    with pytest.raises(SystemExit, match="is a simla config but --family is momo"):
        main(["train", "--family", "momo", "--config", "simla-tiny", str(demo_catalog),
              "--attributes", "colour", "--out", str(tmp_path), "--quiet"])


def test_the_pretrained_image_towers_plug_in(tmp_path):
    """SIMLA's image encoder can be a CNN tower of issue 22: it builds, exports fused and holds parity."""
    from attrx.export.onnx_export import attention_nodes, example_inputs, export_onnx
    from attrx.export.parity import check_parity
    from attrx.training.models.factory import load_config
    from attrx.training.models.simla import SimlaClassifier

    cfg = load_config("simla-effnet").model_copy(update={"image_pretrained": False})
    model = SimlaClassifier(cfg, [4], pad_token_id=0, bos_token_id=2, eos_token_id=3).eval()
    names = export_onnx(model, ["colour"], tmp_path / "m.onnx", max_len=24, image_size=cfg.image_size)
    assert attention_nodes(tmp_path / "m.onnx") == {"self": 2 * cfg.num_layers, "cross": cfg.num_layers}
    ex = example_inputs(model, 4, 24, cfg.image_size, seed=1)
    report = check_parity(model, tmp_path / "m.onnx", {"random": ex, "no_image": _missing(ex, "image")}, names)
    assert all(r["max_abs_diff"] <= 1e-4 for r in report.values()), report


def test_a_pretraining_of_a_few_steps_runs(demo_catalog, tmp_path):
    """Below 20 steps the one-cycle warm-up would be under one step (OneCycleLR divides by zero)."""
    main(["pretrain", "--family", "simla", str(demo_catalog), "--out", str(tmp_path / "s"),
          "--steps", "5", "--batch-size", "8", "--quiet", "--threads", "2"])
    main(["pretrain", str(demo_catalog), "--out", str(tmp_path / "m"), "--stage1-steps", "2",
          "--stage2-steps", "2", "--stage3-steps", "2", "--batch-size", "8", "--quiet", "--threads", "2"])
    assert len((tmp_path / "s" / "pretrain_log.jsonl").read_text().splitlines()) == 5
    assert len((tmp_path / "m" / "pretrain_log.jsonl").read_text().splitlines()) == 6

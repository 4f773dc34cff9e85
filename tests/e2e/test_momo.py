"""MoMo: the shared encoder family trains, exports and serves through the same commands."""

import json

import httpx
import numpy as np
import pytest
import torch
from helpers import Server

from attrx.cli import main
from attrx.service.contract.bundle import load_bundle
from attrx.training.models.momo import visible_tokens


def test_visible_tokens_hold_only_visible_content():
    b, s, d = 3, 10, 4
    x = torch.arange(b * s, dtype=torch.float32).repeat_interleave(d).view(b, s, d) + 1  # every token unique, nonzero
    visible = torch.rand(b, s, generator=torch.Generator().manual_seed(0)) < 0.4
    visible[0] = False
    visible[0, [2, 7]] = True
    x_vis, keep, idx = visible_tokens(x, visible)
    assert x_vis.shape == (b, int(visible.sum(1).max()), d)
    for i in range(b):
        n = int(visible[i].sum())
        assert keep[i].sum() == n and keep[i, :n].all()
        # in order, exactly the visible tokens; the padding slots are zeros, not masked tokens
        torch.testing.assert_close(x_vis[i, :n], x[i][visible[i]])
        assert not x_vis[i, n:].any()
    assert idx[0, :2].tolist() == [2, 7]


def test_momo_trains_exports_and_serves(demo_catalog, tmp_path):
    ck, out = tmp_path / "ck", tmp_path / "bundle"
    main(["train", "--family", "momo", str(demo_catalog), "--attributes", "colour,pattern,gender",
          "--out", str(ck), "--warmup-epochs", "1", "--e2e-epochs", "1", "--tune-epochs", "1", "--quiet",
          "--threads", "2", "--val-frac", "0.2", "--test-frac", "0.2"])
    cfg = json.loads((ck / "config.json").read_text())
    assert cfg["model"]["family"] == "momo" and "token_spec" in cfg
    main(["eval", "--checkpoint", str(ck), str(demo_catalog), "--quiet", "--min-positives", "1"])
    main(["export", "--checkpoint", str(ck), "--out", str(out), "--name", "momo-test"])
    b = load_bundle(out)
    assert b.manifest.model.family == "momo" and b.manifest.parity["max_abs_diff"] <= 1e-4
    server = Server(out)
    try:
        r = httpx.post(server.url + "/v1/extract", json={"title": "Velora Women Pink Dotted Dress"}, timeout=10)
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        assert set(preds) == {"colour", "pattern", "gender"}
        assert all(p["modality_weights"] == {"text": 1.0, "image": 0.0} for p in preds.values())
        assert httpx.get(server.url + "/v1/model", timeout=10).json()["family"] == "momo"
    finally:
        server.stop()


def test_momo_rejects_cma_clip_only_flags(demo_catalog, tmp_path):
    with pytest.raises(SystemExit, match="--no-swa is a CMA-CLIP ablation"):
        main(["train", "--family", "momo", str(demo_catalog), "--attributes", "colour",
              "--out", str(tmp_path), "--no-swa", "--quiet"])
    with pytest.raises(SystemExit, match="is a cma-clip config but --family is momo"):
        main(["train", "--family", "momo", "--config", "base", str(demo_catalog),
              "--attributes", "colour", "--out", str(tmp_path), "--quiet"])


def test_momo_export_parity_on_random_batches(tmp_path):
    from attrx.export.onnx_export import example_inputs, export_onnx
    from attrx.export.parity import check_parity
    from attrx.training.models.factory import load_config
    from attrx.training.models.momo import MoMoClassifier

    torch.manual_seed(0)
    m = MoMoClassifier(load_config("momo-tiny").model_copy(update={"vocab_size": 200}), [4, 3]).eval()
    outputs = export_onnx(m, ["a", "b"], tmp_path / "m.onnx", max_len=24, image_size=64)
    feeds = {f"b{n}": example_inputs(m, n, 24, 64, seed=n) for n in (1, 9)}
    report = check_parity(m, tmp_path / "m.onnx", feeds, outputs, 1e-4)
    assert max(r["max_abs_diff"] for r in report.values()) <= 1e-4
    assert np.isfinite([r["max_abs_diff"] for r in report.values()]).all()

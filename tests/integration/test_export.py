"""Export: fused attention, precision variants and their gates, the v2 manifest (v1 still read)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from attrx.service.contract.bundle import BundleError, choose_variant, load_bundle


def _layers(ck) -> int:
    """Attention layers in the config: text tower + vision tower + fusion blocks."""
    cfg = ck.model_config
    return cfg.text.num_hidden_layers + cfg.vision.num_hidden_layers + (cfg.fusion.num_layers if cfg.use_swa else 0)


def test_fused_export_has_one_attention_node_per_attention(checkpoint, tmp_path):
    from attrx.export.onnx_export import export_onnx, op_counts, unfused_attention
    from attrx.training.models.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint)
    pre = ck.preprocess
    fused, unfused = tmp_path / "fused.onnx", tmp_path / "unfused.onnx"
    export_onnx(ck.model, ck.attributes, fused, max_len=pre.max_text_len, image_size=pre.image_size)
    export_onnx(ck.model, ck.attributes, unfused, max_len=pre.max_text_len, image_size=pre.image_size,
                attention="unfused")
    assert op_counts(fused)["Attention"] == _layers(ck) == 6
    assert unfused_attention(fused) == []
    # each takes its 3D projections: no Transpose/Reshape pairs left around it
    import onnx

    nodes = onnx.load(str(fused)).graph.node
    atts = [n for n in nodes if n.op_type == "Attention"]
    assert all({a.name: a.i for a in n.attribute}.get("q_num_heads") == 4 for n in atts)
    producers = {o: n.op_type for n in nodes for o in n.output}
    assert not [i for n in atts for i in n.input[:3] if producers.get(i) == "Transpose"]
    # the check is not blind: the unfused graph has every attention as MatMul/Softmax
    assert op_counts(unfused)["Attention"] == 0 and len(unfused_attention(unfused)) == _layers(ck)
    # the model's own attention setting is left as it was
    assert ck.model.text.config._attn_implementation == "sdpa"


def test_fused_parity_with_missing_modalities(checkpoint, tmp_path):
    from attrx.export.onnx_export import example_inputs, export_onnx
    from attrx.export.parity import check_parity
    from attrx.training.models.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint)
    pre = ck.preprocess
    outputs = export_onnx(ck.model, ck.attributes, tmp_path / "m.onnx", max_len=pre.max_text_len,
                          image_size=pre.image_size)
    batches = {}
    for name, tp, ip in (("no_image", 1.0, 0.0), ("no_title", 0.0, 1.0), ("both", 1.0, 1.0)):
        feeds = example_inputs(ck.model, 9, pre.max_text_len, pre.image_size, seed=3)
        feeds["text_present"][:], feeds["image_present"][:] = tp, ip
        batches[name] = feeds
    report = check_parity(ck.model, tmp_path / "m.onnx", batches, outputs, 1e-4)
    assert set(report) == {"no_image", "no_title", "both"}
    assert all(r["max_abs_diff"] <= 1e-4 for r in report.values())


@pytest.fixture(scope="module")
def variant_bundle(checkpoint, tmp_path_factory, request):
    """fp32 + fp16 + int8 with the gates loosened so both are kept whatever this tiny model's
    figures are (the gate itself is tested below); the measured figures stay in the manifest."""
    from attrx.export import precision
    from attrx.export.build import export_bundle

    mp = pytest.MonkeyPatch()
    mp.setitem(precision.GATES, "fp16", {"min_agreement": 0.0, "max_prob_diff": 1.0})
    mp.setitem(precision.GATES, "int8", {"min_agreement": 0.0, "max_accuracy_drop": 1.0})
    try:
        result = export_bundle(checkpoint, tmp_path_factory.mktemp("v") / "b", precisions=["int8", "fp16"])
    finally:
        mp.undo()
    return result


def test_variants_are_listed_with_their_reports(variant_bundle):
    assert variant_bundle.variants == ["fp32", "fp16", "int8"] and variant_bundle.refused == {}
    b = load_bundle(variant_bundle.path)
    m = b.manifest
    assert m.schema_version == 5 and m.model.attention == "fused" and m.model.opset >= 23 and m.model.unimodal
    assert {k: (v.file, v.precision, v.providers) for k, v in m.variants.items()} == {
        "fp32": ("model.onnx", "fp32", ["cpu", "cuda", "tensorrt"]),
        "fp16": ("model.fp16.onnx", "fp16", ["cuda", "tensorrt"]),
        "int8": ("model.int8.onnx", "int8", ["cpu"])}
    for key in ("fp16", "int8"):
        rep = m.variants[key].parity
        assert rep["items"] > 0 and "test split" in rep["source"]
        assert set(rep["attributes"]) == {a.name for a in m.attributes}
        # an untrained model's int8 agreement is noise around one half: its WordPiece vocabulary, trained
        # anew in each test process, breaks ties differently every run (HF tokenizers), so a bound at 0.5
        # failed about one run in two (40-52% seen on main); the gates themselves: test_refused_variant_*
        assert all(0.0 < r["agreement"] <= 1.0 for r in rep["attributes"].values())
        assert b.variant_path(key).stat().st_size < b.model_path.stat().st_size  # really converted


def test_variants_run_and_auto_picks_per_provider(variant_bundle, checkpoint):
    from attrx.service.inference.predictor import Predictor
    from attrx.service.inference.runtime import load_backend

    b = load_bundle(variant_bundle.path)
    assert choose_variant(b.manifest, "auto", "cpu") == "int8"
    assert choose_variant(b.manifest, "auto", "cuda") == "fp16"
    assert choose_variant(b.manifest, "fp32", "cpu") == "fp32"
    feeds = Predictor(b).decode_request("Roadster Men Blue Striped Tee", None).inputs
    ref = load_backend(b, precision="fp32").run(feeds)
    for prec in ("int8", "fp16"):
        backend = load_backend(b, precision=prec)
        assert (backend.precision, backend.variant) == (prec, prec)
        for r, g in zip(ref, backend.run(feeds), strict=True):
            assert g.dtype == np.float32 and r.shape == g.shape
            np.testing.assert_allclose(r, g, atol=0.2)


def test_refused_variant_is_named_and_export_exits_3(checkpoint, tmp_path, monkeypatch, capsys):
    from attrx.cli import main
    from attrx.export import precision

    monkeypatch.setitem(precision.GATES, "int8", {"min_agreement": 1.01, "max_accuracy_drop": 0.0})  # unreachable
    with pytest.raises(SystemExit) as e:
        main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "b"), "--variants", "int8"])
    assert e.value.code == 3  # done, but part of the result refused
    err = capsys.readouterr().err
    assert "written without int8" in err and "argmax agrees with fp32" in err and "needs >= 101.0%" in err
    b = load_bundle(tmp_path / "b")  # the bundle is still written, without the refused variant
    assert list(b.manifest.variants) == ["fp32"] and "argmax agrees" in b.manifest.refused["int8"]
    assert not (tmp_path / "b" / "model.int8.onnx").exists()
    with pytest.raises(BundleError, match="no int8 variant \\(export refused it: category: argmax"):
        choose_variant(b.manifest, "int8", "cpu")
    assert choose_variant(b.manifest, "auto", "cpu") == "fp32"


def test_variants_need_real_items(checkpoint, tmp_path):
    from attrx.export.build import export_bundle

    with pytest.raises(FileNotFoundError, match="--catalog .*gone.csv: no such file"):
        export_bundle(checkpoint, tmp_path / "b", precisions=["fp16"], catalog=tmp_path / "gone.csv")
    moved = tmp_path / "ck"  # a checkpoint whose training catalog is no longer where it was
    shutil.copytree(checkpoint, moved)
    cfg = json.loads((moved / "config.json").read_text())
    cfg["training"]["catalog"] = str(tmp_path / "moved.csv")
    (moved / "config.json").write_text(json.dumps(cfg))
    r = export_bundle(moved, tmp_path / "b", precisions=["fp16"])
    assert r.variants == ["fp32"] and "no real catalog items" in r.refused["fp16"]


def test_unknown_precision_is_refused(checkpoint, tmp_path):
    from attrx.cli import main

    with pytest.raises(SystemExit, match="unknown precision fp8; use fp32, fp16, int8"):
        main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "b"), "--variants", "fp8"])


def test_v1_bundle_still_loads(bundle, tmp_path):
    """A bundle from before schema v2: no variants, no attention field; its model.onnx is fp32."""
    old = tmp_path / "v1"
    shutil.copytree(bundle, old)
    raw = json.loads((old / "manifest.json").read_text())
    raw["schema_version"] = 1
    for k in ("variants", "refused"):
        raw.pop(k)
    raw["model"].pop("attention")
    (old / "manifest.json").write_text(json.dumps(raw))
    b = load_bundle(old)
    assert list(b.manifest.variants) == ["fp32"] and b.manifest.model.attention == "unfused"
    assert b.manifest.variants["fp32"].parity == raw["parity"]
    raw["schema_version"] = 6
    (old / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="schema_version 6 is not supported by this attrx \\(supports 1, 2, 3, 4, 5\\)"):
        load_bundle(old)


def test_manifest_variant_errors_are_named(bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    raw = json.loads((b / "manifest.json").read_text())
    raw["variants"]["int8"] = {"file": "model.int8.onnx", "precision": "int8", "providers": ["cpu"]}
    (b / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="variant 'int8': its file model.int8.onnx is not listed under files"):
        load_bundle(b)
    raw["variants"]["int8"] = {"file": "model.onnx", "precision": "int8", "providers": ["tpu"]}
    (b / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="unknown providers \\['tpu'\\]"):
        load_bundle(b)


def test_served_variant_is_reported(variant_bundle, bundle):
    """`attrx serve` on a bundle with variants runs int8 on CPU by default, and says so."""
    import re
    import subprocess
    import sys

    import httpx
    from helpers import Server

    s = Server(variant_bundle.path, workers=1)
    try:
        model = httpx.get(s.url + "/v1/model", timeout=10).json()
        assert (model["precision"], model["variant"], model["variants"]) == ("int8", "int8", ["fp32", "fp16", "int8"])
        r = httpx.post(s.url + "/v1/extract", json={"title": "Roadster Men Blue Striped Tee"}, timeout=10)
        assert r.status_code == 200 and set(r.json()["predictions"]) == {"category", "colour", "pattern", "gender"}
        metrics = httpx.get(s.url + "/metrics", timeout=10).text
        sha = load_bundle(variant_bundle.path).manifest.files["model.int8.onnx"].sha256
        assert re.search(rf'^attrx_model_info{{backend="onnxruntime",.*precision="int8",provider="CPUExecutionProvider",sha256="{sha}"', metrics, re.M)
    finally:
        s.stop()
    # a precision the bundle lacks stops the start, naming what it has
    r = subprocess.run([sys.executable, "-m", "attrx", "serve", "--bundle", str(bundle), "--port", "0",
                        "--variant", "int8", "--workers", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "the bundle has no int8 variant; it has fp32" in r.stdout + r.stderr


def test_int8_is_calibrated_once_so_answers_do_not_depend_on_the_batch(checkpoint, tmp_path, monkeypatch):
    """Static int8 (the export's) gives a product the same answer alone and in a batch of 32; dynamic
    int8, one activation scale per batch, does not, and the gate's batch check refuses that."""
    from attrx.export import precision
    from attrx.export.build import eval_set, export_bundle
    from attrx.training.models.checkpoint import load_checkpoint

    monkeypatch.setitem(precision.GATES, "int8", {**precision.GATES["int8"], "min_agreement": 0.0,
                                                  "max_accuracy_drop": 1.0})  # this tiny model's accuracy aside
    result = export_bundle(checkpoint, tmp_path / "b", precisions=["int8"])
    assert result.variants == ["fp32", "int8"], result.refused
    rep = load_bundle(result.path).manifest.variants["int8"].parity
    assert rep["quantisation"] == "static" and "train split" in rep["calibration"]
    assert all(r["values_differ"] == 0 and r["max_batch_diff"] <= 1e-6 for r in rep["attributes"].values())

    ck = load_checkpoint(checkpoint)
    ev = eval_set(ck, None, "test")
    precision.to_int8(result.path / "model.onnx", tmp_path / "dynamic.onnx", [])  # no calibration: dynamic
    outputs = list(load_bundle(result.path).manifest.model.outputs)
    moved = precision.batch_independence(precision.session(tmp_path / "dynamic.onnx"), ev, outputs)
    assert max(r["max_batch_diff"] for r in moved.values()) > 1e-6
    reasons = precision.gate("int8", {a: {"agreement": 1.0, "accuracy_drop": 0.0, **r} for a, r in moved.items()})
    assert any("depend on the batch" in x for x in reasons)


def test_a_bundle_is_readable_by_other_users(bundle):
    """A bundle is written in a temporary folder (mkdtemp: mode 0700) and renamed into place; it must
    end with a plain folder's mode, or a server running as another user (the container's non-root
    `attrx`, a service account) cannot read the bundle it was given."""
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o777 & ~umask
    for f in bundle.iterdir():
        assert f.stat().st_mode & stat.S_IROTH or umask & 0o004, f


def test_edited_label_variants_need_a_recalibration_before_export(checkpoint, tmp_path):
    """label_variants.json travels into the bundle; edited after calibration, export refuses and says
    to run attrx eval (situations and thresholds follow the variants)."""
    import shutil

    from attrx.export.build import export_bundle

    ck = tmp_path / "ck"
    shutil.copytree(checkpoint, ck)
    calib = json.loads((ck / "calibration.json").read_text())
    calib["label_variants"] = {"colour": {"grey": ["gray"]}}
    (ck / "calibration.json").write_text(json.dumps(calib))
    (ck / "label_variants.json").write_text(json.dumps({"variants": {"colour": {"grey": ["gray", "charcoal"]}},
                                                        "proposed": {}}))
    with pytest.raises(ValueError, match="attrx eval --checkpoint"):
        export_bundle(ck, tmp_path / "b1", progress=False)
    (ck / "label_variants.json").write_text(json.dumps({"variants": {"colour": {"grey": ["gray"]}}, "proposed": {}}))
    out = export_bundle(ck, tmp_path / "b2", progress=False).path
    assert json.loads((out / "label_variants.json").read_text())["variants"] == calib["label_variants"]
    colour = next(a for a in json.loads((out / "manifest.json").read_text())["attributes"] if a["name"] == "colour")
    assert colour["label_variants"] == {"grey": ["gray"]}

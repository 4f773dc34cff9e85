"""The family contract, one suite run over every registered family (HF transformers' ModelTesterMixin
in spirit): a tiny random model of each, built through the factory, must give the output shapes, the
masks and the missing-modality behaviour every part of attrx relies on, load back from its checkpoint
config, and export to ONNX with parity. Golden outputs per family: tests/e2e/test_golden.py.

A toy fourth family, registered for one test, shows what adding a family takes: one module (its
config, its classifier, `create` and `from_checkpoint`) and one registry entry; training's factory,
checkpoints and export then take it with nothing else changed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from attrx.service.contract.preprocess import PreprocessConfig
from attrx.training.models import factory
from attrx.training.models.family import Family
from attrx.training.models.registry import FAMILIES
from attrx.training.params import TrainConfig

N_CLASSES = [3, 5]
SPECIAL = {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3}
VOCAB = 120
GOLDEN = Path(__file__).resolve().parent.parent / "e2e" / "golden.json"


def _model(name: str):
    torch.manual_seed(0)
    opts = TrainConfig(catalog="-", attributes=["a", "b"], out="-", family=name,
                       config=FAMILIES[name].default_config)
    model, pre = factory.create_model(opts, N_CLASSES, SPECIAL, VOCAB)
    return model.eval(), pre


def _inputs(pre: PreprocessConfig, seed: int = 0, n: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (n, pre.max_text_len), generator=g)
    ids[:, 0], ids[:, 6], ids[:, 7:] = SPECIAL["bos_token_id"], SPECIAL["eos_token_id"], 0
    return {"input_ids": ids, "attention_mask": (ids != 0).long(),
            "pixel_values": torch.randn(n, 3, pre.image_size, pre.image_size, generator=g),
            "text_present": torch.tensor([1.0, 0.0, 1.0, 1.0]), "image_present": torch.tensor([1.0, 1.0, 0.0, 1.0])}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_model(request):
    model, pre = _model(request.param)
    return request.param, model, pre


def test_the_default_config_is_the_familys_own(family_model):
    name, model, _ = family_model
    assert factory.load_config(FAMILIES[name].default_config).family == name == model.family
    assert isinstance(factory.load_config(FAMILIES[name].default_config), FAMILIES[name].config)


def test_one_output_per_task_with_its_shape(family_model):
    _, model, pre = family_model
    with torch.no_grad():
        outs = model(**_inputs(pre))
    assert [tuple(lg.shape) for lg, _ in outs] == [(4, n) for n in N_CLASSES]
    assert all(tuple(w.shape) == (4, 2) for _, w in outs)


def test_a_missing_modality_weighs_exactly_zero(family_model):
    _, model, pre = family_model
    with torch.no_grad():
        outs = model(**_inputs(pre))
    for _, w in outs:
        assert torch.equal(w[1], torch.tensor([0.0, 1.0])) and torch.equal(w[2], torch.tensor([1.0, 0.0]))
        torch.testing.assert_close(w.sum(1), torch.ones(4))


def test_an_absent_input_cannot_change_the_answer(family_model):
    _, model, pre = family_model
    x, y = _inputs(pre, 0), _inputs(pre, 1)
    with torch.no_grad():
        a = model(**x)[0][0]
        other_title = model(**{**x, "input_ids": y["input_ids"], "attention_mask": y["attention_mask"]})[0][0]
        other_image = model(**{**x, "pixel_values": y["pixel_values"]})[0][0]
    torch.testing.assert_close(a[1], other_title[1])  # item 1 has no title
    torch.testing.assert_close(a[2], other_image[2])  # item 2 has no image
    assert not torch.allclose(a[0], other_image[0])  # a present input does matter


def test_the_checkpoint_config_rebuilds_the_same_model(family_model, tmp_path):
    from attrx.service.contract.preprocess import load_tokenizer
    from attrx.training.data import tokenizer
    from attrx.training.models.checkpoint import TOKENIZER, load_checkpoint, save_checkpoint

    _, model, pre = family_model
    raw = tokenizer.train_wordpiece([f"red striped shirt {i}" for i in range(50)], VOCAB)
    tokenizer.save(raw, tmp_path / TOKENIZER)
    save_checkpoint(tmp_path / "ck", model, {"a": list("xyz"), "b": list("pqrst")}, pre, tmp_path / TOKENIZER, {})
    back = load_checkpoint(tmp_path / "ck").model.eval()
    x = _inputs(pre)
    with torch.no_grad():
        for (la, wa), (lb, wb) in zip(model(**x), back(**x), strict=True):
            torch.testing.assert_close(la, lb)
            torch.testing.assert_close(wa, wb)
    assert load_tokenizer(tmp_path / "ck" / TOKENIZER, pre.max_text_len) is not None


def test_the_onnx_export_matches_torch(family_model, tmp_path):
    from attrx.export.onnx_export import example_inputs, export_onnx
    from attrx.export.parity import check_parity

    _, model, pre = family_model
    outputs = export_onnx(model, ["a", "b"], tmp_path / "m.onnx", max_len=pre.max_text_len,
                          image_size=pre.image_size)
    feeds = {f"b{n}": example_inputs(model, n, pre.max_text_len, pre.image_size, seed=n) for n in (1, 5)}
    report = check_parity(model, tmp_path / "m.onnx", feeds, outputs, 1e-4)
    assert max(r["max_abs_diff"] for r in report.values()) <= 1e-4


def test_every_family_has_golden_outputs():
    assert set(FAMILIES) <= set(json.loads(GOLDEN.read_text()))


# -- a fourth family, as a contributor would add one ------------------------------------------------
class ToyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    family: str = "toy"
    width: int = 16
    vocab_size: int = 1000
    image_size: int = 32
    preprocess: dict = {}


class ToyClassifier(nn.Module):
    """Mean token embedding and mean pixel colour, mixed by a masked two-way softmax."""

    family = "toy"

    def __init__(self, cfg: ToyConfig, n_classes: list[int], pad_token_id: int = 0, bos_token_id: int = 2,
                 eos_token_id: int = 3):
        super().__init__()
        self.cfg, self.spec = cfg, {"pad_token_id": pad_token_id, "bos_token_id": bos_token_id,
                                    "eos_token_id": eos_token_id}
        self.embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pixels = nn.Linear(3, cfg.width)
        self.score = nn.Linear(cfg.width, 1)
        self.heads = nn.ModuleList(nn.Linear(cfg.width, n) for n in n_classes)

    @property
    def token_spec(self) -> dict:
        return {"vocab_size": self.cfg.vocab_size, **self.spec}

    def forward(self, input_ids, attention_mask, pixel_values, text_present, image_present):
        m = attention_mask.unsqueeze(-1).float()
        t = (self.embed(input_ids) * m).sum(1) / m.sum(1).clamp(min=1)
        v = self.pixels(pixel_values.mean(dim=(2, 3)))
        s = torch.cat([self.score(t), self.score(v)], 1)
        s = s.masked_fill(torch.stack([text_present, image_present], 1) == 0, float("-inf"))
        w = torch.softmax(s, 1)
        x = w[:, :1] * t.nan_to_num() + w[:, 1:] * v
        return [(head(x), w) for head in self.heads]


def _toy_create(opts, mcfg, n_classes, special, vocab):
    mcfg = mcfg.model_copy(update={"vocab_size": vocab})
    return ToyClassifier(mcfg, n_classes, **special), PreprocessConfig(image_size=mcfg.image_size)


def _toy_from_checkpoint(cfg, mcfg, n_classes):
    return ToyClassifier(mcfg, n_classes, **{k: v for k, v in cfg["token_spec"].items() if k != "vocab_size"})


def test_a_fourth_family_needs_one_module_and_one_registry_entry(monkeypatch, tmp_path):
    from attrx.export.onnx_export import example_inputs, export_onnx
    from attrx.export.parity import check_parity

    monkeypatch.setitem(FAMILIES, "toy", Family("toy", "Toy", ToyConfig, "toy-tiny", _toy_create,
                                                _toy_from_checkpoint))
    config = tmp_path / "toy-tiny.json"
    config.write_text(json.dumps({"family": "toy", "width": 8}))
    opts = TrainConfig(catalog="-", attributes=["a", "b"], out="-", family="toy", config=str(config))
    model, pre = factory.create_model(opts, N_CLASSES, SPECIAL, VOCAB)
    assert isinstance(model, ToyClassifier) and model.cfg.width == 8 and "toy" in factory.list_families()
    rebuilt, cfg = factory.model_from_checkpoint_config(
        {"attributes": {"a": list("xyz"), "b": list("pqrst")}, "model": model.cfg.model_dump(),
         "token_spec": model.token_spec})
    assert isinstance(rebuilt, ToyClassifier) and cfg == model.cfg
    outputs = export_onnx(model.eval(), ["a", "b"], tmp_path / "toy.onnx", max_len=pre.max_text_len,
                          image_size=pre.image_size, attention="unfused")
    feeds = {"b3": example_inputs(model, 3, pre.max_text_len, pre.image_size, seed=3)}
    report = check_parity(model, tmp_path / "toy.onnx", feeds, outputs, 1e-5)
    assert np.isfinite([r["max_abs_diff"] for r in report.values()]).all()
    with pytest.raises(ValueError, match="pre-training is for momo, simla; this is a toy config"):
        factory.create_pretrainer(model.cfg, pre.max_text_len, SPECIAL)

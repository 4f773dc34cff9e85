import pytest
import torch

from training.models.cma_clip import CMAClip, load_config

B, L, S = 4, 24, 64


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 300, (B, L), generator=g)
    ids[:, 0], ids[:, 9], ids[:, 10:] = 2, 3, 0
    return {"input_ids": ids, "attention_mask": (ids != 0).long(),
            "pixel_values": torch.randn(B, 3, S, S, generator=g),
            "text_present": torch.tensor([1.0, 0.0, 1.0, 1.0]), "image_present": torch.tensor([1.0, 1.0, 0.0, 1.0])}


def _model(**kw):
    torch.manual_seed(0)
    cfg = load_config("tiny").model_copy(update={"vocab_size": 300, **kw})
    return CMAClip(cfg, [3, 5]).eval()


@pytest.mark.parametrize("kw", [{}, {"use_mwa": False}, {"use_swa": False}])
def test_missing_modality_gets_exactly_zero_weight(kw):
    with torch.no_grad():
        outs = _model(**kw)(**_inputs())
    for logits, w in outs:
        assert logits.shape[0] == B and w.shape == (B, 2)
        assert torch.equal(w[1], torch.tensor([0.0, 1.0])) and torch.equal(w[2], torch.tensor([1.0, 0.0]))
        torch.testing.assert_close(w.sum(1), torch.ones(B))
        if kw.get("use_mwa") is False:
            assert torch.equal(w[[0, 3]], torch.full((2, 2), 0.5))
        else:
            assert not torch.equal(w[0], torch.tensor([0.5, 0.5]))


@pytest.mark.parametrize("kw", [{}, {"use_swa": False}])
def test_a_missing_modality_cannot_influence_the_prediction(kw):
    m = _model(**kw)
    x, y = _inputs(0), _inputs(1)
    with torch.no_grad():
        a, b = m(**x), m(**{**x, "input_ids": y["input_ids"], "pixel_values": y["pixel_values"]})
    # item 1 has no title, item 2 no image: changing the absent input changes nothing
    torch.testing.assert_close(a[0][0][1], m(**{**x, "input_ids": y["input_ids"]})[0][0][1])
    torch.testing.assert_close(a[0][0][2], m(**{**x, "pixel_values": y["pixel_values"]})[0][0][2])
    assert not torch.allclose(a[0][0][0], b[0][0][0])  # a present input does matter


def test_configs_load_and_unknown_config_is_named():
    assert load_config("base").fusion.num_layers == 12
    with pytest.raises(FileNotFoundError, match="built-in configs: base, tiny"):
        load_config("huge")

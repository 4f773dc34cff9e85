import pytest
import torch

from attrx.training.models.cma_clip import CMAClip
from attrx.training.models.factory import load_config

B, L, S = 4, 24, 64


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 300, (B, L), generator=g)
    ids[:, 0], ids[:, 9], ids[:, 10:] = 2, 3, 0
    return {"input_ids": ids, "attention_mask": (ids != 0).long(),
            "pixel_values": torch.randn(B, 3, S, S, generator=g),
            "text_present": torch.tensor([1.0, 0.0, 1.0, 1.0]), "image_present": torch.tensor([1.0, 1.0, 0.0, 1.0])}


def _model(family="cma-clip", **kw):
    torch.manual_seed(0)
    if family == "momo":
        from attrx.training.models.momo import MoMoClassifier

        return MoMoClassifier(load_config("momo-tiny").model_copy(update={"vocab_size": 300, **kw}), [3, 5]).eval()
    cfg = load_config("tiny").model_copy(update={"vocab_size": 300, **kw})
    return CMAClip(cfg, [3, 5]).eval()


FAMILY_VARIANTS = [("cma-clip", {}), ("cma-clip", {"use_mwa": False}), ("cma-clip", {"use_swa": False}),
                   ("momo", {}), ("momo", {"use_mwa": False})]


@pytest.mark.parametrize("family, kw", FAMILY_VARIANTS)
def test_missing_modality_gets_exactly_zero_weight(family, kw):
    with torch.no_grad():
        outs = _model(family, **kw)(**_inputs())
    for logits, w in outs:
        assert logits.shape[0] == B and w.shape == (B, 2)
        assert torch.equal(w[1], torch.tensor([0.0, 1.0])) and torch.equal(w[2], torch.tensor([1.0, 0.0]))
        torch.testing.assert_close(w.sum(1), torch.ones(B))
        if kw.get("use_mwa") is False:
            assert torch.equal(w[[0, 3]], torch.full((2, 2), 0.5))
        else:
            assert not torch.equal(w[0], torch.tensor([0.5, 0.5]))


@pytest.mark.parametrize("family, kw", [("cma-clip", {}), ("cma-clip", {"use_swa": False}), ("momo", {})])
def test_a_missing_modality_cannot_influence_the_prediction(family, kw):
    m = _model(family, **kw)
    x, y = _inputs(0), _inputs(1)
    with torch.no_grad():
        a, b = m(**x), m(**{**x, "input_ids": y["input_ids"], "pixel_values": y["pixel_values"]})
    # item 1 has no title, item 2 no image: changing the absent input changes nothing
    torch.testing.assert_close(a[0][0][1], m(**{**x, "input_ids": y["input_ids"]})[0][0][1])
    torch.testing.assert_close(a[0][0][2], m(**{**x, "pixel_values": y["pixel_values"]})[0][0][2])
    assert not torch.allclose(a[0][0][0], b[0][0][0])  # a present input does matter


def test_configs_load_and_unknown_config_is_named():
    assert load_config("base").fusion.num_layers == 12
    assert load_config("momo-tiny").family == "momo"
    assert load_config("simla-tiny").family == "simla"
    with pytest.raises(FileNotFoundError, match="built-in configs: base, cma-clip-b32, momo-base, momo-tiny, "
                                                "simla-effnet, simla-small, simla-tiny, small, small-effnet, tiny"):
        load_config("huge")


def _params(m) -> float:
    return sum(p.numel() for p in m.parameters()) / 1e6


def test_paper_sized_configs_build(capsys):
    """The papers' shapes build; their parameter counts are reported (MoMo-base is ~110M in its paper)."""
    from attrx.training.models.momo import MoMoClassifier

    momo = MoMoClassifier(load_config("momo-base"), [10])
    cfg = load_config("cma-clip-b32")
    cma = CMAClip(cfg.model_copy(update={"vocab_size": 49408}), [10])
    n_momo, n_cma = _params(momo), _params(cma)
    with capsys.disabled():
        print(f"\n[params] momo-base {n_momo:.1f}M (paper: ~110M); cma-clip-b32 {n_cma:.1f}M "
              f"(CLIP ViT-B/32 towers ~151M + 12x512 sequence-wise attention)")
    assert 100 < n_momo < 120
    assert 180 < n_cma < 200
    assert cma.vision.config.patch_size == 32 and len(cma.blocks) == 12 and cfg.fusion.width == 512

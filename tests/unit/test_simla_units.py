"""SIMLA's model on a tiny random instance: one parameter set for the text and the multimodal pass,
padding masked in cross-attention, missing modalities, the concept labels read from the attention."""

from __future__ import annotations

import math

import pytest
import torch

from attrx.training.models.factory import load_config
from attrx.training.models.layers import with_unimodal

SPEC = {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3}
B, L = 4, 24


@pytest.fixture(scope="module")
def model():
    from attrx.training.models.simla import SimlaClassifier

    torch.manual_seed(0)
    return SimlaClassifier(load_config("simla-tiny"), [5, 3], **SPEC).eval()


def _batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([6, 10, 4, 24])
    mask = (torch.arange(L)[None] < lengths[:, None]).long()
    ids = torch.where(mask.bool(), torch.randint(5, 1000, (B, L), generator=gen), torch.zeros(B, L, dtype=torch.long))
    ids[:, 0] = SPEC["bos_token_id"]
    ids[torch.arange(B), lengths - 1] = SPEC["eos_token_id"]
    px = torch.randn(B, 3, 64, 64, generator=gen)
    return ids, mask, px


def _modules_called(model, fn) -> set[int]:
    seen: set[int] = set()
    hooks = [m.register_forward_hook(lambda mod, *_: seen.add(id(mod))) for m in model.modules()]
    try:
        with torch.no_grad():
            fn()
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_text_and_multimodal_pass_share_one_parameter_set(model):
    ids, mask, px = _batch()
    enc, ones = model.text, torch.ones(B)
    keep = model.text_keep(mask, ones)
    v = model.image(px)
    vkeep = torch.ones(v.shape[:2], dtype=torch.bool)
    text_mods = _modules_called(model, lambda: enc(enc.embed(ids), keep))
    mm_mods = _modules_called(model, lambda: enc(enc.embed(ids), keep, v, vkeep, ones))
    for layer in enc.layers:
        # the self-attention and MLP modules the text pass runs are the very ones the multimodal
        # pass runs; the cross-attention runs in the multimodal pass only
        shared = {id(m) for m in layer.block.modules()} - {id(layer.block.drop)}
        assert shared <= text_mods and shared <= mm_mods
        assert id(layer.cross) in mm_mods and id(layer.cross) not in text_mods
    # and there is no second copy anywhere: one block's parameters per layer in the whole model
    block_params = sum(1 for n, _ in model.named_parameters() if ".block." in n)
    assert block_params == len(enc.layers) * len(list(enc.layers[0].block.parameters()))
    # a gradient through either pass lands on the same tensors
    model.zero_grad()
    enc(enc.embed(ids), keep)[:, 0].pow(2).sum().backward()  # squared: a plain sum of a LayerNorm output has no gradient
    g_text = enc.layers[0].block.qkv.weight.grad.clone()
    model.zero_grad()
    enc(enc.embed(ids), keep, v.detach(), vkeep, ones)[:, 0].pow(2).sum().backward()
    assert g_text.abs().sum() > 0 and enc.layers[0].block.qkv.weight.grad.abs().sum() > 0
    assert not torch.equal(g_text, enc.layers[0].block.qkv.weight.grad)  # the image changed what it computed
    model.zero_grad()


def test_cross_attention_masks_the_titles_padding(model):
    """Image patches as queries read the title (cross-modality reconstruction): whatever sits in
    the title's padded places changes nothing; nor do the padded token ids in the multimodal pass."""
    ids, mask, px = _batch()
    enc, ones = model.text, torch.ones(B)
    keep = model.text_keep(mask, ones)
    with torch.no_grad():
        patches = model.image(px)[:, 1:]
        t = enc(enc.embed(ids), keep)
        noisy = torch.where(keep[..., None], t, torch.randn_like(t) * 100)
        q_keep = torch.ones(patches.shape[:2], dtype=torch.bool)
        a = enc(patches, q_keep, t, keep, ones)
        b = enc(patches, q_keep, noisy, keep, ones)
        torch.testing.assert_close(a, b)
        other_ids = torch.where(mask.bool(), ids, torch.randint(5, 1000, ids.shape))
        fa = model(ids, mask, px, ones, ones)
        fb = model(other_ids, mask, px, ones, ones)
    for (la, wa), (lb, wb) in zip(fa, fb, strict=True):
        torch.testing.assert_close(la, lb)
        torch.testing.assert_close(wa, wb)


def test_missing_modalities_degrade_exactly(model):
    ids, mask, px = _batch()
    tp = torch.tensor([1.0, 1.0, 0.0, 1.0])
    ip = torch.tensor([1.0, 0.0, 1.0, 1.0])
    with torch.no_grad():
        t, m, _, _, _ = model.passes(ids, mask, px, tp, ip)
        outs = model(ids, mask, px, tp, ip)
        # no image: the multimodal pass is exactly the text pass
        assert torch.equal(m[1], t[1]) and not torch.equal(m[0], t[0])
        for logits, w in outs:
            assert torch.isfinite(logits).all()
            assert w[1].tolist() == [1.0, 0.0] and w[2].tolist() == [0.0, 1.0]
            assert 0 < w[0, 0] < 1
        # the title-only and image-only predictions (one pass) are what passes that see only the
        # title, or only the image, give (the title-only one where there is a title)
        _, text, image = with_unimodal(model, ids, mask, px, tp, ip)
        one, zero, has_title = torch.ones(B), torch.zeros(B), tp > 0
        for j, (lg, _) in enumerate(model(ids, mask, px, one, zero)):
            torch.testing.assert_close(text[j][has_title], lg[has_title])
        for j, (lg, _) in enumerate(model(ids, mask, px, zero, one)):
            torch.testing.assert_close(image[j], lg)


def test_cls_attention_is_the_layers_own_attention_row(model):
    """cls_attention reads row 0 of the same softmax(QK^T/sqrt(d)) the last layer applies to V."""
    from attrx.training.models.layers import split_heads
    from attrx.training.models.simla import cls_attention

    ids, mask, px = _batch()
    block = model.text.layers[-1].block
    keep = model.text_keep(mask, torch.ones(B))
    x = model.text.embed(ids)
    with torch.no_grad():
        row0 = cls_attention(block, x, keep)
        q, k, v = split_heads(block.qkv(block.ln1(x)), block.heads)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
        att = scores.softmax(-1)
        torch.testing.assert_close(row0, att[:, :, 0].mean(1))
        ref = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=torch.where(keep, 0.0, float("-inf"))[:, None, None, :])
        torch.testing.assert_close(att @ v, ref, atol=1e-5, rtol=1e-5)
    assert torch.allclose(row0.sum(1), torch.ones(B)) and (row0[~keep] == 0).all()


def test_concept_labels_are_the_top_attended_words():
    from attrx.training.models.simla import concept_labels

    spec = {**SPEC, "vocab_size": 50}
    ids = torch.tensor([[2, 10, 11, 12, 13, 14, 3, 0], [2, 20, 21, 3, 0, 0, 0, 0]])
    keep = ids != 0
    keep[:, 0] = True
    # [CLS] and [SEP] get the most attention: they are never labels; padding neither
    row0 = torch.tensor([[0.30, 0.05, 0.20, 0.10, 0.15, 0.02, 0.18, 0.0],
                         [0.50, 0.10, 0.15, 0.25, 0.0, 0.0, 0.0, 0.0]])
    labels = concept_labels(ids, keep, row0, 4, spec)
    assert labels[0].nonzero().flatten().tolist() == [10, 11, 12, 13]  # 14 is the least attended word
    assert labels[1].nonzero().flatten().tolist() == [20, 21]  # fewer words than k: all of them
    assert labels.sum().item() == 6

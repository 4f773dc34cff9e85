"""MoMo pre-training stages and the variant flags, on the real demo catalog."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from attrx.cli import main
from attrx.service.contract.bundle import load_bundle
from attrx.training.models.factory import load_config
from attrx.training.models.momo import IMAGE
from attrx.training.models.momo_pretrain import MoMoPretrainer
from attrx.training.pretrain import cmga_step


@pytest.fixture(scope="session")
def pretrained(demo_catalog, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "momo"
    main(["pretrain", str(demo_catalog), "--out", str(out), "--stage1-steps", "40",
          "--stage2-steps", "40", "--stage3-steps", "40", "--batch-size", "16", "--quiet", "--threads", "2"])
    return out


def test_every_stage_logs_finite_losses_that_fall(pretrained):
    log = [json.loads(x) for x in (pretrained / "pretrain_log.jsonl").read_text().splitlines()]
    expected = {1: {"mim"}, 2: {"mim", "mlm"}, 3: {"mlm", "cmm", "itc", "itm"}}
    for stage, names in expected.items():
        rows = [r for r in log if r["stage"] == stage]
        assert len(rows) == 40 and set(rows[0]) - {"stage", "step"} == names
        for name in names:
            v = np.array([r[name] for r in rows])
            assert np.isfinite(v).all(), (stage, name)
            if name in ("mim", "mlm", "cmm"):  # reconstruction losses fall within a few dozen steps
                assert v[-8:].mean() < v[:8].mean(), (stage, name, v[:8].mean(), v[-8:].mean())
        total = np.array([sum(r[n] for n in names) for r in rows])
        assert total[-8:].mean() < total[:8].mean()
    assert (pretrained / "pretrain_losses.png").read_bytes()[:4] == b"\x89PNG"
    cfg = json.loads((pretrained / "config.json").read_text())
    assert cfg["kind"] == "pretrained-encoder" and cfg["family"] == "momo"
    assert all(k.startswith("encoder.") for k in load_file(str(pretrained / "model.safetensors")))  # decoders dropped


def _pretrainer(**kw) -> MoMoPretrainer:
    torch.manual_seed(0)
    cfg = load_config("momo-tiny").model_copy(update={"vocab_size": 100, **kw})
    m = MoMoPretrainer(cfg, 24, {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3})
    m.cfg_mim, m.cfg_mlm, m.cfg_cmm = 0.75, 0.15, 0.75
    return m


def _batch(b=6):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (b, 24), generator=g)
    ids[:, 0], ids[:, 12], ids[:, 13:] = 2, 3, 0
    return ids, (ids != 0).long(), torch.randn(b, 3, 64, 64, generator=g)


def test_cross_modality_gradient_accumulation_takes_one_step_with_both_gradients():
    m = _pretrainer().eval()  # no dropout: the same batch gives the same gradient twice
    ids, mask, px = _batch()
    w = m.encoder.blocks[0].qkv.weight

    def grads_of(fn, seed):
        m.zero_grad(set_to_none=True)
        fn(torch.Generator().manual_seed(seed)).backward()
        return w.grad.clone()

    def img_loss(g):
        return m.mim_loss(px, m.s2_img, g)

    def txt_loss(g):
        return m.mlm_loss(ids, mask, m.s2_txt, g)

    g_img, g_txt = grads_of(img_loss, 5), grads_of(txt_loss, 6)
    assert g_img.abs().sum() > 0 and g_txt.abs().sum() > 0
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    seen = []
    orig_step = opt.step

    def counting_step(*a, **k):
        seen.append(w.grad.clone())
        return orig_step(*a, **k)

    opt.step = counting_step
    cmga_step(opt, [lambda: img_loss(torch.Generator().manual_seed(5)),
                    lambda: txt_loss(torch.Generator().manual_seed(6))])
    assert len(seen) == 1  # one optimizer step per iteration...
    torch.testing.assert_close(seen[0], g_img + g_txt)  # ...carrying both modalities' gradients
    assert m.encoder.patch_embed.weight.grad.abs().sum() > 0 and m.encoder.tok_embed.weight.grad.abs().sum() > 0


def test_the_encoder_receives_only_visible_tokens():
    m = _pretrainer()
    ids, mask, px = _batch()
    seen = []
    m.encoder.register_forward_pre_hook(lambda mod, args: seen.append((args[0].shape[1], args[1].sum(1), args[2])))
    m.mim_loss(px, m.s1_img, torch.Generator().manual_seed(0))
    n_patches = m.encoder.n_patches
    length, visible, modality = seen[-1]
    assert length == round(n_patches * 0.25) and (visible == length).all() and (modality == IMAGE).all()
    m.mlm_loss(ids, mask, m.s2_txt, torch.Generator().manual_seed(0))
    length, visible, _ = seen[-1]
    assert length < 13 and (visible < 13).all()  # 13 real tokens per title, some masked away
    m.cmm_loss(ids, mask, px, torch.Generator().manual_seed(0))
    length, visible, _ = seen[-1]
    assert length < 13 + n_patches and visible.max() == length


def test_fine_tuning_starts_from_the_pretrained_encoder(pretrained, demo_catalog, tmp_path):
    from attrx.training.models.checkpoint import load_checkpoint

    ck = tmp_path / "ck"
    main(["train", "--family", "momo", "--init-from", str(pretrained), str(demo_catalog),
          "--attributes", "colour,pattern", "--out", str(ck), "--warmup-epochs", "1", "--e2e-epochs", "0",
          "--tune-epochs", "0", "--quiet", "--threads", "2", "--val-frac", "0.2", "--test-frac", "0.2"])
    enc = load_file(str(pretrained / "model.safetensors"))
    model = load_checkpoint(ck).model
    # warm-up freezes the encoder: its weights are exactly the pre-trained ones
    torch.testing.assert_close(model.encoder.tok_embed.weight, enc["encoder.tok_embed.weight"])
    torch.testing.assert_close(model.encoder.blocks[1].qkv.weight, enc["encoder.blocks.1.qkv.weight"])
    assert (ck / "tokenizer.json").read_bytes() == (pretrained / "tokenizer.json").read_bytes()


VARIANTS = [
    (["--fusion", "tirg"], "cma-clip"),
    (["--lock-image"], "cma-clip"),
    (["--family", "momo", "--fusion", "tirg"], "momo"),
    (["--family", "momo", "--lock-image"], "momo"),
    (["--family", "momo", "--modality-specific-layernorm"], "momo"),
]


@pytest.mark.parametrize("flags, family", VARIANTS, ids=[" ".join(f) for f, _ in VARIANTS])
def test_variant_flags_train_and_export(flags, family, demo_catalog, tmp_path):
    from attrx.training.models.checkpoint import load_checkpoint

    ck, out = tmp_path / "ck", tmp_path / "bundle"
    main(["train", *flags, str(demo_catalog), "--attributes", "colour,gender", "--out", str(ck),
          "--warmup-epochs", "1", "--e2e-epochs", "1", "--tune-epochs", "0", "--quiet", "--threads", "2",
          "--val-frac", "0.2", "--test-frac", "0.2"])
    main(["eval", "--checkpoint", str(ck), str(demo_catalog), "--quiet", "--min-positives", "1"])
    main(["export", "--checkpoint", str(ck), "--out", str(out)])
    b = load_bundle(out)
    assert b.manifest.model.family == family and b.manifest.parity["max_abs_diff"] <= 1e-4
    model = load_checkpoint(ck).model
    cfg = b.manifest.model.config
    if "--fusion" in flags:
        assert cfg["head_fusion"] == "tirg" and type(model.heads[0]).__name__ == "TirgHead"
    if "--modality-specific-layernorm" in flags:
        assert cfg["modality_specific_layernorm"] and hasattr(model.encoder.blocks[0], "ln1_img")
    if "--lock-image" in flags:
        # e2e ran, yet the image tower is exactly as initialised: compare with a fresh model of the same seed
        torch.manual_seed(0)
        from attrx.training.models.factory import create_model
        from attrx.training.params import TrainConfig

        tc = TrainConfig(catalog="x", attributes=["colour", "gender"], out="x", family=family,
                         config="momo-tiny" if family == "momo" else "tiny")
        special = json.loads((ck / "config.json").read_text()).get("token_spec") or {}
        fresh, _ = create_model(tc, [len(c) for c in json.loads((ck / "config.json").read_text())["attributes"].values()],
                               {k: v for k, v in special.items() if k != "vocab_size"} or
                               {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3},
                               model.token_spec["vocab_size"])
        for p_new, p_init in zip(model.image_tower_parameters(), fresh.image_tower_parameters(), strict=True):
            torch.testing.assert_close(p_new, p_init)

"""Training for silent titles: label-word removal, unimodal auxiliary heads, the CNN image stem,
colour-preserving augmentation, best-across-stages training and the thresholds it calibrates."""


import numpy as np
import pytest
import torch

from attrx.service.contract.preprocess import load_tokenizer
from attrx.service.contract.situations import label_pattern, names_label, strip_pattern
from attrx.training.data.augment import TitleSilencer, augment_images
from attrx.training.models.cma_clip import CMAClip
from attrx.training.models.factory import load_config


def test_label_words_match_whole_words_longest_first_for_any_attribute():
    pat = label_pattern(["Blue", "Navy Blue", "Casual Shoes", "Men"])
    assert strip_pattern("Roadster MEN navy blue Casual shoes", pat) == "Roadster"
    assert strip_pattern("Menswear Bluestone", pat) == "Menswear Bluestone"  # never part of a word
    assert strip_pattern("Navy Blue", pat) is None
    assert names_label("A navy blue shirt", "Navy Blue") and not names_label("Bluebird", "Blue")


def _batch(tok, titles):
    from attrx.service.contract.preprocess import encode_titles

    ids, mask = encode_titles(tok, titles)
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
            "text_present": torch.tensor([1.0 if t else 0.0 for t in titles])}


def test_silencer_retokenises_only_the_titles_it_changes(checkpoint):
    tok = load_tokenizer(checkpoint / "tokenizer.json", 24)
    titles = ["Velora Women Red Striped Dress", "Velora Men Shirt", "red", None]
    batch = _batch(tok, titles)
    before = {k: v.clone() for k, v in batch.items()}
    s = TitleSilencer({"colour": ["red", "blue"], "pattern": ["striped"]}, p=1.0, tokenizer=tok)
    assert s(titles, batch) == 2  # "Velora Men Shirt" names nothing; None has no title
    expected = _batch(tok, ["Velora Women Dress", "Velora Men Shirt", None, None])
    assert torch.equal(batch["input_ids"][0], expected["input_ids"][0])
    assert torch.equal(batch["input_ids"][1], before["input_ids"][1])
    assert batch["text_present"].tolist() == [1.0, 1.0, 0.0, 0.0]  # a title of label words only is no title
    none = TitleSilencer({"colour": ["red"]}, p=0.0, tokenizer=tok)
    batch2 = _batch(tok, titles)
    assert none(titles, batch2) == 0 and torch.equal(batch2["input_ids"], before["input_ids"])


def test_silencer_probability_is_per_item_and_attribute(checkpoint):
    tok = load_tokenizer(checkpoint / "tokenizer.json", 24)
    titles = ["Velora Women Red Striped Dress"] * 2000
    s = TitleSilencer({"colour": ["red"], "pattern": ["striped"]}, p=0.3, tokenizer=tok, seed=1)
    batch = _batch(tok, titles)
    s(titles, batch)
    red, striped = tok.token_to_id("red"), tok.token_to_id("striped")
    has_red = (batch["input_ids"] == red).any(1).float().mean().item()
    has_striped = (batch["input_ids"] == striped).any(1).float().mean().item()
    assert 0.65 < has_red < 0.75 and 0.65 < has_striped < 0.75


def test_image_augmentation_moves_pixels_but_never_changes_colours():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(6, 3, 32, 32)
    x[:, 0], x[:, 1], x[:, 2] = 0.7, -0.3, 0.1  # one flat colour per channel
    x[:, :, 8:24, 12:20] = torch.tensor([-1.0, 0.5, 0.9])[:, None, None]
    present = torch.tensor([1.0, 1, 1, 1, 1, 0])
    y = augment_images(x, present, g)
    assert not torch.equal(y[:5], x[:5]) and torch.equal(y[5], x[5])  # absent images untouched
    lo, hi = x.amin(dim=(0, 2, 3)), x.amax(dim=(0, 2, 3))
    assert (y.amin(dim=(0, 2, 3)) >= lo - 1e-6).all() and (y.amax(dim=(0, 2, 3)) <= hi + 1e-6).all()
    # every output pixel mixes only the two colours of the input (no hue or brightness jitter)
    a, b = x[0, :, 0, 0], x[0, :, 10, 15]
    t = (y[:5] - a[None, :, None, None]) / (b - a)[None, :, None, None]
    assert torch.allclose(t[:, 0], t[:, 1], atol=1e-4) and torch.allclose(t[:, 0], t[:, 2], atol=1e-4)


def test_no_weight_decay_on_norms_biases_embeddings_and_modality_vectors():
    from attrx.training.optim import param_groups

    m = CMAClip(load_config("tiny").model_copy(update={"vocab_size": 300}), [3])
    decay, plain = param_groups(m, list(m.parameters()), 0.1)
    names = {id(p): n for n, p in m.named_parameters()}
    plain_names = {names[id(p)] for p in plain["params"]}
    assert "heads.0.w" in plain_names and "type_emb" in plain_names and "ln.weight" in plain_names
    assert any("bias" in n for n in plain_names) and not any("bias" in names[id(p)] for p in decay["params"])
    assert decay["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert "text.text_model.embeddings.position_embedding.weight" in plain_names or any(
        "position_embedding" in n for n in plain_names)
    # MoMo's shared encoder (attrx pretrain uses the same rule): positions and [CLS] are not decayed
    from attrx.training.models.momo import SharedEncoder

    enc = SharedEncoder(load_config("momo-tiny"), 24)
    decay, plain = param_groups(enc, list(enc.parameters()), 0.1)
    names = {id(p): n for n, p in enc.named_parameters()}
    assert {"txt_pos", "img_pos", "cls", "type_emb"} <= {names[id(p)] for p in plain["params"]}
    assert all(names[id(p)].endswith("weight") for p in decay["params"])


def test_min_support_and_clopper_pearson_guard_thresholds():
    from attrx.training.evaluation.metrics import calibrate, precision_lower_bound

    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 4, n)
    y[:3] = 3  # class 3: only a handful...
    y[3:] = np.where(y[3:] == 3, 0, y[3:])
    probs = np.full((n, 4), 0.1)
    probs[np.arange(n), y] = 0.7
    assert calibrate(probs, y, [0.9], min_support=0)["0.90"][3] is not None
    assert calibrate(probs, y, [0.9], min_support=10)["0.90"][3] is None  # ...gets no threshold
    # 3 of 3 correct is precision 1.0 but its 75% lower bound is about 0.63
    assert precision_lower_bound(np.array([3]), np.array([3]), 0.75)[0] == pytest.approx(0.25 ** (1 / 3), abs=1e-6)
    assert calibrate(probs, y, [0.9], min_support=0, confidence=0.75)["0.90"][3] is None


def test_accepted_precision_counts_what_the_thresholds_let_through():
    from attrx.training.evaluation.metrics import accepted_precision

    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    y = np.array([0, 1, 0, 1, 0])
    r = accepted_precision(probs, y, [0.75, None], ["a", "b"])
    assert r["accepted"] == 2 and r["precision"] == 0.5 and r["coverage"] == 0.4
    assert r["per_class"] == {"a": {"accepted": 2, "precision": 0.5}}


def test_titles_are_silenced_in_the_loader_workers_the_same_at_any_worker_count(checkpoint, demo_catalog):
    """Silencing moved off the training loop into the DataLoader's worker processes: each batch draws
    from its own generator (epoch, batch number), so 0, 1 or 2 workers give the same batches, and
    another epoch gives other ones."""
    from attrx.service.catalog.reader import read_catalog
    from attrx.training.data.encode import encode_catalog
    from attrx.training.data.loader import batches
    from attrx.training.models.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint)
    data, _ = encode_catalog(read_catalog(demo_catalog, tuple(ck.classes)), ck.tokenizer, ck.preprocess, ck.classes,
                             progress=False)
    words = {"colour": ck.classes["colour"], "pattern": ck.classes["pattern"]}
    order = np.random.default_rng(0).permutation(len(data))[:96]

    def ids(workers: int, epoch: int = 2) -> torch.Tensor:
        s = TitleSilencer(words, p=0.5, tokenizer=ck.tokenizer, seed=3)
        return torch.cat([b["input_ids"] for _, b, _ in batches(data, order, 16, workers=workers, silencer=s,
                                                                   epoch=epoch)])

    plain = torch.cat([b["input_ids"] for _, b, _ in batches(data, order, 16)])
    one = ids(0)
    assert not torch.equal(one, plain)  # it silenced something
    assert torch.equal(one, ids(1)) and torch.equal(one, ids(2))
    assert not torch.equal(one, ids(0, epoch=3))


def test_augmentation_and_dropout_draw_on_the_batch_device_reproducibly():
    """The device-side generator: the same seed gives the same draws; on the CPU (the device here)
    the draws are the ones the loop made before it moved to the device."""
    from attrx.training.loop import _modality_dropout

    def run(seed: int):
        g = torch.Generator(device="cpu").manual_seed(seed)
        batch = {"text_present": torch.ones(64), "image_present": torch.ones(64)}
        _modality_dropout(batch, 0.5, g)
        return batch["text_present"], augment_images(torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(1)),
                                                     batch["image_present"], g)

    (t1, x1), (t2, x2) = run(5), run(5)
    assert torch.equal(t1, t2) and torch.equal(x1, x2)
    g = torch.Generator().manual_seed(5)  # the draws of the former CPU-only code, in its order
    drop = (torch.rand(64, generator=g) < 0.5)
    hide_text = drop & (torch.rand(64, generator=g) < 0.5)
    assert torch.equal(t1 == 0, hide_text)

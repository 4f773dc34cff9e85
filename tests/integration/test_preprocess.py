import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from attrx.service.contract.preprocess import (
    ImageError,
    PreprocessConfig,
    build_inputs,
    image_to_array,
    load_image_array,
    load_tokenizer,
    open_image,
)

CFG = PreprocessConfig(image_size=32, max_text_len=12)


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (no pixel data needed to read the size)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_solid_colour_is_normalised_with_recorded_mean_std():
    arr = load_image_array(_bytes(Image.new("RGB", (50, 40), (255, 0, 128)), "PNG"), CFG)
    assert arr.shape == (3, 32, 32) and arr.dtype == np.float32
    expected = (np.array([255, 0, 128]) / 255.0 - np.array(CFG.image_mean)) / np.array(CFG.image_std)
    np.testing.assert_allclose(arr.mean(axis=(1, 2)), expected, rtol=1e-5)


def test_grayscale_and_alpha_become_rgb():
    gray = open_image(_bytes(Image.new("L", (20, 20), 100), "JPEG"), CFG)
    assert gray.mode == "RGB"
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))  # fully transparent -> white background
    img = open_image(_bytes(rgba, "PNG"), CFG)
    assert img.mode == "RGB" and img.getpixel((5, 5)) == (255, 255, 255)


def test_resize_shorter_side_then_centre_crop():
    img = Image.new("RGB", (96, 48), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 24, 48))  # left quarter white: cropped away
    arr = image_to_array(img, CFG)
    white = (1.0 - np.array(CFG.image_mean)) / np.array(CFG.image_std)
    assert not np.isclose(arr[0], white[0], atol=0.1).any()


def test_pad_fit_keeps_the_whole_image_centred_on_white():
    """fit "pad": the longer side to S, the rest white, nothing cropped (a bundle field: absent in
    older bundles, which read as "crop")."""
    img = Image.new("RGB", (32, 64), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 32, 4))  # a red band at the top: kept, unlike a centre crop
    cfg = PreprocessConfig(image_size=32, max_text_len=12, fit="pad")
    arr = image_to_array(img, cfg)
    white = (1.0 - np.array(cfg.image_mean)) / np.array(cfg.image_std)
    assert arr.shape == (3, 32, 32)
    np.testing.assert_allclose(arr[:, :, :8], np.broadcast_to(white[:, None, None], (3, 32, 8)), rtol=1e-5)
    red = (np.array([1.0, 0, 0]) - np.array(cfg.image_mean)) / np.array(cfg.image_std)
    np.testing.assert_allclose(arr[:, 0, 16], red, rtol=1e-5)  # the top row of the product
    assert not np.allclose(image_to_array(img, CFG)[:, 0, 16], red)  # cropped away under "crop"
    assert PreprocessConfig.model_validate({"image_size": 32}).fit == "crop"


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (60, 30), (200, 10, 10))
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    assert open_image(_bytes(img, "JPEG", exif=exif), CFG).size == (30, 60)


def test_large_jpeg_uses_draft_mode():
    big = Image.new("RGB", (2400, 1600), (10, 200, 30))
    img = open_image(_bytes(big, "JPEG", quality=80), CFG)
    assert img.size[0] < 2400 / 4 and min(img.size) >= CFG.image_size


def test_declared_size_over_limit_is_refused_before_decoding():
    with pytest.raises(ImageError) as e:
        open_image(_png_header_only(8_000, 6_000), CFG)  # 48 Mpx, over the 16.8 Mpx default
    assert e.value.reason == "too_large" and "8000x6000" in str(e.value) and "16,800,000" in str(e.value)
    with pytest.raises(ImageError) as e:
        open_image(_png_header_only(100_000, 100_000), CFG)  # Pillow's own guard trips first
    assert e.value.reason == "too_large"
    small = CFG.model_copy(update={"max_image_pixels": 1000})
    with pytest.raises(ImageError, match="over the limit of 1,000"):
        open_image(_bytes(Image.new("RGB", (40, 40)), "PNG"), small)


@pytest.mark.parametrize("data", [b"not an image at all", b"", _bytes(Image.new("RGB", (64, 64)), "JPEG")[:200]])
def test_undecodable_images_raise_bad_image(data):
    with pytest.raises(ImageError) as e:
        open_image(data, CFG)
    assert e.value.reason == "bad_image"


def test_missing_file_is_bad_image(tmp_path):
    with pytest.raises(ImageError, match="cannot be read"):
        open_image(tmp_path / "nope.jpg", CFG)


def test_tokenizer_pads_truncates_and_marks_presence(tmp_path):
    from attrx.training.data import tokenizer

    tok = tokenizer.train_wordpiece(["Roadster Men Blue Striped T-Shirt", "Velora Women Dress"] * 20, vocab_size=200)
    tokenizer.save(tok, tmp_path / "tok.json")
    tok = load_tokenizer(tmp_path / "tok.json", CFG.max_text_len)
    long = " ".join(["shirt"] * 100)
    img = load_image_array(_bytes(Image.new("RGB", (40, 40)), "PNG"), CFG)
    x = build_inputs(tok, ["Blue Dress", None, long], [None, img, img], CFG)
    assert x["input_ids"].shape == (3, CFG.max_text_len) and x["input_ids"].dtype == np.int64
    assert x["attention_mask"][2].sum() == CFG.max_text_len  # truncated, not overflowing
    assert x["input_ids"][2, CFG.max_text_len - 1] == tok.token_to_id("[SEP]")  # EOS kept
    assert x["text_present"].tolist() == [1, 0, 1] and x["image_present"].tolist() == [0, 1, 1]
    assert not x["pixel_values"][0].any()
    with pytest.raises(ValueError, match="neither a title nor an image"):
        build_inputs(tok, ["  "], [None], CFG)


def test_training_arrays_equal_service_arrays(checkpoint, demo_catalog):
    """The contract: what training feeds the model is exactly what the service computes."""
    from attrx.service.catalog.reader import read_catalog
    from attrx.training.data.encode import encode_catalog
    from attrx.training.models.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint)
    cat = read_catalog(demo_catalog, ck.attributes)
    cat.products = cat.products[:40]
    data, errors = encode_catalog(cat, ck.tokenizer, ck.preprocess, ck.classes, progress=False)
    assert not errors
    # the service path: a title string and the raw uploaded bytes
    tok = load_tokenizer(checkpoint / "tokenizer.json", ck.preprocess.max_text_len)
    imgs = [load_image_array(p.image.read_bytes(), ck.preprocess) if p.image else None for p in data.products]
    served = build_inputs(tok, [p.title for p in data.products], imgs, ck.preprocess)
    assert served.keys() == data.arrays.keys()
    for k in served:
        assert served[k].dtype == data.arrays[k].dtype
        np.testing.assert_array_equal(served[k], data.arrays[k], err_msg=k)
    # and the disk store that `attrx train` reads batches from holds the same arrays
    import tempfile
    from pathlib import Path

    from attrx.training.data.encode import encode_catalog_on_disk

    with tempfile.TemporaryDirectory() as tmp:
        disk, errors, warm = encode_catalog_on_disk(cat, ck.tokenizer, ck.preprocess, ck.classes, progress=False,
                                                    catalog_file=demo_catalog, scratch=Path(tmp), workers=1)
        assert not errors and not warm and [p.id for p in disk.products] == [p.id for p in data.products]
        idx = np.array([3, 0, 17, 39])
        for k, v in disk.take(idx).items():
            np.testing.assert_array_equal(v, served[k][idx], err_msg=k)
        np.testing.assert_array_equal(disk.labels, data.labels)

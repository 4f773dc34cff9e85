"""The one preprocessing contract: title + image -> model input arrays.

Training builds every tensor through these functions and the service calls the same ones, so
what is trained is what is served. numpy, Pillow and `tokenizers` only; no torch.

Model inputs (all numpy, batch first):
  input_ids       int64   [B, L]   token ids, padded/truncated to `max_text_len`
  attention_mask  int64   [B, L]   1 for real tokens
  pixel_values    float32 [B, 3, S, S]  RGB, resized (shorter side), centre-cropped, normalised
  text_present    float32 [B]      1 when the product has a title
  image_present   float32 [B]      1 when the product has an image
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Tokenizer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

INPUT_NAMES = ("input_ids", "attention_mask", "pixel_values", "text_present", "image_present")


class PreprocessConfig(BaseModel):
    """Recorded in every checkpoint and bundle."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image_size: int = Field(64, ge=8, le=1024)
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    max_text_len: int = Field(32, ge=4, le=512)
    resample: str = Field("bicubic", pattern="^(bicubic|bilinear|lanczos)$")
    # "crop": shorter side to image_size, centre crop (CLIP's); "pad": longer side to image_size,
    # centred on white (the whole product kept: what the pretrained CNN towers were probed with).
    # Absent in bundles written before it existed, which cropped
    fit: str = Field("crop", pattern="^(crop|pad)$")
    max_image_pixels: int = Field(16_800_000, ge=1, description="images declaring more pixels are refused")
    max_image_aspect: float = Field(20.0, ge=1.0, description="images whose longer side is more than this many "
                                                              "times the shorter are refused")


class ImageError(ValueError):
    """An image that cannot be used. `reason` is a short machine-readable code."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# an image as a product carries it: its bytes, or a path to its file
ImageSource = bytes | str | os.PathLike

# the formats decoded by default (Pillow's names): what catalogs carry. Every other decoder Pillow
# has (TIFF, PSD, ICO, EPS, ...) is code an untrusted image could reach for no catalog's benefit
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
}


def open_image(source: ImageSource, cfg: PreprocessConfig, formats: tuple[str, ...] = IMAGE_FORMATS) -> Image.Image:
    """Decode an image (bytes or a path) into an RGB Pillow image.

    Only `formats` are identified at all (others: ImageError 'unsupported_image'). The declared size
    and aspect ratio are checked before any pixel is decoded (decompression and aspect-ratio bombs:
    the resize below costs at most `max_image_aspect` times the model's image area), and large JPEGs
    are decoded at a reduced scale with Pillow's draft mode (PNG, WebP and GIF offer none in Pillow:
    the pixel limit bounds them; docs/security.md gives the memory each costs at the limit).
    """
    what = "image" if isinstance(source, bytes) else f"image {os.fspath(source)!r}"
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    except OSError as e:
        raise ImageError("bad_image", f"{what}: cannot be read ({e.strerror or e})") from e
    with fp:
        try:
            img: Image.Image = Image.open(fp, formats=formats)
        except Image.DecompressionBombError as e:  # Pillow's own guard, past twice its limit
            raise ImageError("too_large", f"{what}: {e}") from e
        except UnidentifiedImageError as e:
            raise _unidentified(source, what, formats) from e
        except Exception as e:  # truncated headers and the like
            raise ImageError("bad_image", f"{what}: cannot be decoded ({e})") from e
        w, h = img.size
        if w <= 0 or h <= 0:
            raise ImageError("bad_image", f"{what}: declares an empty size {w}x{h}")
        if w * h > cfg.max_image_pixels:
            raise ImageError(
                "too_large",
                f"{what}: declares {w}x{h} = {w * h:,} pixels, over the limit of {cfg.max_image_pixels:,}",
            )
        if max(w, h) > cfg.max_image_aspect * min(w, h):
            # resizing the shorter side to the model's size would blow the longer one up
            raise ImageError(
                "bad_image",
                f"{what}: declares {w}x{h}, an aspect ratio of {max(w, h) / min(w, h):,.0f}:1, over the limit of "
                f"{cfg.max_image_aspect:g}:1",
            )
        if img.format == "JPEG":
            img.draft("RGB", (cfg.image_size, cfg.image_size))
        try:
            img.load()
        except Exception as e:
            raise ImageError("bad_image", f"{what}: pixel data cannot be decoded ({e})") from e
        img = ImageOps.exif_transpose(img)  # phone photos: honour the EXIF orientation
    if img.mode != "RGB":
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, img)
        img = img.convert("RGB")
    return img


def _unidentified(source: ImageSource, what: str, formats: tuple[str, ...]) -> ImageError:
    """An image none of `formats` identifies: 'unsupported_image' if another Pillow format would
    have (checked by its magic bytes only, nothing decoded), else 'bad_image'."""
    other = None
    try:
        if isinstance(source, bytes):
            head = source[:64]
        else:
            with open(source, "rb") as f:
                head = f.read(64)
        Image.init()
        for name, (_, accept) in Image.OPEN.items():
            if name not in formats and accept is not None and accept(head):
                other = name
                break
    except Exception:  # noqa: BLE001  a magic-bytes check that fails names nothing
        other = None
    if other is not None:
        return ImageError("unsupported_image", f"{what}: {other} images are not accepted (accepted: "
                                               f"{', '.join(formats)})")
    return ImageError("bad_image", f"{what}: not a decodable image (unknown format or corrupt header)")


def image_to_array(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """RGB image -> float32 [3, S, S]: shorter side resized to S and centre-cropped (fit "crop"),
    or longer side resized to S and centred on white (fit "pad"); normalised."""
    s = cfg.image_size
    w, h = img.size
    if cfg.fit == "pad":
        scale = s / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), _RESAMPLE[cfg.resample])
        canvas = Image.new("RGB", (s, s), (255, 255, 255))
        canvas.paste(img, ((s - nw) // 2, (s - nh) // 2))
        return _normalise(canvas, cfg)
    scale = s / min(w, h)
    nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), _RESAMPLE[cfg.resample])
    left, top = (nw - s) // 2, (nh - s) // 2
    return _normalise(img.crop((left, top, left + s, top + s)), cfg)


def _normalise(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    scale, shift = _normaliser(cfg.image_mean, cfg.image_std)
    arr = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)  # (x / 255 - mean) / std, per channel
    return np.ascontiguousarray(arr * scale - shift)


@functools.lru_cache(maxsize=8)
def _normaliser(mean: tuple, std: tuple) -> tuple[np.ndarray, np.ndarray]:
    m, s = np.asarray(mean, np.float32)[:, None, None], np.asarray(std, np.float32)[:, None, None]
    return (1.0 / (255.0 * s)).astype(np.float32), (m / s).astype(np.float32)


def load_image_array(source: bytes | str | os.PathLike, cfg: PreprocessConfig) -> np.ndarray:
    return image_to_array(open_image(source, cfg), cfg)


def load_tokenizer(path: str | os.PathLike, max_text_len: int) -> Tokenizer:
    """Load a `tokenizers` JSON file and fix its padding/truncation to `max_text_len`."""
    tok = Tokenizer.from_file(str(Path(path)))
    pad_id, pad_token = _pad_token(tok)
    tok.enable_truncation(max_length=max_text_len)
    tok.enable_padding(length=max_text_len, pad_id=pad_id, pad_token=pad_token)
    return tok


def _pad_token(tok: Tokenizer) -> tuple[int, str]:
    for cand in ("[PAD]", "<pad>", "<|endoftext|>", "</s>"):
        tid = tok.token_to_id(cand)
        if tid is not None:
            return tid, cand
    return 0, tok.id_to_token(0) or "[PAD]"


def normalise_title(title: str | None) -> str | None:
    if title is None:
        return None
    title = " ".join(str(title).split())
    return title or None


def encode_titles(tok: Tokenizer, titles: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Titles (None for a missing one) -> (input_ids, attention_mask), int64 [B, L].

    A missing title is encoded as the empty string (just the special tokens) so the text tower
    sees a valid sequence; the model masks it out through `text_present`.
    """
    encs = tok.encode_batch([normalise_title(t) or "" for t in titles])
    ids = np.asarray([e.ids for e in encs], dtype=np.int64)
    mask = np.asarray([e.attention_mask for e in encs], dtype=np.int64)
    return ids, mask


def build_inputs(
    tok: Tokenizer,
    titles: Sequence[str | None],
    images: Sequence[np.ndarray | None],
    cfg: PreprocessConfig,
) -> dict[str, np.ndarray]:
    """Assemble one batch of model inputs from titles and preprocessed image arrays."""
    if len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles but {len(images)} images")
    titles = [normalise_title(t) for t in titles]
    for i, (t, im) in enumerate(zip(titles, images, strict=True)):
        if t is None and im is None:
            raise ValueError(f"item {i} has neither a title nor an image")
    ids, mask = encode_titles(tok, titles)
    s = cfg.image_size
    pixels = np.zeros((len(images), 3, s, s), dtype=np.float32)
    for i, im in enumerate(images):
        if im is not None:
            pixels[i] = im
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values": pixels,
        "text_present": np.asarray([t is not None for t in titles], dtype=np.float32),
        "image_present": np.asarray([im is not None for im in images], dtype=np.float32),
    }

"""The five named steps of serving a product, as LitServe's LitAPI names them:

  decode_request   raw title + image bytes -> model inputs of one item   (front end, a thread pool)
  batch            items -> one batch                                     (the batcher's thread)
  predict          one backend call per batch                             (the batcher's thread)
  unbatch          a batch's outputs -> the row of each item              (the batcher's thread)
  encode_response  one item's row -> the JSON answer's predictions        (the event loop)

`attrx serve` splits them over processes: front-ends (`attrx.service.http`) decode requests and
encode responses, the inference process (`attrx.service.engine`) batches, predicts and unbatches.
`attrx score` calls the same Predictor and backend, so both answer alike.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np

from attrx.service.contract.bundle import Bundle, load_bundle
from attrx.service.inference.predictor import Predictor, batch_inputs
from attrx.service.inference.runtime import Backend, load_backend


def warmup_product() -> tuple[str, bytes]:
    """A title and a small PNG that exercise the whole preprocessing path."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (96, 96), (128, 128, 128)).save(buf, format="PNG")
    return "warm-up product", buf.getvalue()


def load_pipeline(settings, *, with_backend: bool = True) -> tuple[Bundle, Pipeline]:
    """The bundle and its pipeline under the serving settings' limits. Without the backend (a
    front-end process, which only decodes and encodes) the model file is neither hashed nor loaded."""
    bundle = load_bundle(settings.bundle, verify_hashes=with_backend)
    predictor = Predictor(bundle, max_title_chars=settings.max_title_chars,
                          max_image_pixels=settings.max_image_pixels, max_image_aspect=settings.max_image_aspect,
                          decisions=settings.decisions)
    backend = load_backend(bundle, settings.backend, providers=settings.providers, threads=settings.intra_op_threads,
                           precision=settings.precision, max_batch_size=settings.max_batch_size,
                           trt_cache_dir=settings.trt_cache_dir,
                           allow_fallback=settings.allow_provider_fallback) if with_backend else None
    return bundle, Pipeline(predictor, backend)


class Pipeline:
    def __init__(self, predictor: Predictor, backend: Backend | None):
        self.predictor, self.backend = predictor, backend

    def decode_request(self, title: str | None, image: bytes | str | os.PathLike | None) -> dict[str, np.ndarray]:
        """Raises InputError or ImageError for a product the model cannot take."""
        return self.predictor.decode_request(title, image)

    def prepare(self, title: str | None, image) -> tuple[dict[str, np.ndarray], list[str]]:
        """decode_request and the product's situation per attribute, in one pass."""
        return self.predictor.prepare(title, image)

    def batch(self, items: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return batch_inputs(items)

    def predict(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.backend.run(inputs)

    def unbatch(self, outputs: list[np.ndarray], n: int) -> list[tuple[list[np.ndarray], int]]:
        return [(outputs, i) for i in range(n)]

    def situations(self, title: str | None, image) -> list[str]:
        return self.predictor.situations(title, image)

    def encode_response(self, outputs: list[np.ndarray], row: int, *, key: str, situations: Sequence[str],
                        top_k: int = 1) -> dict[str, dict]:
        return self.predictor.encode_response(outputs, row, key=key, situations=situations, top_k=top_k)

    def run_batch(self, items: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
        """batch + predict: what the batcher's thread does with the items it took."""
        return self.predict(self.batch(items))

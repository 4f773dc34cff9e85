"""The one inference path: the five named steps of serving a product, as LitServe's LitAPI names them.

  decode_request   raw title + image -> model inputs of one item, situations  (front-end: a thread pool)
  batch            items -> one batch                                          (the batcher's thread)
  predict          one backend call per batch                                  (the batcher's thread)
  unbatch          a batch's outputs -> the row of each item                   (the batcher's thread:
                   the engine writes each item's row to its shared-memory slot; `attrx score` indexes
                   the batch's outputs by row, as encode_response takes them)
  encode_response  one item's row -> the JSON answer's predictions             (the event loop)

`attrx serve` splits them over processes: front-ends (`attrx.service.http`) hold a Predictor without a
backend and decode requests and encode responses; the inference process (`attrx.service.engine`) holds
one with its backend and batches, predicts and unbatches. `attrx score` (local and Ray) and the
benchmarks call the same Predictor, so every path gives the same answer for the same product.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from attrx.service.contract.bundle import CONCEPT_OUTPUTS, Bundle, load_bundle, output_names, precision_key
from attrx.service.contract.decisions import REVIEW_REASONS, decide_one, rules_from_manifest, situation_index
from attrx.service.contract.decode import Decoded, decode_product
from attrx.service.contract.preprocess import (
    IMAGE_FORMATS,
    ImageError,
    ImageSource,
    load_tokenizer,
    normalise_title,
)
from attrx.service.contract.situations import SituationReader
from attrx.service.inference.runtime import Backend, load_backend

DECISIONS = ("full", "plain")


class InputError(ValueError):
    """A product the model cannot take (reason: empty, title_too_long, bad_option)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def batch_inputs(items: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate prepared single items (each [1, ...]) into one batch."""
    return {k: np.concatenate([it[k] for it in items]) for k in items[0]}


def warmup_product() -> tuple[str, bytes]:
    """A title and a small PNG that exercise the whole preprocessing path."""
    buf = io.BytesIO()
    Image.new("RGB", (96, 96), (128, 128, 128)).save(buf, format="PNG")
    return "warm-up product", buf.getvalue()


def load_predictor(settings, *, with_backend: bool = True) -> Predictor:
    """The bundle's Predictor under the serving settings' limits. Without the backend (a front-end
    process, which only decodes and encodes) the model file is neither hashed nor loaded."""
    bundle = load_bundle(settings.bundle, verify_hashes=with_backend)
    backend = load_backend(bundle, settings.backend, providers=settings.providers, threads=settings.intra_op_threads,
                           precision=settings.variant, max_batch_size=settings.max_batch_size,
                           trt_cache_dir=settings.trt_cache_dir,
                           allow_fallback=settings.allow_provider_fallback) if with_backend else None
    return Predictor(bundle, backend=backend, max_title_chars=settings.max_title_chars,
                     max_image_pixels=settings.max_image_pixels, max_image_aspect=settings.max_image_aspect,
                     decisions=settings.decisions, image_formats=settings.formats())


class Predictor:
    """The bundle's preprocessing and postprocessing around a runtime backend (None where the
    process only decodes and encodes: batch and predict then refuse)."""

    def __init__(self, bundle: Bundle, *, backend: Backend | None = None, max_title_chars: int = 2000,
                 max_image_pixels: int | None = None, max_image_aspect: float | None = None,
                 decisions: str = "full", image_formats: tuple[str, ...] = IMAGE_FORMATS):
        self.bundle, self.backend = bundle, backend
        self.image_formats = image_formats
        self.manifest = bundle.manifest
        pre = self.manifest.preprocess
        limits = {"max_image_pixels": max_image_pixels, "max_image_aspect": max_image_aspect}
        pre = pre.model_copy(update={k: v for k, v in limits.items() if v is not None})
        self.preprocess = pre
        self.tokenizer = load_tokenizer(bundle.tokenizer_path, pre.max_text_len)
        self.max_title_chars = max_title_chars
        self.attributes = [a.name for a in self.manifest.attributes]
        self.targets = [precision_key(t) for t in self.manifest.precision_targets]
        if decisions not in DECISIONS:
            raise ValueError(f"decisions must be one of {DECISIONS}, got {decisions!r}")
        full = decisions == "full"
        self.rules, self.decoder = rules_from_manifest(self.manifest, situations=full, conflicts=full, constraints=full)
        self.read_situations = SituationReader.of_attributes(self.manifest.attributes)
        # per attribute, situation and target: reviewed products that would certify it (0: it is)
        self._to_certify = [{s: (v.more_needed or {}) for s, v in (a.situations or {}).items()} if full else {}
                            for a in self.manifest.attributes]
        where = {n: i for i, n in enumerate(self.manifest.model.outputs)}
        uni = self.manifest.model.unimodal
        self._cols = [[where[n] for n in output_names(a, uni)] for a in self.attributes]
        self._concepts = [where[n] for n in CONCEPT_OUTPUTS] if self.manifest.model.concepts else None

    def situations(self, title: str | None, image) -> list[str]:
        """Per attribute, the product's situation (see attrx.service.contract.situations)."""
        return self.read_situations(title, image)

    def decode_request(self, title: str | None, image: ImageSource | None) -> Decoded:
        """One product -> model inputs with batch size 1 (its drift profile under PROFILE_KEY, which
        backends ignore) and its situation per attribute. Raises InputError or ImageError."""
        title = normalise_title(title)
        if title is not None and len(title) > self.max_title_chars:
            raise InputError("title_too_long",
                             f"title has {len(title):,} characters; the limit is {self.max_title_chars:,}")
        if image is not None and isinstance(image, bytes) and not image:
            image = None
        if title is None and image is None:
            raise InputError("empty", "a product needs a title or an image (neither was given)")
        return decode_product(self.tokenizer, self.preprocess, self.read_situations, title, image, self.image_formats)

    def batch(self, items: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return batch_inputs(items)

    def predict(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.backend is None:
            raise RuntimeError("this Predictor decodes and encodes only (it was loaded without a backend)")
        return self.backend.run(inputs)

    def run_batch(self, items: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
        """batch + predict: what the batcher's thread does with the items it took."""
        return self.predict(self.batch(items))

    def precision_key(self, min_precision: float | None) -> str:
        if min_precision is None:
            return self.targets[0]
        key = precision_key(min_precision)
        if key not in self.targets:
            raise InputError("bad_option", f"min_precision {min_precision} is not calibrated in this bundle; "
                                           f"use one of {', '.join(self.targets)}")
        return key

    def encode_response(self, outputs: Sequence[np.ndarray], i: int, *, key: str, situations: Sequence[str],
                        top_k: int = 1) -> dict[str, dict]:
        """Row i of a batch's outputs -> per attribute value, confidence, top-k, weights, situation,
        threshold, acceptance and the reasons for review."""
        cols = self._cols
        uni = len(cols[0]) == 4
        probs = [outputs[c[0]][i] for c in cols]
        rows = [p.tolist() for p in probs]  # plain Python on small rows: numpy's per-call cost dominated
        answers = decide_one(self.rules, self.decoder, probs, situation_index(situations), key,
                             [outputs[c[2]][i] for c in cols] if uni else None,
                             [outputs[c[3]][i] for c in cols] if uni else None, rows=rows)
        result = {}
        for j, (rule, (c, conf, thr, why, conflict, constrained, fam, fconf, fthr, fok)) in enumerate(
                zip(self.rules, answers, strict=True)):
            p, (w_text, w_image) = rows[j], outputs[cols[j][1]][i].tolist()
            top = sorted(range(len(p)), key=p.__getitem__, reverse=True)[: max(1, min(top_k, len(p)))]
            result[rule.name] = {
                "value": rule.classes[c], "confidence": conf,
                "top_k": [{"value": rule.classes[t], "probability": p[t]} for t in top],
                "modality_weights": {"text": w_text, "image": w_image},
                "situation": situations[j], "threshold": thr, "accepted": why < 0, "conflict": conflict,
                "constrained": constrained, "review": None if why < 0 else REVIEW_REASONS[why],
                "accepted_level": "value" if why < 0 else ("family" if fok else None),
                "reviews_to_certify": self._to_certify[j].get(situations[j], {}).get(key),
                "family": None if fam < 0 else {"name": rule.families.names[fam], "confidence": fconf,
                                                "threshold": fthr, "accepted": fok},
            }
            if conflict:
                result[rule.name]["conflict_values"] = {
                    "title_says": rule.classes[int(outputs[cols[j][2]][i].argmax())],
                    "image_says": rule.classes[int(outputs[cols[j][3]][i].argmax())]}
        return result

    def evidence(self, outputs: Sequence[np.ndarray], i: int) -> dict | None:
        """Row i's title words with how strongly the image alone supports each (a word split into
        pieces scores their mean), most supported first; None without a concept head or an image."""
        if self._concepts is None:
            return None
        scores, ids = (outputs[c][i] for c in self._concepts)
        if not scores.any():
            return None  # no image (or no title word): nothing for the image to back
        words: list[list] = []
        for tid, sc in zip(ids.tolist(), scores.tolist(), strict=True):
            if sc <= 0.0:
                continue  # padding and special tokens score exactly 0
            tok = self.tokenizer.id_to_token(int(tid)) or ""
            if tok.startswith("##") and words:
                words[-1][0] += tok[2:]
                words[-1][1].append(sc)
            else:
                words.append([tok, [sc]])
        best: dict[str, float] = {}
        for w, sc in words:
            best[w] = max(best.get(w, 0.0), sum(sc) / len(sc))
        ranked = sorted(best.items(), key=lambda kv: kv[1], reverse=True)
        return {"image_backs": [{"word": w, "score": round(s, 4)} for w, s in ranked]}


__all__ = ["Decoded", "ImageError", "InputError", "Predictor", "batch_inputs", "load_predictor", "warmup_product"]

"""Prometheus metrics (prefix `attrx_`, histograms).

`attrx serve` runs several processes (`attrx.service.serving.supervisor`), so the metrics run in
prometheus_client's multiprocess mode: every process writes its values to files under
`PROMETHEUS_MULTIPROC_DIR`, and `/metrics`, whichever front-end answers it, reads them all into one
view (`exposition()`). Counters and histograms add up across processes; each gauge says how its
processes' values combine.
"""

from __future__ import annotations

import os

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
UNIT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
REJECTION_REASONS = ("overloaded", "queue_full", "timeout", "bad_image", "too_large", "empty", "title_too_long",
                     "unsupported_media_type", "bad_request", "bad_option", "unauthorized", "not_ready",
                     "draining", "client_gone", "slow_client", "too_many_connections", "drift_off", "empty_window",
                     "not_written", "stalled", "batch_failed")


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The text of /metrics: every process's values in multiprocess mode, else this registry's."""
    path = multiprocess_dir()
    if path:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
    return generate_latest(registry), CONTENT_TYPE_LATEST


class Metrics:
    """front=False: the inference process, which must not report readiness (only front-ends do)."""

    def __init__(self, attributes: list[str], front: bool = True):
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("attrx_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "code"], registry=r)
        self.request_seconds = Histogram("attrx_request_duration_seconds", "HTTP request duration, server side",
                                         ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("attrx_queue_wait_duration_seconds",
                                       "time an item waited in the batching queue", buckets=LATENCY_BUCKETS,
                                       registry=r)
        self.inference_seconds = Histogram("attrx_inference_duration_seconds", "model run time per batch",
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("attrx_batch_size", "items per model batch", buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("attrx_queue_depth", "items waiting in the batching queue", registry=r,
                                 multiprocess_mode="livesum")
        # the count is shared by the front-ends: the one answering /metrics sets it, the latest wins
        self.in_flight = Gauge("attrx_in_flight", "products admitted and not finished (decoding, queued or "
                                                  "running); the admission limit bounds it", registry=r,
                               multiprocess_mode="mostrecent")
        self.items = Counter("attrx_items", "products predicted", registry=r)
        self.shared = Counter("attrx_shared_requests", "requests answered from an identical product's work "
                              "already in flight (one decoding, one inference)", registry=r)
        self.cache = Counter("attrx_response_cache", "response cache lookups (attrx serve --response-cache)",
                             ["result"], registry=r)
        self.batch_failures = Counter("attrx_batch_failures", "model batches that raised (their requests are "
                                      "answered 500 batch_failed), by exception type", ["error"], registry=r)
        self.rejections = Counter("attrx_rejections", "requests or items refused, by reason", ["reason"],
                                  registry=r)
        # an Info metric in all but name (Info does not exist in multiprocess mode)
        self.model_info = Gauge("attrx_model_info", "the served bundle and the variant that runs (precision: fp32, "
                                "fp16 or int8; sha256: of the file that runs; provider: the execution provider "
                                "that really runs it)",
                                ["name", "version", "family", "precision", "backend", "provider", "sha256"],
                                registry=r, multiprocess_mode="max")
        if front:  # ready only when every front-end process is
            self.ready = Gauge("attrx_ready", "1 once the bundle is loaded and warmed up", registry=r,
                               multiprocess_mode="livemin")
        self.confidence = Histogram("attrx_prediction_confidence", "confidence of the predicted value",
                                    ["attribute"], buckets=UNIT_BUCKETS, registry=r)
        self.image_weight = Histogram("attrx_image_modality_weight",
                                      "modality-attention weight of the image (0 = title only)",
                                      ["attribute"], buckets=UNIT_BUCKETS, registry=r)
        # set by the inference process, which keeps the drift window
        self.estimated_accuracy = Gauge("attrx_estimated_accuracy", "ESTIMATE, assuming calibrated probabilities: "
                                        "the accuracy of the drift window's answers (the mean probability of the "
                                        "values answered; bound low/high: its 95% interval), per attribute and "
                                        "situation (all: every product)", ["attribute", "situation", "bound"],
                                        registry=r, multiprocess_mode="mostrecent")
        self.estimated_products = Gauge("attrx_estimated_accuracy_products", "products behind "
                                        "attrx_estimated_accuracy", ["attribute", "situation"],
                                        registry=r, multiprocess_mode="mostrecent")
        if front:
            self._drift_gauges(r)
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason)
        for a in attributes:
            self.confidence.labels(a)
            self.image_weight.labels(a)

        self._per_attribute = {a: (self.confidence.labels(a), self.image_weight.labels(a)) for a in attributes}

    def _drift_gauges(self, r) -> None:
        # set by the front-end answering /metrics from the one window (attrx.service.http.drift_report): the latest wins
        def gauge(name, doc, labels=()):
            return Gauge(name, doc, list(labels), registry=r, multiprocess_mode="mostrecent")

        self.drift_distance = gauge("attrx_drift_distance", "Jensen-Shannon distance (0-1) of the drift window's "
                                    "distribution of a statistic of an attribute's predictions from the reference's",
                                    ["attribute", "statistic"])
        self.drift_input_distance = gauge("attrx_drift_input_distance", "Jensen-Shannon distance (0-1) of the "
                                          "window's distribution of an input statistic from the reference's",
                                          ["statistic"])
        self.drift_accepted = gauge("attrx_drift_accepted_rate", "share of the window's (live) or the "
                                    "reference's products whose value clears its threshold at the bundle's first "
                                    "precision target", ["attribute", "window"])
        self.drift_situation = gauge("attrx_drift_situation_share", "share of products in each situation, in the "
                                     "window (live) and the reference", ["attribute", "situation", "window"])
        self.drift_threshold = gauge("attrx_drift_threshold", "the alert threshold of attrx_drift_distance "
                                     "(attrx serve --drift-thresholds; default attrx's per statistic)",
                                     ["attribute", "statistic"])
        self.drift_input_threshold = gauge("attrx_drift_input_threshold", "the alert threshold of "
                                           "attrx_drift_input_distance", ["statistic"])
        self.drift_items = gauge("attrx_drift_window_items", "products in the drift window (it compares once full)")
        self.drift_window_size = gauge("attrx_drift_window_size", "the drift window's size in products")
        self.drift_reference = gauge("attrx_drift_reference_items", "products the drift reference counted, by "
                                     "source (bundle, file, traffic)", ["source"])

    def set_drift(self, cmp: dict) -> None:
        """The drift gauges from a comparison (attrx.service.contract.drift_stats.Statistics.compare); NaN
        where it has no figure (no reference, or the window not yet full)."""
        nan = float("nan")
        full = cmp["full"]
        th = cmp["thresholds"]
        for a, e in cmp["attributes"].items():
            for stat, d in e["distance"].items():
                self.drift_distance.labels(a, stat).set(d if d is not None and full else nan)
                self.drift_threshold.labels(a, stat).set(th[f"{a}.{stat}"])
            for which, rate in (("live", e["accepted_rate"]), ("reference", e["reference_accepted_rate"])):
                self.drift_accepted.labels(a, which).set(nan if rate is None else rate)
            for which, shares in (("live", e["situations"]), ("reference", e["reference_situations"])):
                for sit, v in (shares or {}).items():
                    self.drift_situation.labels(a, sit, which).set(v)
        for stat, d in cmp["inputs"].items():
            self.drift_input_distance.labels(stat).set(d if d is not None and full else nan)
            self.drift_input_threshold.labels(stat).set(th[stat])
        self.drift_items.set(cmp["items"])
        self.drift_window_size.set(cmp["window"])
        for source in ("bundle", "file", "traffic"):
            self.drift_reference.labels(source).set(cmp["reference"]["items"] if cmp["reference"]["source"] == source
                                                    else 0)

    def set_estimates(self, summary: dict[str, dict]) -> None:
        """The accuracy estimate of the window (attrx.service.telemetry.estimate), per attribute and situation."""
        for a, sits in summary.items():
            for sit, e in sits.items():
                if e is None:
                    continue
                for bound in ("estimate", "low", "high"):
                    self.estimated_accuracy.labels(a, sit, bound).set(e[bound])
                self.estimated_products.labels(a, sit).set(e["products"])

    def set_model(self, manifest, variant: str, backend: str, provider: str) -> None:
        """Set by the inference process, the one that knows which variant runs, and on what."""
        m, v = manifest, manifest.variants[variant]
        self.model_info.labels(m.name, m.version, m.model.family, v.precision, backend, provider,
                               m.files[v.file].sha256).set(1)

    def observe_batch(self, outputs: list[np.ndarray]) -> None:
        """A batch's predictions, in the inference process, once per batch: the products, and per
        attribute the confidence of the predicted value (the largest probability) and the image's
        modality weight. Outputs come in pairs per attribute: probabilities, (text, image) weights."""
        self.items.inc(len(outputs[0]))
        for j, (conf, weight) in enumerate(self._per_attribute.values()):
            observe_many(conf, outputs[2 * j].max(axis=1))
            observe_many(weight, outputs[2 * j + 1][:, 1])


def observe_many(hist, values: np.ndarray) -> None:
    """Histogram.observe for every value, with one write per bucket touched instead of two per
    value: in multiprocess mode each write goes to a memory-mapped file under a lock."""
    bounds, buckets, total = getattr(hist, "_upper_bounds", None), getattr(hist, "_buckets", None), \
        getattr(hist, "_sum", None)
    if bounds is None or buckets is None or total is None:  # a prometheus_client without these
        for v in values.tolist():
            hist.observe(v)
        return
    # observe() puts a value in the first bucket whose bound is >= it
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for i in np.flatnonzero(counts).tolist():
        buckets[i].inc(int(counts[i]))
    total.inc(float(values.sum(dtype=np.float64)))

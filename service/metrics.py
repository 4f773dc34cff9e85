"""Prometheus metrics (prefix `attrx_`, histograms, one registry per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
UNIT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
REJECTION_REASONS = ("overloaded", "queue_full", "timeout", "bad_image", "too_large", "empty", "title_too_long",
                     "unsupported_media_type", "bad_request", "bad_option", "unauthorized", "not_ready",
                     "draining", "client_gone", "slow_client", "too_many_connections")


class Metrics:
    def __init__(self, attributes: list[str]):
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
        self.queue_depth = Gauge("attrx_queue_depth", "items waiting in the batching queue", registry=r)
        self.in_flight = Gauge("attrx_in_flight", "products admitted and not finished (decoding, queued or "
                                                  "running); the admission limit bounds it", registry=r)
        self.items = Counter("attrx_items", "products predicted", registry=r)
        self.rejections = Counter("attrx_rejections", "requests or items refused, by reason", ["reason"],
                                  registry=r)
        self.model_info = Info("attrx_model", "the served bundle", registry=r)
        self.ready = Gauge("attrx_ready", "1 once the bundle is loaded and warmed up", registry=r)
        self.confidence = Histogram("attrx_prediction_confidence", "confidence of the predicted value",
                                    ["attribute"], buckets=UNIT_BUCKETS, registry=r)
        self.image_weight = Histogram("attrx_image_modality_weight",
                                      "modality-attention weight of the image (0 = title only)",
                                      ["attribute"], buckets=UNIT_BUCKETS, registry=r)
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason)
        for a in attributes:
            self.confidence.labels(a)
            self.image_weight.labels(a)

        self._per_attribute = {a: (self.confidence.labels(a), self.image_weight.labels(a)) for a in attributes}

    def observe_predictions(self, predictions: dict[str, dict]) -> None:
        self.items.inc()
        for attr, p in predictions.items():
            conf, weight = self._per_attribute[attr]
            conf.observe(p["confidence"])
            weight.observe(p["modality_weights"]["image"])

"""Serving configuration: flags of `attrx serve`, or environment variables ATTRX_<NAME>."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from attrx.service.procutil import available_cores

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def read_key_file(path: str, setting: str) -> SecretStr:
    """A key from a file's first line; errors name the file and the setting, never the content."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"{setting} {path}: {e.strerror or e}") from None
    key = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not key:
        raise ValueError(f"{setting} {path} is empty")
    return SecretStr(key)


def check_key(key: SecretStr | None, variable: str) -> None:
    """A key that is set must be a key: an empty one (a template's, a missing secret's) is refused,
    not taken for "no key"."""
    if key is not None and not key.get_secret_value().strip():
        raise ValueError(f"{variable} is set but empty: give the key, or unset it (attrx serve then needs "
                         "--no-auth to run without one)")
    if key is not None and len(key.get_secret_value().strip()) < 16:
        raise ValueError(f"{variable} is shorter than 16 characters: use a random key, e.g. "
                         "python -c 'import secrets; print(secrets.token_urlsafe(32))'")


class ServeSettings(BaseSettings):
    # hide_input_in_errors: a validation error never prints the values it was given (a key among them)
    model_config = SettingsConfigDict(env_prefix="ATTRX_", extra="ignore", hide_input_in_errors=True)

    bundle: str = Field(description="model bundle folder")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(default_factory=lambda: available_cores(), ge=1,
                         description="front-end processes (HTTP, parsing, image decoding) feeding the one "
                                     "inference process (default: the number of cores)")
    # dynamic batching (Triton semantics)
    max_batch_size: int = Field(32, ge=1, description="a batch closes at this many items; 1 turns batching off")
    batching: str = Field("adaptive", pattern="^(adaptive|fixed)$",
                          description="adaptive: an idle engine runs a request at once and batches form from what "
                                      "queues while one runs; it waits (up to max_queue_delay_ms) only where the "
                                      "measured batch costs say waiting raises throughput. fixed: Triton's "
                                      "semantics, every batch waits up to max_queue_delay_ms to fill")
    max_queue_delay_ms: float = Field(5.0, ge=0, description="the longest a batch waits to fill (always, with "
                                                             "--batching fixed)")
    max_queue_size: int = Field(256, ge=1, description="items waiting for a batch beyond this are refused with 429")
    # 32 kept the admitted requests' p99 within 1.2x of the p99 at capacity under 4x overload on
    # 2 cores (64: 2.5-3x); size it to the throughput times the latency you accept
    max_in_flight: int = Field(32, ge=1, description="products admitted at once (decoding + queued + running); "
                                                    "past it a request is refused at once with 429")
    request_timeout_ms: float = Field(5000.0, gt=0, description="deadline of a request; expired while queued -> 504")
    dedup: bool = Field(True, description="requests for a product already in flight (same title and image bytes) "
                        "share its decoding and inference instead of repeating them")
    response_cache: int = Field(0, ge=0, description="answer repeated products from an LRU cache of this many "
                                "responses per front-end process, keyed on the bundle's sha256, the product and "
                                "the options (0: off)")
    inference_threads: int = Field(1, ge=1, description="threads running model batches")
    tracing: bool = Field(False, description="OpenTelemetry spans of each request through both processes, over "
                                             "OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT (the extra attrx[tracing])")
    tracing_sample_ratio: float = Field(0.05, gt=0, le=1, description="with tracing, the share of requests traced "
                                        "(a request whose caller's traceparent is sampled always is); "
                                        "OTEL_TRACES_SAMPLER, where set, decides instead")
    # half the cores each for preprocessing and the model: on 2 cores this beat onnxruntime's
    # all-cores default by ~19% in requests/s (benchmarks/serve.py), less thread contention
    preprocess_threads: int = Field(default_factory=lambda: _half_cores(), ge=1,
                                    description="threads decoding images and tokenising titles (default: cores/2)")
    # a trade-off, measured on 2 cores (alternating repetitions): at 10, 429 p99 under 4x overload
    # fell from 14-65 ms to 13-19 ms, but closed-loop p99 rose (c=64: 145 ms against 100 ms at 0)
    preprocess_nice: int = Field(0, ge=0, le=19, description="niceness of the decoding threads: above 0, under "
                                 "overload each front-end's event loop (429s, answers) gets the CPU first, at the "
                                 "cost of a longer latency tail at full load")
    intra_op_threads: int = Field(default_factory=lambda: _half_cores(), ge=0,
                                  description="onnxruntime threads per batch (default: cores/2; 0: onnxruntime's own)")
    providers: str = Field("cpu", description="onnxruntime execution providers: cpu, cuda, tensorrt or auto")
    variant: str = Field("auto", pattern="^(auto|fp32|fp16|int8)$",
                         description="which of the bundle's variants runs: fp32, fp16, int8, or auto (the best "
                                     "one meant for the providers: int8 on cpu, fp16 on cuda/tensorrt, else fp32)")
    backend: str = Field("onnxruntime", pattern="^(onnxruntime|tensorrt)$",
                         description="onnxruntime (the ONNX variants), or tensorrt (the bundle's model.plan from "
                                     "`attrx build-engine`, on the TensorRT lean runtime; needs attrx[tensorrt] "
                                     "and a GPU)")
    allow_provider_fallback: bool = Field(False, description="start even when the execution provider asked for "
                                          "does not load, on the one that does (logged; /v1/model and "
                                          "attrx_model_info name it); without it the server refuses to start")
    trt_cache_dir: str | None = Field(None, description="TensorRT execution provider's engine and timing cache "
                                                         "(default $ATTRX_CACHE_DIR/tensorrt, else "
                                                         "~/.cache/attrx/tensorrt, else the temp folder)")
    warmup_batches: int = Field(1, ge=1, description="full batches run before /readyz turns 200")
    # input limits
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="larger request bodies -> 413; also the "
                                "limit of an image fetched by image_url")
    image_url_allow: str | None = Field(None, description="accept JSON image_url for these hosts or URL prefixes "
                                        "(comma-separated: cdn.shop.example,https://img.example/p/); off by default. "
                                        "Needs attrx[remote]; docs/security.md")
    image_url_allow_networks: str | None = Field(None, description="loopback, private or link-local networks an "
                                                 "image_url may reach (CIDR, comma-separated); refused by default")
    max_image_pixels: int = Field(16_800_000, ge=1, description="images declaring more pixels -> 413, undecoded "
                                  "(16.8 MP: a 5184 x 3240 photograph; docs/security.md gives the memory it costs)")
    # the contract's IMAGE_FORMATS (a sibling room, not importable here: a test holds the two equal)
    image_formats: str = Field("JPEG,PNG,WEBP,GIF,BMP", description="image formats decoded (Pillow's names, "
                               "comma-separated); any other -> 415, undecoded")
    max_image_aspect: float = Field(20.0, ge=1.0, description="images whose longer side exceeds this many times "
                                                              "the shorter -> 422, undecoded")
    max_title_chars: int = Field(2000, ge=1, description="longer titles -> 422")
    decisions: str = Field("full", pattern="^(full|plain)$",
                           description="full: thresholds per situation, conflict checks and record constraints, as "
                                       "the bundle carries them; plain: its per-class thresholds in every situation, "
                                       "no conflict check, no constraints (for comparisons only: the accepted flag "
                                       "then overstates precision where the title is silent)")
    drift_window: int = Field(1000, ge=0, description="drift telemetry: compare the last this many products the model "
                              "ran with the reference (0: off)")
    drift_reference: str | None = Field(None, description="a drift reference file (JSON): used instead of the "
                                        "bundle's when it exists, and written by POST /v1/drift/baseline")
    drift_thresholds: str | None = Field(None, description="drift alert thresholds (JSON: statistic or "
                                         "attribute.statistic -> Jensen-Shannon distance), e.g. fitted on your own "
                                         "products by benchmarks/drift.py; default: attrx's, per statistic")
    max_request_items: int = Field(32, ge=1, description="most products in one /v1/extract/batch call")
    # connections
    header_timeout_s: float = Field(10.0, gt=0, description="a connection that has not sent a request's headers "
                                                           "within this is closed (408)")
    body_timeout_s: float = Field(30.0, gt=0, description="a request whose body has not fully arrived within this "
                                                         "is answered 408 and closed")
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="an idle keep-alive connection is closed after this")
    max_connections: int = Field(1024, ge=1, description="open connections beyond this are answered 503 and closed")
    # lifecycle and access
    front_end_restarts: int = Field(5, ge=0, description="a front-end process that dies is restarted alone; "
                                    "past this many restarts within restart_window_s the server exits 1")
    restart_window_s: float = Field(60.0, gt=0, description="the window front_end_restarts and engine_restarts "
                                                           "count in")
    engine_restarts: int = Field(3, ge=0, description="an inference process that dies or stalls past "
                                 "liveness_timeout_s is replaced in place; past this many replacements within "
                                 "restart_window_s the server exits 1")
    stall_timeout_s: float = Field(3.0, gt=0, description="/readyz answers 503 once work has waited this long "
                                   "without a batch completing (or a front-end's event loop is this late); the "
                                   "bound used is the larger of this and 4 x the slowest recent batch, plus max_queue_delay_ms")
    liveness_timeout_s: float = Field(10.0, gt=0, description="/livez answers 503 once the inference process or a "
                                      "front-end has made no progress for this long, and the server replaces it")
    drain_timeout_s: float = Field(10.0, ge=0, description="on SIGTERM, time to finish queued and running work")
    api_key: SecretStr | None = Field(None, description="the inference key: /v1/* needs 'Authorization: Bearer "
                                      "<key>' (prefer the environment variable or --api-key-file: a flag shows in "
                                      "the process list); set but empty is an error")
    api_key_file: str | None = Field(None, description="read the API key from this file (first line)")
    admin_key: SecretStr | None = Field(None, description="the admin key, apart from the inference key: the "
                                        "endpoints that change state (POST /v1/drift/baseline) need it, and are off "
                                        "without it")
    admin_key_file: str | None = Field(None, description="read the admin key from this file (first line)")
    no_auth: bool = Field(False, description="serve /v1/* without an API key, said explicitly (logged at start); "
                          "without a key and without this, attrx serve listens on loopback only")

    @model_validator(mode="after")
    def _check(self):
        if self.max_in_flight < self.max_request_items:
            raise ValueError(f"max_in_flight ({self.max_in_flight}) must be at least max_request_items "
                             f"({self.max_request_items}), or a full batch request could never be admitted")
        if self.liveness_timeout_s <= self.stall_timeout_s:
            raise ValueError(f"liveness_timeout_s ({self.liveness_timeout_s:g}) must be longer than stall_timeout_s "
                             f"({self.stall_timeout_s:g}): a stall is first seen on /readyz, then on /livez")
        self._keys()
        from PIL import Image

        Image.init()
        unknown = [f for f in self.formats() if f not in Image.OPEN]
        if unknown or not self.formats():
            raise ValueError(f"image_formats: {unknown or 'none'} are not image formats Pillow reads "
                             f"(e.g. {', '.join(sorted(Image.OPEN)[:8])}, ...)")
        return self

    def _keys(self) -> None:
        if self.api_key_file and self.api_key is None:
            self.api_key = read_key_file(self.api_key_file, "api_key_file")
        if self.admin_key_file and self.admin_key is None:
            self.admin_key = read_key_file(self.admin_key_file, "admin_key_file")
        check_key(self.api_key, "ATTRX_API_KEY (api_key)")
        check_key(self.admin_key, "ATTRX_ADMIN_KEY (admin_key)")
        if self.api_key and self.admin_key and self.api_key.get_secret_value() == self.admin_key.get_secret_value():
            raise ValueError("admin_key must differ from api_key: an inference key may not change state")
        if self.api_key and self.no_auth:
            raise ValueError("no_auth and api_key contradict each other: drop one")
        if self.api_key is None and not self.no_auth and self.host not in LOOPBACK:
            raise ValueError(f"no API key, and host {self.host} is not loopback: set ATTRX_API_KEY (or "
                             "--api-key-file), or say --no-auth (ATTRX_NO_AUTH=1) to serve without one")

    def formats(self) -> tuple[str, ...]:
        return tuple(f.strip().upper() for f in self.image_formats.split(",") if f.strip())

    def key(self) -> str | None:
        """The inference key in plain text (for comparing only), or None."""
        return self.api_key.get_secret_value() if self.api_key else None

    def admin(self) -> str | None:
        return self.admin_key.get_secret_value() if self.admin_key else None


def _half_cores() -> int:
    return max(1, available_cores() // 2)

"""Scoring configuration: one model for local and Ray scoring. `attrx score` generates its flags from
it (as `attrx serve` does from ServeSettings), and each setting is also an environment variable
ATTRX_SCORE_<NAME>, so a scheduled job can be configured without a long command line."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from attrx.service.contract.drift_stats import DEFAULT_WINDOW

RAY_GROUP = "Ray Data (pip install 'attrx[ray]'; OUT is then a folder)"


def _ray(**kw) -> dict:
    return {"json_schema_extra": {"group": RAY_GROUP, **kw.pop("extra", {})}, **kw}


class ScoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ATTRX_SCORE_", extra="ignore")

    bundle: str = Field(description="model bundle folder")
    out: str = Field(description="output file: .jsonl, .csv or .parquet; bad rows go to OUT.errors.jsonl")
    resume: bool = Field(False, description="skip the ids already in OUT and append the rest")
    overwrite: bool = Field(False, description="replace OUT if it exists")
    batch_size: int = Field(32, ge=1, description="products per model call")
    workers: int | None = Field(None, ge=1, description="image-decoding processes (default: cores - 1, at least 1; "
                                                       "local scoring only)")
    min_precision: float | None = Field(None, gt=0, le=1, description="calibrated precision target for `accepted` "
                                                                     "(default: the bundle's lowest)")
    providers: str = Field("cpu", description="onnxruntime execution providers: cpu, cuda, tensorrt, auto")
    variant: str = Field("auto", pattern="^(auto|fp32|fp16|int8)$",
                         description="which of the bundle's variants runs (auto: int8 on cpu if the bundle has it, "
                                     "fp16 on GPUs)")
    max_image_pixels: int | None = Field(None, ge=1, description="refuse images declaring more pixels "
                                         "(default: the bundle's; 16,800,000 in bundles exported by attrx 0.1.0 "
                                         "from 2026-12-07)")
    max_image_bytes: int | None = Field(None, ge=1, description="refuse image files larger than this (row error; "
                                        "default 50 MiB)")
    image_root: str | None = Field(None, description="read images only from these folders (and the catalog's), "
                                   "separated by ':'; default: any path (the catalog is your own file)")
    columns: str | None = Field(None, description="the catalog's column names where they differ from attrx's, "
                                "e.g. image=image_link,id=offer_id (a Merchant Center feed)")
    on_image_error: str = Field("error", pattern="^(error|title-only)$",
                                description="a row whose image cannot be had (after retries): error (to "
                                "OUT.errors.jsonl) or title-only (scored from its title; its image_error says why)")
    fetch_concurrency: int = Field(128, ge=1, description="remote images fetched at once (http(s), s3://, ...)")
    fetch_per_host: int = Field(64, ge=1, description="remote image requests in flight to one host")
    fetch_timeout_s: float = Field(20.0, gt=0, description="a remote image's connect and read timeout; "
                                   "a whole try may take 3 times this")
    fetch_retries: int = Field(4, ge=0, description="retries of a remote image after a timeout, a reset, "
                               "429 or 5xx (backoff with jitter; Retry-After honoured)")
    image_cache: str | None = Field(None, description="the cache of remote images (default "
                                    "$ATTRX_CACHE_DIR/images, else $XDG_CACHE_HOME/attrx/images, else "
                                    "~/.cache/attrx/images); none: no cache")
    image_cache_max_gb: float = Field(5.0, gt=0, description="the image cache's bound; the oldest-written go first")
    image_timeout_s: float = Field(30.0, gt=0, description="a decoding worker that holds a row this long is "
                                   "killed and the row retried once, then reported")
    max_errors: int | None = Field(None, ge=0, description="exit 3 when more rows than this failed (they are in "
                                   "OUT.errors.jsonl either way); default: no limit")
    conflicts: str | None = Field(None, description="also write every attribute whose title and image disagree to "
                                  "this file (JSONL: id, attribute, value, title_says, image_says; local scoring only)")
    review_queue: str | None = Field(None, description="also write every product with an attribute not accepted to "
                                     "this file (JSONL, one product per line: its values, confidence, situation, "
                                     "candidates and a priority; docs/review-queue.md)")
    drift_reference: str | None = Field(None, description="compare the catalog with this drift reference (JSON, e.g. "
                                        "from GET /v1/drift's window re-baselined, or an earlier run's meta) instead "
                                        "of the bundle's; docs/drift.md")
    drift_thresholds: str | None = Field(None, description="the drift warning's thresholds (JSON, as attrx serve "
                                         "--drift-thresholds; docs/drift.md)")
    drift_min_products: int = Field(DEFAULT_WINDOW, ge=1,
                                    description="warn about drift only for catalogs of at least this many products "
                                                "(the thresholds were chosen for the server's window of 1000; "
                                                "smaller samples are noisier)")
    progress: bool = Field(True, description="a progress bar on stderr")
    ray: str | None = Field(None, **_ray(description="score on Ray Data: a cluster's address (or RAY_ADDRESS), "
                                                     "else a local Ray", extra={"nargs": "?", "const": ""}))
    ray_concurrency: int = Field(1, ge=1, **_ray(description="inference actors"))
    ray_num_cpus: float = Field(1.0, gt=0, **_ray(description="CPUs per inference actor, also its onnxruntime "
                                                              "threads"))
    ray_format: str | None = Field(None, pattern="^(parquet|jsonl)$",
                                   **_ray(description="OUT's files (default: from OUT's name, x.jsonl or x.parquet; "
                                                      "Parquet without a suffix)"))
    ray_local_cpus: int | None = Field(None, ge=1, **_ray(description="CPUs of the local Ray (default: all)"))
    ray_block_rows: int = Field(256, ge=1, **_ray(description="catalog rows per Ray block, also per output file "
                                                              "at most"))

    @model_validator(mode="after")
    def _check(self):
        ray_only = [f"--{k.replace('_', '-')}" for k in ("ray_concurrency", "ray_num_cpus", "ray_format",
                                                          "ray_local_cpus", "ray_block_rows")
                    if k in self.model_fields_set]
        if self.ray is None and ray_only:
            raise ValueError(f"without --ray, {', '.join(ray_only)} would be ignored: add --ray or drop them")
        if self.ray is not None and self.conflicts:
            raise ValueError("--conflicts is written by local scoring; with --ray, read the <attribute>_conflict "
                             "columns of OUT")
        if self.ray is not None and self.workers is not None:
            raise ValueError("--workers sizes local decoding; with --ray, decoding runs in Ray tasks on the CPUs "
                             "the actors leave (--ray-concurrency x --ray-num-cpus)")
        return self

"""The remote side of scoring shared by local and Ray scoring: the image reader a run's settings
describe, and what a row carries when its image could not be had."""

from __future__ import annotations

import os
from pathlib import Path

from attrx.service.catalog.fetch import FetchError, FetchPolicy
from attrx.service.catalog.images import ImageLimits
from attrx.service.catalog.reader import parse_columns
from attrx.service.catalog.sources import ImageReader, ImageRef, is_remote
from attrx.service.scoring.score_settings import ScoreSettings

IMAGE_ERROR = "image_error"  # the output column of --on-image-error title-only


def cache_dir(s: ScoreSettings) -> str | None:
    """"" (the default folder), a folder, or None (no cache)."""
    if s.image_cache is None:
        return ""
    return None if s.image_cache.lower() == "none" else s.image_cache


def image_reader(s: ScoreSettings, catalog: str | Path) -> ImageReader:
    roots = s.image_root.split(os.pathsep) if s.image_root else ()
    local = None if is_remote(str(catalog)) else catalog
    policy = FetchPolicy(connect_timeout_s=min(5.0, s.fetch_timeout_s), read_timeout_s=s.fetch_timeout_s,
                         deadline_s=3 * s.fetch_timeout_s, retries=s.fetch_retries, per_host=s.fetch_per_host)
    return ImageReader(ImageLimits.of(s.max_image_bytes, roots, local), policy, cache_dir(s),
                       int(s.image_cache_max_gb * 1024**3))


def columns(s: ScoreSettings) -> dict[str, str]:
    return parse_columns(s.columns)


def image_name(ref: ImageRef | None) -> str | None:
    """How an image is named in side files: its path or URL (bytes have no name)."""
    return None if ref is None or isinstance(ref, bytes) else str(ref)


def failure(e: FetchError) -> dict:
    """A fetch that failed, as a row carries it: message, URL, HTTP status, tries."""
    return {"reason": str(e), **e.detail()}

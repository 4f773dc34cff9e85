"""The local cache of fetched images: keyed by URL, validated by ETag or Last-Modified, bounded in size.

- Location: `ATTRX_CACHE_DIR/images`, else `$XDG_CACHE_HOME/attrx/images`, else
  `~/.cache/attrx/images` (the conventions of the TensorRT cache); `--image-cache DIR` or `none`.
- An entry is a body file and a small JSON beside it (the URL, the validators, until when it is
  fresh), each written to a temporary name and renamed, so a killed run leaves whole entries or none.
- Fresh entries (the server's `Cache-Control: max-age`, or `Expires`) are used without a request;
  stale ones are revalidated with `If-None-Match` / `If-Modified-Since` (a 304 costs no body).
  `no-store` is honoured.
- Over `max_bytes`, the least recently used entries go until the cache is at 90% of the bound.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MAX_BYTES = 5 * 1024**3
_MAX_AGE = re.compile(r"max-age\s*=\s*(\d+)")


def default_cache_dir() -> Path:
    env, xdg = os.environ.get("ATTRX_CACHE_DIR"), os.environ.get("XDG_CACHE_HOME")
    base = Path(env) if env else (Path(xdg) / "attrx" if xdg else Path.home() / ".cache" / "attrx")
    return base / "images"


def freshness(headers) -> float | None:
    """Until when (epoch seconds) a response may be used without asking again; None: ask each time.
    `no-store` answers 0 (never kept)."""
    cc = (headers.get("Cache-Control") or "").lower()
    if "no-store" in cc:
        return 0.0
    if "no-cache" in cc:
        return None
    m = _MAX_AGE.search(cc)
    if m:
        return time.time() + int(m.group(1))
    expires = headers.get("Expires")
    if expires:
        try:
            return email.utils.parsedate_to_datetime(expires).timestamp()
        except (TypeError, ValueError):
            return None
    return None


@dataclass
class CacheEntry:
    body: Path
    etag: str | None
    last_modified: str | None
    fresh_until: float | None

    @property
    def validator(self) -> str | None:
        return self.etag or self.last_modified

    def fresh(self) -> bool:
        return self.fresh_until is not None and time.time() < self.fresh_until

    def read(self) -> bytes:
        os.utime(self.body)  # recently used: evicted last
        return self.body.read_bytes()

    def conditional(self) -> dict[str, str]:
        h = {}
        if self.etag:
            h["If-None-Match"] = self.etag
        if self.last_modified:
            h["If-Modified-Since"] = self.last_modified
        return h


class DiskCache:
    def __init__(self, root: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES):
        self.root, self.max_bytes = Path(root), max_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._size: int | None = None  # counted on the first write

    def _paths(self, url: str) -> tuple[Path, Path]:
        key = hashlib.sha256(url.encode()).hexdigest()
        folder = self.root / key[:2]
        return folder / f"{key}.bin", folder / f"{key}.json"

    def get(self, url: str) -> CacheEntry | None:
        body, meta = self._paths(url)
        try:
            m = json.loads(meta.read_text())
        except (OSError, ValueError):
            return None
        if m.get("url") != url or not body.is_file() or body.stat().st_size != m.get("size"):
            return None
        return CacheEntry(body, m.get("etag"), m.get("last_modified"), m.get("fresh_until"))

    def put(self, url: str, data: bytes, etag: str | None, last_modified: str | None,
            fresh_until: float | None) -> None:
        if fresh_until == 0.0 or len(data) > self.max_bytes // 10:
            return  # no-store, or one image would crowd out the rest
        body, meta = self._paths(url)
        body.parent.mkdir(exist_ok=True)
        old = body.stat().st_size if body.is_file() else 0
        _write_atomically(body, data)
        _write_atomically(meta, json.dumps({"url": url, "etag": etag, "last_modified": last_modified,
                                            "fresh_until": fresh_until, "size": len(data)}).encode())
        with self._lock:
            if self._size is None:
                self._size = self._count()
            else:
                self._size += len(data) - old
            if self._size > self.max_bytes:
                self._evict()

    def touch(self, url: str, fresh_until: float | None) -> None:
        """A 304: the entry is good; keep the new freshness."""
        body, meta = self._paths(url)
        try:
            m = json.loads(meta.read_text())
        except (OSError, ValueError):
            return
        m["fresh_until"] = fresh_until
        _write_atomically(meta, json.dumps(m).encode())

    def _count(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*/*.bin"))

    def _evict(self) -> None:
        bodies = sorted(self.root.glob("*/*.bin"), key=lambda p: p.stat().st_mtime)
        target = int(self.max_bytes * 0.9)
        for body in bodies:
            if self._size <= target:
                break
            size = body.stat().st_size
            for p in (body.with_suffix(".json"), body):
                p.unlink(missing_ok=True)
            self._size -= size


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)

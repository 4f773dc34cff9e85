"""The local cache of fetched images: keyed by URL, validated by ETag or Last-Modified, bounded in size.

- Location: `ATTRX_CACHE_DIR/images`, else `$XDG_CACHE_HOME/attrx/images`, else
  `~/.cache/attrx/images` (the conventions of the TensorRT cache); `--image-cache DIR` or `none`.
- An entry is one file: a JSON header line (the URL, the validators, until when it is fresh) and
  the body, written to a temporary name and renamed, so a killed run leaves whole entries or none.
- Fresh entries (the server's `Cache-Control: max-age`, or `Expires`) are used without a request;
  stale ones are revalidated with `If-None-Match` / `If-Modified-Since` (a 304 costs no body).
  `no-store` is honoured.
- Over `max_bytes`, the oldest-written entries go until the cache is at 90% of the bound.
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
    path: Path
    offset: int  # where the body starts, after the header line
    etag: str | None
    last_modified: str | None
    fresh_until: float | None

    @property
    def validator(self) -> str | None:
        return self.etag or self.last_modified

    def fresh(self) -> bool:
        return self.fresh_until is not None and time.time() < self.fresh_until

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read()

    def conditional(self) -> dict[str, str]:
        h = {}
        if self.etag:
            h["If-None-Match"] = self.etag
        if self.last_modified:
            h["If-Modified-Since"] = self.last_modified
        return h


class DiskCache:
    """One file per URL: a JSON header line (URL, validators, freshness, size), then the body; written
    to a temporary name and renamed. One file, not two, because the profile of a 3,000-image run put
    the cache's system calls (a second file, its rename, folder checks) at a third of its CPU."""

    def __init__(self, root: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES):
        self.root, self.max_bytes = Path(root), max_bytes
        for i in range(256):
            (self.root / f"{i:02x}").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._size: int | None = None  # counted on the first write

    def _path(self, url: str) -> Path:
        key = hashlib.sha256(url.encode()).hexdigest()
        return self.root / key[:2] / key

    def get(self, url: str) -> CacheEntry | None:
        path = self._path(url)
        try:
            with open(path, "rb") as f:
                head = f.readline(64 * 1024)
                m = json.loads(head)
                size = os.fstat(f.fileno()).st_size - len(head)
        except (OSError, ValueError):
            return None
        if m.get("url") != url or size != m.get("size"):
            return None
        return CacheEntry(path, len(head), m.get("etag"), m.get("last_modified"), m.get("fresh_until"))

    def put(self, url: str, data: bytes, etag: str | None, last_modified: str | None,
            fresh_until: float | None) -> None:
        if fresh_until == 0.0 or len(data) > self.max_bytes // 10:
            return  # no-store, or one image would crowd out the rest
        path = self._path(url)
        head = json.dumps({"url": url, "etag": etag, "last_modified": last_modified, "fresh_until": fresh_until,
                           "size": len(data)}).encode() + b"\n"
        _write_atomically(path, head + data)
        with self._lock:
            self._size = self._count() if self._size is None else self._size + len(head) + len(data)
            if self._size > self.max_bytes:
                self._evict()

    def touch(self, url: str, fresh_until: float | None) -> None:
        """A 304: the entry is good. Rewritten only when the server gave a new freshness to keep."""
        entry = self.get(url)
        if entry is not None and fresh_until:
            self.put(url, entry.read(), entry.etag, entry.last_modified, fresh_until)

    def _count(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("??/*") if not p.name.startswith("."))

    def _evict(self) -> None:
        """The oldest-written entries go until the cache is at 90% of its bound."""
        self._size = self._count()  # exact again: overwritten entries were counted twice
        files = sorted((p for p in self.root.glob("??/*") if not p.name.startswith(".")),
                       key=lambda p: p.stat().st_mtime)
        target = int(self.max_bytes * 0.9)
        for path in files:
            if self._size <= target:
                break
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            self._size -= size


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)

"""Fetching one image over HTTP(S) or from an object store, surviving the internet.

- Timeouts for connecting and for each read, and a deadline for the whole body, so a server that
  drips a byte a second cannot hold a row for ever.
- A maximum size, checked from `Content-Length` before the body and enforced while reading it.
- Redirects followed by hand, at most `max_redirects`, each target checked by the `guard` the
  caller gives (the HTTP server's image_url checks every hop against its allow-list).
- Retries with exponential backoff and full jitter on timeouts, connection errors, 429 and 5xx,
  honouring `Retry-After` (seconds or an HTTP date, capped). Other 4xx are answered at once.
- A body served as `text/*` is an error page, not an image.

HTTP goes through urllib3 (threads: the prefetcher in `attrx.service.catalog.prefetch` runs
many fetches at once); object stores (`s3://`, `gs://`, `az://`, ...) through fsspec. Both come
with `pip install 'attrx[remote]'`.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from attrx.service.catalog.http_cache import CacheEntry, DiskCache, freshness
from attrx.service.catalog.images import ImageReadError

REMOTE_EXTRA = "pip install 'attrx[remote]'"
HTTP_SCHEMES = ("http", "https")
TRANSIENT_STATUS = frozenset({408, 425, 429})


@dataclass(frozen=True)
class FetchPolicy:
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 20.0
    deadline_s: float = 60.0  # one try, headers to last byte
    max_bytes: int = 50 * 1024 * 1024
    retries: int = 4  # tries after the first
    backoff_s: float = 0.25
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 30.0
    per_host: int = 64  # requests in flight to one host
    max_redirects: int = 5


class FetchError(ImageReadError):
    """An image that could not be had: its URL, the HTTP status (or None), the tries made, and
    whether it was transient (a later run may get it) or not."""

    def __init__(self, url: str, message: str, *, status: int | None = None, tries: int = 1,
                 transient: bool = False, reason: str = "bad_image"):
        super().__init__(reason, message)
        self.url, self.status, self.tries, self.transient = url, status, tries, transient

    def detail(self) -> dict:
        return {"url": self.url, "status": self.status, "tries": self.tries}


class _Retry(Exception):
    def __init__(self, message: str, status: int | None = None, wait_s: float | None = None):
        super().__init__(message)
        self.status, self.wait_s = status, wait_s


@dataclass
class Fetched:
    data: bytes
    source: str  # "network", "cache" (fresh, no request) or "revalidated" (304)
    tries: int = 1
    validator: str | None = None  # ETag or Last-Modified: the image's identity beside its URL


_MODULES: dict[str, object] = {}
_IMPORTING = threading.Lock()


def need(module: str):
    """Import an optional dependency of remote catalogs, or say which extra brings it. Kept once
    imported: importlib takes a module lock on each call, which 128 fetching threads contend for."""
    got = _MODULES.get(module)
    if got is not None:
        return got
    import importlib

    with _IMPORTING:  # the first wave of threads: one imports, the others wait once
        try:
            got = _MODULES[module] = importlib.import_module(module)
        except ImportError as e:
            raise FetchError("", f"remote images and catalogs need {module}: {REMOTE_EXTRA}") from e
    return got


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def backoff(policy: FetchPolicy, attempt: int, hint: float | None = None) -> float:
    """Full jitter over an exponential ceiling; a server's Retry-After (capped) is a floor."""
    wait = random.uniform(0, min(policy.max_backoff_s, policy.backoff_s * 2 ** attempt))
    return max(wait, min(hint, policy.max_retry_after_s)) if hint is not None else wait


@dataclass
class Fetcher:
    """Fetches images by URL through a disk cache (`cache=None`: none). Thread-safe; one per process."""
    policy: FetchPolicy = field(default_factory=FetchPolicy)
    cache: DiskCache | None = None
    # checks each URL before it is requested (each redirect's too): raises FetchError for one that must not
    # be fetched, or answers the address to connect to (pinned: a second DNS answer cannot differ)
    guard: Callable[[str], str | None] | None = None
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self):
        self._hosts: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()
        self._http = None
        self._checked: set[str] = set()  # validated in this run: not asked again

    def get(self, url: str) -> Fetched:
        scheme = urlsplit(url).scheme.lower()
        if self.guard is not None and scheme not in HTTP_SCHEMES:
            self.guard(url)  # a guarded fetcher reads nothing but what its guard passes: never file:// or a store
            raise FetchError(url, f"{scheme}:// is not fetched here", reason="bad_image_url")
        entry = self.cache.get(url) if self.cache is not None else None
        if entry is not None and (entry.fresh() or url in self._checked):
            return Fetched(entry.read(), "cache", 0, entry.validator)
        if scheme in HTTP_SCHEMES:
            got = self._retrying(url, lambda: self._http_once(url, entry))
        else:
            got = self._retrying(url, lambda: self._store_once(url, entry))
        self._checked.add(url)
        return got

    # -- retries -----------------------------------------------------------------------------
    def _retrying(self, url: str, once: Callable[[], Fetched]) -> Fetched:
        tries = 0
        while True:
            tries += 1
            try:
                with self._slot(url):
                    got = once()
                got.tries = tries
                return got
            except _Retry as r:
                if tries > self.policy.retries:
                    raise FetchError(url, f"{r} (gave up after {tries} tries)", status=r.status,
                                     tries=tries, transient=True) from None
                self.sleep(backoff(self.policy, tries - 1, r.wait_s))
            except FetchError as e:
                e.tries = tries
                raise

    def _slot(self, url: str) -> threading.BoundedSemaphore:
        host = urlsplit(url).netloc
        with self._lock:
            sem = self._hosts.get(host)
            if sem is None:
                sem = self._hosts[host] = threading.BoundedSemaphore(self.policy.per_host)
        return sem

    # -- HTTP --------------------------------------------------------------------------------
    def _pool(self):
        with self._lock:
            if self._http is None:
                urllib3 = need("urllib3")
                timeout = urllib3.Timeout(connect=self.policy.connect_timeout_s, read=self.policy.read_timeout_s)
                self._http = urllib3.PoolManager(num_pools=64, maxsize=self.policy.per_host, timeout=timeout,
                                                 retries=False, headers={"User-Agent": "attrx"})
            return self._http

    def _http_once(self, url: str, entry: CacheEntry | None) -> Fetched:
        urllib3 = need("urllib3")
        headers = entry.conditional() if entry is not None else {}
        target = url
        for _ in range(self.policy.max_redirects + 1):
            pin = self.guard(target) if self.guard is not None else None
            try:
                r = self._request(target, headers, pin)
            except (urllib3.exceptions.TimeoutError, urllib3.exceptions.ProtocolError,
                    urllib3.exceptions.NewConnectionError, urllib3.exceptions.SSLError) as e:
                raise _Retry(f"{type(e).__name__}: {e}") from None
            except urllib3.exceptions.LocationValueError as e:
                raise FetchError(url, f"not a fetchable URL ({e})") from None
            if r.status in (301, 302, 303, 307, 308) and r.headers.get("Location"):
                r.close()
                target = urljoin(target, r.headers["Location"])
                continue
            try:
                got = self._answer(url, r, entry)
            except BaseException:
                r.close()  # a body not read to its end: the connection never goes back to the pool
                raise
            r.release_conn()
            return got
        raise FetchError(url, f"more than {self.policy.max_redirects} redirects")

    def _request(self, target: str, headers: dict, pin: str | None):
        if pin is None:
            return self._pool().request("GET", target, headers=headers, preload_content=False, redirect=False)
        u = urlsplit(target)
        https = u.scheme.lower() == "https"
        kw = {"server_hostname": u.hostname, "assert_hostname": u.hostname} if https else None
        pool = self._pool().connection_from_host(pin, u.port or (443 if https else 80), u.scheme.lower(), kw)
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        return pool.urlopen("GET", path, headers={**headers, "Host": u.netloc.rsplit("@", 1)[-1]},
                            preload_content=False, redirect=False, retries=False)

    def _answer(self, url: str, r, entry: CacheEntry | None) -> Fetched:
        if r.status == 304 and entry is not None:
            fresh_until = freshness(r.headers)
            if self.cache is not None:
                self.cache.touch(url, fresh_until)
            return Fetched(entry.read(), "revalidated", validator=entry.validator)
        if r.status in TRANSIENT_STATUS or r.status >= 500:
            raise _Retry(f"HTTP {r.status}", r.status, retry_after(r.headers.get("Retry-After")))
        if r.status != 200:
            raise FetchError(url, f"HTTP {r.status}", status=r.status)
        kind = (r.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind.startswith("text/"):
            raise FetchError(url, f"served as {kind}, not an image", status=r.status)
        data = self._body(url, r)
        validator = r.headers.get("ETag") or r.headers.get("Last-Modified")
        if self.cache is not None:
            self.cache.put(url, data, r.headers.get("ETag"), r.headers.get("Last-Modified"), freshness(r.headers))
        return Fetched(data, "network", validator=validator)

    def _body(self, url: str, r) -> bytes:
        urllib3 = need("urllib3")
        limit = self.policy.max_bytes
        length = r.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > limit:
            raise FetchError(url, f"{int(length):,} bytes, over the limit of {limit:,}", status=r.status,
                             reason="too_large")
        end = time.monotonic() + self.policy.deadline_s
        parts, size = [], 0
        try:  # read1: whatever has arrived, so the deadline is checked while a server drips bytes
            while part := r.read1(64 * 1024):
                parts.append(part)
                size += len(part)
                if size > limit:
                    raise FetchError(url, f"over the limit of {limit:,} bytes", status=r.status, reason="too_large")
                if time.monotonic() > end:
                    raise _Retry(f"body not complete in {self.policy.deadline_s:g} s")
        except (urllib3.exceptions.TimeoutError, urllib3.exceptions.ProtocolError) as e:
            raise _Retry(f"body cut: {type(e).__name__}") from None
        return b"".join(parts)

    # -- object stores -----------------------------------------------------------------------
    def _store_once(self, url: str, entry: CacheEntry | None) -> Fetched:
        fsspec = need("fsspec")
        try:
            fs, path = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as e:
            raise FetchError(url, f"cannot open {url!r}: {e} ({REMOTE_EXTRA}; gs:// needs gcsfs, az:// adlfs)") from None
        try:
            info = fs.info(path)
            validator = str(info.get("ETag") or info.get("etag") or info.get("mtime") or "") or None
            if entry is not None and validator is not None and entry.validator == validator:
                return Fetched(entry.read(), "revalidated", validator=validator)
            size = info.get("size") or 0
            if size > self.policy.max_bytes:
                raise FetchError(url, f"{size:,} bytes, over the limit of {self.policy.max_bytes:,}", reason="too_large")
            data = fs.cat_file(path)
        except FileNotFoundError:
            raise FetchError(url, "not found", status=404) from None
        except PermissionError as e:
            raise FetchError(url, f"access denied ({e})", status=403) from None
        except (OSError, TimeoutError, ConnectionError) as e:
            raise _Retry(f"{type(e).__name__}: {e}") from None
        except FetchError:
            raise
        except Exception as e:  # the store's SDK: missing credentials, a bad bucket name, ...
            raise FetchError(url, f"{type(e).__name__}: {e}") from None
        if self.cache is not None:
            self.cache.put(url, data, validator, None, None)
        return Fetched(data, "network", validator=validator)

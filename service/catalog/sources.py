"""Where a catalog row's image comes from: the one image source contract of every command.

A row's `image` value is one of:
- a local path, relative to the catalog (its folder, or its URL's) or absolute; or a `file://` URL;
- an `http://` or `https://` URL;
- an object-store URL (`s3://`, `gs://`, `az://`, ... : any filesystem fsspec knows);
- in a Parquet catalog, the image's bytes in a binary `image` column.

`ImageReader.read(ref)` gives the bytes, or raises `ImageReadError` (a `FetchError` for remote
images: URL, HTTP status, tries). Local files are read by `attrx.service.catalog.images`;
remote ones through `attrx.service.catalog.fetch` and its cache. Object-store credentials come
from where each store's own SDK looks: environment, profiles, instance roles (docs/remote.md).

The catalog file itself may be a URL of the same kinds: it is copied into the cache folder
(`catalogs/`, named by the URL's hash) and read from there.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from attrx.service.catalog.fetch import REMOTE_EXTRA, Fetched, Fetcher, FetchError, FetchPolicy, need
from attrx.service.catalog.http_cache import DEFAULT_MAX_BYTES, DiskCache, default_cache_dir
from attrx.service.catalog.images import ImageLimits, read_image_file

ImageRef = Path | str | bytes  # a local file, a URL, or the image itself


def scheme(value: str) -> str | None:
    """The URL scheme of `value`, or None for a plain path (a Windows drive letter is no scheme)."""
    if "://" not in value:
        return None
    s = value.split("://", 1)[0].lower()
    return s if len(s) > 1 and s.replace("+", "").replace("-", "").replace(".", "").isalnum() else None


def is_remote(ref) -> bool:
    return isinstance(ref, str) and scheme(ref) not in (None, "file")


def resolve(value: str, base: str | Path) -> Path | str:
    """A catalog's image value as a local Path or a remote URL; relative to `base` (the catalog's
    folder, or its URL)."""
    s = scheme(value)
    if s == "file":
        return Path(unquote(urlsplit(value).path))
    if s is not None:
        return value
    if isinstance(base, str) and is_remote(base):
        return urljoin(base, value)
    p = Path(value)
    return p if p.is_absolute() else Path(base) / p


def describe(ref: ImageRef) -> str:
    return f"image bytes ({len(ref):,})" if isinstance(ref, bytes) else os.fspath(ref)


@dataclass
class ImageReader:
    """Reads images of every kind; one per process (the fetcher and its connections start on first use)."""
    limits: ImageLimits = field(default_factory=ImageLimits)
    policy: FetchPolicy = field(default_factory=FetchPolicy)
    cache_dir: str | None = ""  # "": the default folder; None: no cache
    cache_max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self):
        self._fetcher: Fetcher | None = None
        self._lock = threading.Lock()

    def __getstate__(self):  # connections and locks do not travel to other processes
        return {k: v for k, v in self.__dict__.items() if k not in ("_fetcher", "_lock")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.__post_init__()

    @property
    def fetcher(self) -> Fetcher:
        if self._fetcher is not None:  # the hot path: every fetch asks, no lock taken
            return self._fetcher
        with self._lock:  # one per reader, however many threads ask first
            return self._fetcher or self._make()

    def _make(self) -> Fetcher:
        cache = None
        if self.cache_dir is not None:
            cache = DiskCache(self.cache_dir or default_cache_dir(), self.cache_max_bytes)
        policy = self.policy
        if policy.max_bytes != self.limits.max_bytes:
            policy = FetchPolicy(**{**policy.__dict__, "max_bytes": self.limits.max_bytes})
        self._fetcher = Fetcher(policy, cache)
        return self._fetcher

    def fetch(self, ref: ImageRef) -> Fetched:
        """The bytes and where they came from ("file", "bytes", "network", "cache", "revalidated")."""
        if isinstance(ref, bytes):
            if len(ref) > self.limits.max_bytes:
                raise FetchError("", f"{describe(ref)}: over the limit of {self.limits.max_bytes:,}",
                                 reason="too_large")
            return Fetched(ref, "bytes")
        if is_remote(ref):
            return self.fetcher.get(str(ref))
        path = resolve(os.fspath(ref), Path.cwd()) if isinstance(ref, str) else ref
        return Fetched(read_image_file(path, self.limits), "file")

    def read(self, ref: ImageRef) -> bytes:
        return self.fetch(ref).data


def local_catalog(location: str | Path, cache_dir: str | None = "") -> tuple[Path, str | Path]:
    """(a local file holding the catalog, the base its relative image paths resolve against)."""
    if not (isinstance(location, str) and is_remote(location)):
        if isinstance(location, str) and scheme(location) == "file":
            location = resolve(location, Path.cwd())
        path = Path(location)
        return path, path.resolve().parent
    url = location
    folder = Path(cache_dir or default_cache_dir()).parent / "catalogs" if cache_dir is not None else None
    suffix = Path(urlsplit(url).path).suffix
    name = hashlib.sha256(url.encode()).hexdigest()[:24] + suffix
    if folder is None:
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="attrx-catalog-"))
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / name
    _copy_down(url, dest)
    return dest, urljoin(url, ".")


def _copy_down(url: str, dest: Path) -> None:
    fsspec = need("fsspec")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        with fsspec.open(url, "rb") as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        os.replace(tmp, dest)
    except FileNotFoundError as e:
        raise FetchError(url, f"catalog {url} does not exist or cannot be reached ({e})", status=404) from e
    except ImportError as e:
        raise FetchError(url, f"cannot read catalog {url}: {e} ({REMOTE_EXTRA})") from e
    except Exception as e:  # the store's SDK or the network: missing credentials, a refused connection, ...
        raise FetchError(url, f"cannot read catalog {url}: {type(e).__name__}: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)  # a copy cut short

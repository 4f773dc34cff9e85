"""Reading a catalog row's image file: every command reads images through here (`attrx score`
locally and on Ray, and the training and evaluation data), so each refuses the same things, with
the same reasons.

- Only regular files are read. A FIFO, a character or block device, a socket or a directory is a
  row error naming what it is (opening a FIFO blocks until a writer comes; a device can be endless).
- A file over `max_bytes` is a row error before a byte of it is read.
- With `roots`, a path (after resolving links) must lie inside one of those folders. The default
  is no confinement: a catalog is the operator's own file and commonly points at a shared image
  store by absolute path. Confine it (`attrx score --image-root DIR`, repeatable; the catalog's
  own folder is then allowed too) when catalogs come from people you do not trust with the
  machine's files.
- Time: reading a regular file does not block on its own, but a hung network mount can. The
  worker that reads is watched by its pool (`attrx.service.catalog.decode_pool`): one that holds
  a row past the time limit is killed, and the row retried once, then reported.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MAX_IMAGE_BYTES = 50 * 1024 * 1024

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    roots: tuple[Path, ...] = ()  # empty: any path

    @classmethod
    def of(cls, max_bytes: int | None, roots: Sequence[str | Path] = (), catalog: str | Path | None = None):
        folders = [Path(r) for r in roots]
        if folders and catalog is not None:
            folders.append(Path(catalog).parent)
        return cls(max_bytes or DEFAULT_MAX_IMAGE_BYTES, tuple(Path(os.path.realpath(f)) for f in folders))


class ImageReadError(ValueError):
    """An image file that is not read, with the reason a row error reports (`bad_image`, `too_large`)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def named(message: str, path: str | os.PathLike | None) -> str:
    """A decoder's message about an image it got as bytes ("image: ...") naming the file it came from."""
    if path is None or not message.startswith("image:"):
        return message
    return f"image {os.fspath(path)!r}{message[len('image'):]}"


def _kind(mode: int) -> str | None:
    return next((name for test, name in _KINDS if test(mode)), None)


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def read_image_file(path: str | os.PathLike, limits: ImageLimits = ImageLimits()) -> bytes:
    """The file's bytes, or ImageReadError naming why not (reason `bad_image` or `too_large`)."""
    what = f"image {os.fspath(path)!r}"
    real = Path(os.path.realpath(path))
    if limits.roots and not _inside(real, limits.roots):
        raise ImageReadError("bad_image", f"{what}: outside the folders images may be read from "
                                      f"({', '.join(map(str, limits.roots))})")
    try:
        st = os.stat(real)
    except OSError as e:
        raise ImageReadError("bad_image", f"{what}: cannot be read ({e.strerror or e})") from e
    kind = _kind(st.st_mode)
    if kind is not None or not stat.S_ISREG(st.st_mode):
        raise ImageReadError("bad_image", f"{what}: is {kind or 'not a regular file'}; only regular files are read")
    if st.st_size > limits.max_bytes:
        raise ImageReadError("too_large", f"{what}: {st.st_size:,} bytes, over the limit of {limits.max_bytes:,}")
    try:
        # O_NONBLOCK: had the path become a FIFO since the check, opening it does not wait for a writer
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise ImageReadError("bad_image", f"{what}: cannot be read ({e.strerror or e})") from e
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ImageReadError("bad_image", f"{what}: is not a regular file; only regular files are read")
        data = f.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise ImageReadError("too_large", f"{what}: over the limit of {limits.max_bytes:,} bytes")
    return data

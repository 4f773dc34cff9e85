"""Helpers for the processes attrx starts (scoring workers, the server's front-ends and engine)."""

from __future__ import annotations

import os
import signal
import sys


def die_with_parent() -> None:
    """Linux: the kernel kills this process when its parent goes away, so no child (a scoring
    worker, a server process) outlives an interrupted or killed parent."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(0)

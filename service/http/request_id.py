"""`X-Request-ID`: every answer carries one, taken from the request or made here, and every log line
about the request names it.

- An id the client sends is kept when it is 1-128 characters of letters, digits and `._:-`
  (anything else would let a client write into the server's logs); otherwise one is made (32 hex).
- The front-end keeps it in a context variable for the request's task: `RequestIdFilter` adds it to
  log records (`%(request_id)s`), uvicorn's access log included.
- The engine process gets it with the product, in the slot's tag (`attrx.service.engine.shm`), and
  names it in its own lines about that product.
"""

from __future__ import annotations

import contextvars
import logging
import re
import uuid

HEADER = b"x-request-id"
_OK = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
current: contextvars.ContextVar[str] = contextvars.ContextVar("attrx_request_id", default="-")


def new_id() -> str:
    return uuid.uuid4().hex


def from_headers(headers) -> str:
    """The request's id: its valid X-Request-ID header, else a new one. headers: (name, value) byte pairs."""
    for name, value in headers:
        if name.lower() == HEADER:
            return value.decode("ascii") if _OK.fullmatch(value) else new_id()
    return new_id()


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record: the request being handled, or '-'."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current.get()
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Put the filter on the handlers of the root logger (and `logger`'s), and their format to name the id."""
    for lg in {logging.getLogger(), logger or logging.getLogger()}:
        for h in lg.handlers:
            if not any(isinstance(f, RequestIdFilter) for f in h.filters):
                h.addFilter(RequestIdFilter())


def uvicorn_log_config() -> dict:
    """uvicorn's own logging configuration, with the request id in its lines (the access log's too)."""
    from copy import deepcopy

    from uvicorn.config import LOGGING_CONFIG

    cfg = deepcopy(LOGGING_CONFIG)
    cfg["filters"] = {"request_id": {"()": RequestIdFilter}}
    for h in cfg["handlers"].values():
        h["filters"] = ["request_id"]
    cfg["formatters"]["default"]["fmt"] = "%(levelprefix)s [%(request_id)s] %(message)s"
    cfg["formatters"]["access"]["fmt"] = \
        '%(levelprefix)s [%(request_id)s] %(client_addr)s - "%(request_line)s" %(status_code)s'
    return cfg

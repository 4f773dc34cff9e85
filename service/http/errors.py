"""The service's error answers: one JSON shape, {"error": {"reason": ..., "message": ...}}."""

from __future__ import annotations

import json
from http import HTTPStatus

from pydantic import ValidationError

from attrx.service.contract.preprocess import ImageError
from attrx.service.inference.predictor import InputError


class ApiError(Exception):
    """An answer other than 200. `counted`: the rejection metric was already incremented."""

    def __init__(self, status: int, reason: str, message: str, headers: dict | None = None, counted: bool = False):
        super().__init__(message)
        self.status, self.reason, self.message, self.headers = status, reason, message, headers
        self.counted = counted


class TooLarge(ApiError):
    def __init__(self, limit: int):
        super().__init__(413, "too_large", f"request body is over the limit of {limit:,} bytes")


class ClientGone(Exception):
    """The client hung up: there is nobody to answer."""


def error_body(reason: str, message: str) -> dict:
    return {"error": {"reason": reason, "message": message}}


def raw_error(status: int, reason: str, message: str, *, close: bool, retry_after: int | None = None) -> bytes:
    """A whole HTTP/1.1 error answer as bytes, for the protocol to write to a socket itself."""
    body = json.dumps(error_body(reason, message)).encode()
    head = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
    head += f"content-length: {len(body)}\r\n"
    if retry_after is not None:
        head += f"retry-after: {retry_after}\r\n"
    if close:
        head += "connection: close\r\n"
    return (head + "\r\n").encode() + body


def input_error(e: Exception) -> ApiError:
    if isinstance(e, ImageError):
        return ApiError({"too_large": 413, "unsupported_image": 415}.get(e.reason, 422), e.reason, str(e))
    if isinstance(e, InputError):
        return ApiError(422, e.reason, str(e))
    raise e


def explain(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'body'}: {err['msg']}" for err in e.errors())


def retry_later(status: int, reason: str, message: str, seconds: int = 1) -> ApiError:
    return ApiError(status, reason, message, {"Retry-After": str(seconds)})

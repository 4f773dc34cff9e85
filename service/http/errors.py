"""The service's error answers as exceptions; their bodies are problem details (attrx.service.http.problems)."""

from __future__ import annotations

from http import HTTPStatus

from pydantic import ValidationError

from attrx.service.contract.preprocess import ImageError
from attrx.service.http.problems import MEDIA_TYPE, problem_bytes
from attrx.service.http.request_id import current
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


def raw_error(status: int, reason: str, message: str, *, close: bool, request_id: str,
              retry_after: int | None = None) -> bytes:
    """A whole HTTP/1.1 error answer as bytes, for the protocol to write to a socket itself."""
    body = problem_bytes(status, reason, message, request_id)
    head = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: {MEDIA_TYPE}\r\n"
    head += f"content-length: {len(body)}\r\nx-request-id: {request_id}\r\n"
    if retry_after is not None:
        head += f"retry-after: {retry_after}\r\n"
    if close:
        head += "connection: close\r\n"
    return (head + "\r\n").encode() + body


def problem_response(status: int, reason: str, message: str, headers: dict | None = None):
    """An error answer from a route or a handler (the request id from the request's context)."""
    from starlette.responses import Response

    return Response(problem_bytes(status, reason, message, current.get()), status_code=status, headers=headers,
                    media_type=MEDIA_TYPE)


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

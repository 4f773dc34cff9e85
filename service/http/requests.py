"""Reading a request into products: multipart or JSON for one, a JSON list for a batch.

Each parser checks types strictly and raises ApiError naming what is wrong, so a malformed request
is a 4xx, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass

from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request

from attrx.service.http.errors import ApiError, explain
from attrx.service.http.schemas import ExtractRequest

WHOLE = re.compile(r"[0-9]{1,3}", re.ASCII)
DECIMAL = re.compile(r"[0-9]{1,3}(\.[0-9]{0,12})?|\.[0-9]{1,12}", re.ASCII)


@dataclass
class ProductRequest:
    title: str | None
    image: bytes | None
    min_precision: float | None
    top_k: int
    id: str | None = None
    image_url: str | None = None  # fetched into `image` before decoding (attrx.service.http.image_url)


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def decode_image_b64(data: str | None) -> bytes | None:
    if data is None or data == "":
        return None
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "bad_image", "image_base64 is not valid base64") from None


def from_model(req: ExtractRequest) -> ProductRequest:
    if req.image_base64 and req.image_url:
        raise ApiError(422, "bad_request", "send the image as image_base64 or as image_url, not both")
    return ProductRequest(req.title, decode_image_b64(req.image_base64), req.min_precision, req.top_k, req.id,
                          req.image_url or None)


async def read_one(request: Request) -> ProductRequest:
    ctype = content_type(request)
    if ctype == "multipart/form-data":
        return await _read_multipart(request)
    if ctype == "application/json":
        try:
            return from_model(ExtractRequest.model_validate_json(await request.body()))
        except ValidationError as e:
            if any(err["type"] == "json_invalid" for err in e.errors()):
                raise ApiError(400, "malformed_json", f"body is not valid JSON: {explain(e)}") from None
            raise ApiError(422, "bad_request", explain(e)) from None
    raise ApiError(415, "unsupported_media_type",
                   f"content type {ctype or '(none)'!r} is not accepted; send multipart/form-data or application/json")


def _text_field(form, name: str) -> str | None:
    value = form.get(name)
    if isinstance(value, UploadFile):
        raise ApiError(422, "bad_request", f"{name} must be a text field, not a file part")
    return value


async def _read_multipart(request: Request) -> ProductRequest:
    try:
        form = await request.form(max_files=1, max_fields=8)
    except ApiError:  # the body limit, hit while streaming the parts
        raise
    except Exception as e:  # malformed multipart
        raise ApiError(422, "bad_request", f"malformed multipart body ({e or type(e).__name__})") from None
    title = _text_field(form, "title")
    upload = form.get("image")
    if upload is not None and not isinstance(upload, UploadFile):
        raise ApiError(422, "bad_request", "image must be a file part (curl -F image=@photo.jpg), not a text field")
    image = await upload.read() if upload is not None else None
    mp, tk = _text_field(form, "min_precision"), _text_field(form, "top_k")
    # strict: ASCII digits only (str.isdigit and float() take any script's digits, and int() refuses
    # past 4300 digits with an error of its own), and a few of them
    if mp not in (None, "") and not DECIMAL.fullmatch(mp.strip()):
        raise ApiError(422, "bad_option", f"min_precision must be a decimal number such as 0.9, got {mp[:40]!r}")
    if tk not in (None, "") and not WHOLE.fullmatch(tk.strip()):
        raise ApiError(422, "bad_option", f"top_k must be a whole number of at most 3 digits, got {tk[:40]!r}")
    min_precision = float(mp) if mp not in (None, "") else None
    top_k = int(tk) if tk not in (None, "") else 1
    return ProductRequest(title, image, min_precision, top_k)


def check_options(p: ProductRequest) -> None:
    if not 1 <= p.top_k <= 50:
        raise ApiError(422, "bad_option", "top_k must be between 1 and 50")
    if p.min_precision is not None and not 0 < p.min_precision <= 1:
        raise ApiError(422, "bad_option", "min_precision must be in (0, 1]")


async def read_batch(request: Request, max_items: int) -> list:
    ctype = content_type(request)
    if ctype != "application/json":
        raise ApiError(415, "unsupported_media_type", f"content type {ctype or '(none)'!r}: send application/json")
    try:
        body = json.loads(await request.body())
    except (ValueError, RecursionError):
        raise ApiError(400, "malformed_json", "body is not valid JSON (or nests too deeply)") from None
    if not isinstance(body, list):
        raise ApiError(422, "bad_request", "body must be a JSON list of products")
    if len(body) > max_items:
        raise ApiError(413, "too_many_items", f"{len(body)} products; the limit is {max_items} a call")
    return body


def item_id(raw) -> str | None:
    """The id to echo for a batch item: only ever a string (or null), as the schema says."""
    pid = raw.get("id") if isinstance(raw, dict) else None
    return pid if isinstance(pid, str) else None

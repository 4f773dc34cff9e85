"""Error answers as RFC 9457 problem details (`application/problem+json`), one registry of reasons.

Every error answer of the server has this body:

    {"type": "/problems/too_large", "title": "Request too large", "status": 413,
     "detail": "request body is over the limit of 10,485,760 bytes",
     "instance": "urn:attrx:request:5f0c...", "reason": "too_large", "request_id": "5f0c...",
     "error": {"reason": "too_large", "message": "..."}}

- `type` is a URI reference, relative to the server: `GET /problems/{reason}` answers what the reason
  means (its title, statuses and explanation, from REASONS below; docs/reference/errors.md is
  generated from the same table).
- `reason` (attrx's short code) and `request_id` (the answer's `X-Request-ID`) are extension members.
- `error` is the shape before problem details, kept for one release so that clients reading
  `body["error"]["reason"]` keep working; it goes in the release after.
"""

from __future__ import annotations

import json
from http import HTTPStatus

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "/problems/"

# reason -> (title, the statuses it comes with, what it means and what to do)
REASONS: dict[str, tuple[str, tuple[int, ...], str]] = {
    "bad_request": ("Malformed request", (422,), "The body does not match the request schema (a missing or "
                    "unknown field, a wrong type, a multipart part of the wrong kind). `detail` names the field."),
    "malformed_json": ("Malformed JSON", (400,), "The body is not valid JSON (or nests too deeply)."),
    "bad_option": ("Bad option", (422,), "`min_precision` or `top_k` is out of range, or `min_precision` is not "
                   "one of the bundle's calibrated targets (`GET /v1/model` lists them)."),
    "empty": ("Empty product", (422,), "A product needs a title or an image; neither was given."),
    "title_too_long": ("Title too long", (422,), "The title is longer than the server's `max_title_chars`."),
    "bad_image": ("Image cannot be read", (422,), "The image cannot be decoded: corrupt, truncated, not an "
                  "image, an empty size, an absurd aspect ratio, or invalid base64."),
    "unsupported_image": ("Image format not accepted", (415,), "A decodable image of a format the server does "
                          "not accept (`detail` lists the accepted ones)."),
    "unsupported_media_type": ("Content type not accepted", (415,), "Send `multipart/form-data` or "
                               "`application/json` to /v1/extract, `application/json` to /v1/extract/batch."),
    "too_large": ("Request too large", (413,), "The body is over `max_body_bytes` (by Content-Length or counted "
                  "while streaming, chunked included), or the image declares more pixels than `max_image_pixels` "
                  "(decided before decoding)."),
    "too_many_items": ("Too many products", (413,), "A /v1/extract/batch call holds more products than "
                       "`max_request_items` (`GET /v1/model` lists it under `limits`): split the list "
                       "(`attrx.client` does)."),
    "unauthorized": ("Missing or wrong key", (401,), "Send `Authorization: Bearer <key>`."),
    "admin_off": ("Admin endpoints off", (403,), "The endpoint changes state and the server has no admin key."),
    "admin_only": ("Admin key needed", (403,), "The inference key cannot change state: send the admin key."),
    "image_url_off": ("Image URLs off", (403,), "This server does not fetch images by URL (`--image-url-allow`)."),
    "image_url_not_allowed": ("Image URL not allowed", (403,), "The URL's host is not on the allow-list."),
    "image_url_private": ("Image URL private", (403,), "The URL resolves to a private or local address."),
    "bad_image_url": ("Bad image URL", (422,), "The image URL is not an http(s) URL the server can fetch."),
    "image_too_large": ("Fetched image too large", (413,), "The image behind the URL is over the size limit."),
    "image_fetch_failed": ("Image fetch failed", (502,), "The image URL's server answered with an error."),
    "image_fetch_timeout": ("Image fetch timed out", (504,), "The image was not fetched within the deadline."),
    "image_unavailable": ("Image unavailable", (422,), "The image URL did not give an image."),
    "overloaded": ("Overloaded", (429,), "`max_in_flight` products are already admitted; answered at once, "
                   "before the body is read: retry after `Retry-After` seconds."),
    "queue_full": ("Queue full", (429,), "The inference queue is full: retry after `Retry-After` seconds."),
    "timeout": ("Deadline passed", (504,), "The deadline (`request_timeout_ms`, "
                "counted from arrival, decoding included) passed before the work started (it is never run), or "
                "work already running did not finish within 0.5 s past it."),
    "draining": ("Shutting down", (503,), "The server is draining: retry (another replica answers)."),
    "not_ready": ("Not ready", (503,), "The model is loading or warming up: retry after `Retry-After` seconds."),
    "stalled": ("Stalled", (503,), "The inference process (or this "
                "front-end) has made no progress past the stall bound: refused at once rather than queued behind a "
                "stall, with `Retry-After`."),
    "unavailable": ("Unavailable", (503,), "The inference process did not take the request: retry."),
    "too_many_connections": ("Too many connections", (503,), "The server holds `max_connections`: retry."),
    "slow_client": ("Request too slow", (408,), "The headers did not arrive within "
                    "`header_timeout_s`, or the body within `body_timeout_s`; the connection is closed."),
    "batch_failed": ("Model run failed", (500,), "The model run of the batch this product was in failed; the "
                     "server's log has the request id."),
    "drift_off": ("Drift telemetry off", (404,), "Drift telemetry is off (`--drift-window 0`)."),
    "empty_window": ("Drift window empty", (409,), "No products in the drift window yet."),
    "not_written": ("Not written", (500,), "The drift reference could not be written."),
    "not_found": ("Not found", (404,), "No such path, or no such problem type."),
    "method_not_allowed": ("Method not allowed", (405,), "The path does not take this method."),
}


def problem_type(reason: str) -> str:
    return TYPE_PREFIX + reason if reason in REASONS else "about:blank"


def problem(status: int, reason: str, detail: str, request_id: str | None) -> dict:
    """The body of an error answer."""
    title = REASONS[reason][0] if reason in REASONS else HTTPStatus(status).phrase
    body = {"type": problem_type(reason), "title": title, "status": status, "detail": detail}
    if request_id:
        body["instance"] = f"urn:attrx:request:{request_id}"
        body["request_id"] = request_id
    body["reason"] = reason
    body["error"] = {"reason": reason, "message": detail}  # the shape before, for one release
    return body


def problem_bytes(status: int, reason: str, detail: str, request_id: str | None) -> bytes:
    return json.dumps(problem(status, reason, detail, request_id)).encode()


def describe(reason: str) -> dict | None:
    """What `GET /problems/{reason}` answers."""
    if reason not in REASONS:
        return None
    title, statuses, text = REASONS[reason]
    return {"type": TYPE_PREFIX + reason, "reason": reason, "title": title, "statuses": list(statuses),
            "description": text}

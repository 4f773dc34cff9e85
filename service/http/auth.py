"""Who may call what: the inference key reaches /v1/* (predictions, the model, drift readings); the admin
key, a different one, reaches only the endpoints that change state (the drift baseline). Without an
admin key those are off. Health and metrics stay open: probes and scrapers carry no key.

Both keys come from settings (`attrx.service.settings`), are compared in constant time, and are never
written anywhere: not in logs, not in errors."""

from __future__ import annotations

import hmac

from fastapi import Request

from attrx.service.http.errors import ApiError
from attrx.service.settings import ServeSettings

BEARER = {"WWW-Authenticate": "Bearer"}


def bearer_token(authorization: str) -> str:
    """The token of an `Authorization: Bearer <token>` header value ('' for any other)."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def bearer(request: Request) -> str:
    return bearer_token(request.headers.get("authorization", ""))


def same(token: str, key: str) -> bool:
    return bool(token) and hmac.compare_digest(token.encode(), key.encode())


def inference_guard(settings: ServeSettings):
    """The dependency of /v1/* reads, or None when the server runs without a key (--no-auth or loopback)."""
    key = settings.key()
    if key is None:  # resolving a dependency costs every request: none at all without a key
        return None

    async def require_key(request: Request) -> None:
        if not same(bearer(request), key):
            raise ApiError(401, "unauthorized", "missing or wrong API key (send 'Authorization: Bearer <key>')", BEARER)

    return require_key


def admin_guard(settings: ServeSettings):
    """The dependency of the endpoints that change state: the admin key, and nothing else."""
    key, inference = settings.admin(), settings.key()

    async def require_admin(request: Request) -> None:
        if key is None:
            raise ApiError(403, "admin_off", "this endpoint changes state and is off: start attrx serve with an "
                                             "admin key (ATTRX_ADMIN_KEY or --admin-key-file) to use it")
        token = bearer(request)
        if same(token, key):
            return
        if inference is not None and same(token, inference):
            raise ApiError(403, "admin_only", "the inference key cannot change state: send the admin key")
        raise ApiError(401, "unauthorized", "missing or wrong admin key (send 'Authorization: Bearer <admin key>')",
                       BEARER)

    return require_admin

"""`image_url` in a JSON request: the server fetches the image, within what its operator allows.

Server-side fetching is a request forgery risk (SSRF): a client could make the server read its
cloud metadata endpoint or a service on its private network. So it is off unless the operator
lists hosts or URL prefixes (`--image-url-allow`), and then, for the URL and every redirect's target:
- only http and https, only an allowed host or prefix;
- the host is resolved here, and every address it resolves to must be public: loopback, private,
  link-local (the metadata endpoints, 169.254.169.254 and fd00:ec2::254), multicast, reserved and
  unspecified ones are refused unless inside a network the operator names
  (`--image-url-allow-networks`). The connection then goes to the address checked, so a second DNS
  answer cannot point it elsewhere;
- the upload limits apply: `--max-body-bytes` to the body (from Content-Length and while reading),
  the request's deadline to the fetch, the pixel limit to decoding.

Refusals are 403 (`image_url_off`, `image_url_not_allowed`, `image_url_private`) or 422
(`bad_image_url`); an image that cannot be had is 422 `image_unavailable` (the origin answered
4xx), 413 `image_too_large`, or 502 `image_fetch_failed` (timeouts, 5xx after retries).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from urllib.parse import urlsplit

from attrx.service.catalog.fetch import Fetcher, FetchError, FetchPolicy
from attrx.service.http.errors import ApiError
from attrx.service.http.requests import ProductRequest
from attrx.service.settings import ServeSettings

REFUSALS = {"image_url_not_allowed": 403, "image_url_private": 403, "bad_image_url": 422}  # the guard's reasons


def _split(value: str | None) -> list[str]:
    return [x.strip() for x in (value or "").split(",") if x.strip()]


class ImageUrls:
    def __init__(self, settings: ServeSettings):
        self.allow = [a.lower() for a in _split(settings.image_url_allow)]
        self.networks = [ipaddress.ip_network(n, strict=False) for n in _split(settings.image_url_allow_networks)]
        timeout = settings.request_timeout_ms / 1000
        self.policy = FetchPolicy(connect_timeout_s=min(5.0, timeout), read_timeout_s=timeout, deadline_s=timeout,
                                  max_bytes=settings.max_body_bytes, retries=1, max_retry_after_s=0.0)
        self.timeout_s = timeout
        self._fetcher: Fetcher | None = None
        self._pool: ThreadPoolExecutor | None = None

    def allowed(self, url: str) -> bool:
        u = urlsplit(url)
        host = (u.hostname or "").lower()
        return any(url.lower().startswith(a) if "://" in a else host == a or host.endswith("." + a)
                   for a in self.allow)

    def guard(self, url: str) -> str:
        """The address to connect to for `url`; FetchError (reason: one of REFUSALS) if it must not be fetched."""
        u = urlsplit(url)
        if u.scheme.lower() not in ("http", "https") or not u.hostname:
            raise FetchError(url, f"image_url {url!r}: only http and https URLs with a host", reason="bad_image_url")
        if not self.allowed(url):
            raise FetchError(url, f"image_url host {u.hostname!r} is not on this server's allow-list",
                             reason="image_url_not_allowed")
        try:
            infos = socket.getaddrinfo(u.hostname, u.port or 443, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as e:
            raise FetchError(url, f"image_url host {u.hostname!r} does not resolve ({e})") from None
        addresses = [ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos]
        for a in addresses:
            if not a.is_global and not any(a in n for n in self.networks):
                raise FetchError(url, f"image_url host {u.hostname!r} resolves to {a}, a loopback, private, "
                                      "link-local or reserved address", reason="image_url_private")
        return str(addresses[0])

    def fetcher(self) -> Fetcher:
        if self._fetcher is None:
            self._fetcher = Fetcher(self.policy, None, guard=self.guard)
            self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="attrx-image-url")
        return self._fetcher

    async def fill(self, p: ProductRequest) -> ProductRequest:
        """`p` with its image_url fetched into its image (unchanged without one)."""
        url = p.image_url
        if url is None:
            return p
        if not self.allow:
            raise ApiError(403, "image_url_off", "this server does not fetch images by URL; send image_base64, "
                                                 "or start it with --image-url-allow")
        fetcher = self.fetcher()
        try:
            loop = asyncio.get_running_loop()
            got = await asyncio.wait_for(loop.run_in_executor(self._pool, fetcher.get, url), self.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, "image_fetch_timeout", f"image_url {url!r} not fetched within the request's "
                                                       "deadline") from None
        except FetchError as e:
            raise _refusal(e) from None
        return replace(p, image=got.data, image_url=None)


def _refusal(e: FetchError) -> ApiError:
    if e.reason in REFUSALS:
        return ApiError(REFUSALS[e.reason], e.reason, str(e))
    if e.reason == "too_large":
        return ApiError(413, "image_too_large", f"image_url {e.url!r}: {e}")
    if e.transient:
        return ApiError(502, "image_fetch_failed", f"image_url {e.url!r}: {e}")
    return ApiError(422, "image_unavailable", f"image_url {e.url!r}: {e}")

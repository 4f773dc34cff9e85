"""Who is reviewing, checked before anything else is read, and what the review server will serve.

Three ways a reviewer is known, in order of trust:
- their own key (`--reviewers FILE`: salted hashes, `attrx review-keys add`): the name is verified,
  and a reviewer with the role `reviser` may revise an answered product;
- a shared key (ATTRX_REVIEW_API_KEY / --api-key-file) plus the name they give (`X-Reviewer`): the
  name is only asserted, so their decisions are stored as unverified and they may not revise;
- no key at all (`--no-auth`, loopback only): names asserted, as above.

`ReviewAuth` is an ASGI middleware: it decides from the headers alone, so a caller without a valid
key never gets a body read or parsed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from attrx.service.http.auth import bearer_token, same
from attrx.service.http.problems import MEDIA_TYPE, problem_bytes
from attrx.service.review.keys import NAME, Reviewer, find


@dataclass(frozen=True)
class Who:
    name: str
    verified: bool
    can_revise: bool


class Denied(Exception):
    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


@dataclass(frozen=True)
class Access:
    reviewers: list[Reviewer] | None = None
    shared_key: str | None = None

    def identify(self, headers: dict[bytes, bytes]) -> Who:
        token = bearer_token(headers.get(b"authorization", b"").decode("latin-1"))
        if self.reviewers is not None:
            found = find(self.reviewers, token) if token else None
            if found is None:
                raise Denied(401, "unauthorized", "missing or unknown reviewer key (send 'Authorization: Bearer <key>')")
            return Who(found.name, True, found.can_revise)
        if self.shared_key is not None and not same(token, self.shared_key):
            raise Denied(401, "unauthorized", "missing or wrong shared review key (send 'Authorization: Bearer <key>')")
        name = headers.get(b"x-reviewer", b"").decode("utf-8", "replace").strip()
        if not NAME.match(name):
            raise Denied(400, "name_required", "say who you are: send 'X-Reviewer: <your name>' (1-64 letters, digits, "
                                               "spaces, . @ ' -)")
        return Who(name, False, False)


class ReviewAuth:
    """/api/*: the reviewer is identified from the headers before the route (and its body) runs; the
    identity travels in the request's state."""

    def __init__(self, app, access: Access):
        self.app, self.access = app, access

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            return await self.app(scope, receive, send)
        try:
            who = self.access.identify(dict(scope["headers"]))
        except Denied as e:
            body = problem_bytes(e.status, e.code, e.detail, None)
            headers = [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]
            if e.status == 401:
                headers.append((b"www-authenticate", b"Bearer"))
            await send({"type": "http.response.start", "status": e.status, "headers": headers})
            return await send({"type": "http.response.body", "body": body})
        scope.setdefault("state", {})["reviewer"] = who
        return await self.app(scope, receive, send)


IMAGE_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif", "BMP": "image/bmp",
               "TIFF": "image/tiff"}


def remote_image(image: str) -> tuple[bytes, str]:
    """A queue image named by URL (http(s), s3://, ...): fetched through the image cache (the run
    that wrote the queue usually filled it), so the page keeps loading images from its own origin."""
    import io

    from PIL import Image

    from attrx.service.catalog.fetch import FetchError
    from attrx.service.catalog.sources import ImageReader

    try:
        data = ImageReader().read(image)
        with Image.open(io.BytesIO(data)) as im:
            kind = IMAGE_TYPES.get(im.format or "")
    except FetchError as e:
        raise Denied(502, "image_unavailable", f"the product's image could not be fetched: {e}") from None
    except (OSError, ValueError, Image.DecompressionBombError):
        kind = None
    if kind is None:
        raise Denied(415, "not_an_image", f"the product's image is not one of {', '.join(IMAGE_TYPES)}")
    return data, kind


def servable_image(image: str | None, root: Path) -> tuple[Path, str]:
    """The queue's image for a product, if it is a local image file under `root`: (path, media type).
    A path outside it (a queue naming /etc/passwd, or ../), a link out of it, or a file that is not
    an image is refused (Denied), and nothing of it is read but its first bytes."""
    from PIL import Image

    if not image:
        raise Denied(404, "no_image", "the product has no image in the queue")
    path = Path(image).resolve()
    if not path.is_relative_to(root):
        raise Denied(403, "outside_image_root", f"the product's image is outside the image root {root} (start "
                                                 "attrx review with --image-root FOLDER to serve that folder)")
    if not path.is_file():
        raise Denied(404, "no_image", "the product's image file is missing")
    try:
        with Image.open(path) as im:
            kind = IMAGE_TYPES.get(im.format or "")
    except (OSError, ValueError, Image.DecompressionBombError):
        kind = None
    if kind is None:
        raise Denied(415, "not_an_image", f"the product's image is not one of {', '.join(IMAGE_TYPES)}")
    return path, kind

"""`attrx review`: the review page and its API (FastAPI), over a queue, a bundle and a decisions store.

A reviewer is known on every API call (attrx.service.review.access): by their own key (verified), or
by a shared key plus the name they give (unverified). A product is answered once; a change after
that is a revision, by a reviewer allowed to revise, and keeps the first answer.

    GET  /                               the page (keyboard-first; no data in it)
    GET  /api/session                    who you are, the queue's size, what is answered
    POST /api/next                       lease the next product (highest priority first) and show it
    POST /api/products/{id}/decision     {"answers": {attr: {"action": "accept"|"correct"|"skip", "value": ...}}}
    POST /api/products/{id}/revision     the same body: revise an answered product (reviewers with role reviser)
    GET  /api/products/{id}/history      every answer and revision of the product
    POST /api/products/{id}/allowed      {"record": {attr: value}}: the values still allowed beside these
    POST /api/products/{id}/skip         pass on the product (it goes back to the others)
    GET  /api/products/{id}/image        its image
    GET  /api/decisions                  the stored answers (the latest per product and attribute)
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from attrx.service.catalog.sources import is_remote
from attrx.service.http.asgi import BodyLimit
from attrx.service.http.errors import ApiError, problem_response
from attrx.service.review.access import Access, Denied, ReviewAuth, Who, remote_image, servable_image
from attrx.service.review.keys import Reviewer
from attrx.service.review.queue_reader import QueueItem, Vocabulary, read_queue
from attrx.service.review.store import Answer, AnsweredError, DecisionStore, LeaseError

PAGE = Path(__file__).with_name("page.html")


class ReviewError(Exception):
    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


class Choice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: str = Field(pattern="^(accept|correct|skip)$")
    value: str | None = Field(None, max_length=200)


class RecordBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    record: dict[str, str | None]


class DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    answers: dict[str, Choice]


@dataclass
class ReviewConfig:
    queue: str
    bundle: str
    db: str
    reviewers: list[Reviewer] | None = None  # per-reviewer keys (verified names)
    shared_key: str | None = None  # else one key for all, names asserted; neither: --no-auth
    lease_s: float = 300.0
    image_root: str | None = None  # images are served from under this folder only (default: the queue's)
    max_body_bytes: int = 64 * 1024


class Review:
    """The session state the routes share."""

    def __init__(self, cfg: ReviewConfig):
        from attrx.service.contract.bundle import load_bundle

        self.cfg = cfg
        self.items = read_queue(cfg.queue)
        self.by_id = {q.id: q for q in self.items}
        self.vocab = Vocabulary(load_bundle(cfg.bundle, verify_hashes=False).manifest)
        unknown = sorted({a for q in self.items for a in q.attributes} - set(self.vocab.values))
        if unknown:
            raise ValueError(f"{cfg.queue}: attributes {unknown} are not in the bundle {cfg.bundle}; "
                             "review a queue with the bundle that scored it")
        self.store = DecisionStore(cfg.db)
        self.image_root = Path(cfg.image_root or Path(cfg.queue).parent).resolve()

    def who(self, request: Request) -> Who:
        """The reviewer ReviewAuth identified from the headers, before the body was read."""
        return request.state.reviewer

    def reviewer(self, request: Request) -> str:
        return self.who(request).name

    def item(self, pid: str) -> QueueItem:
        if pid not in self.by_id:
            raise ReviewError(404, "not_in_queue", f"product {pid!r} is not in the review queue")
        return self.by_id[pid]

    def allowed(self, q: QueueItem, chosen: dict[str, str | None]) -> dict[str, list[str]]:
        """Per attribute under review, the values that fit the accepted ones and the other answers so far."""
        record = {**q.accepted, **{a: v for a, v in chosen.items() if a in q.attributes and v}}
        return {a: self.vocab.allowed(a, {k: v for k, v in record.items() if k != a}) for a in q.attributes}

    def view(self, q: QueueItem) -> dict:
        """What the page shows: the queue line, and per attribute the values a reviewer may pick."""
        allowed = self.allowed(q, {})
        family_values = {}
        for a, att in q.attributes.items():
            fam = att.get("family") or {}
            if fam.get("accepted"):
                family_values[a] = self.vocab.family_values(a, fam.get("name"), allowed[a])
        return {"id": q.id, "title": q.title, "has_image": bool(q.image), "priority": q.priority,
                "accepted": q.accepted, "attributes": q.attributes, "allowed": allowed,
                "family_values": family_values}

    def answers(self, q: QueueItem, body: DecisionBody) -> list[Answer]:
        missing, extra = set(q.attributes) - set(body.answers), set(body.answers) - set(q.attributes)
        if missing or extra:
            raise ReviewError(422, "wrong_attributes", f"answer exactly the attributes under review: "
                                                       f"{sorted(q.attributes)} (missing {sorted(missing)}, "
                                                       f"not under review {sorted(extra)})")
        out = []
        for a, c in body.answers.items():
            model = q.attributes[a]
            value = model["value"] if c.action == "accept" else c.value
            if c.action == "correct" and not value:
                raise ReviewError(422, "value_required", f"{a}: 'correct' needs the right value")
            out.append(Answer(a, c.action, None if c.action == "skip" else value, model["value"], model["confidence"]))
        record = {**q.accepted, **{x.attribute: x.value for x in out if x.value is not None}}
        problems = self.vocab.problems(record)
        if problems:
            raise ReviewError(422, "not_allowed", "; ".join(problems))
        return out


def create_review_app(cfg: ReviewConfig) -> FastAPI:
    review = Review(cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        review.store.close()

    app = FastAPI(title="attrx review", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.review = review
    app.add_middleware(ReviewAuth, access=Access(cfg.reviewers, cfg.shared_key))
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes, on_reject=lambda: None)  # outermost: before auth

    @app.exception_handler(ReviewError)
    @app.exception_handler(Denied)
    async def _err(request: Request, e: ReviewError | Denied):
        return problem_response(e.status, e.code, e.detail)

    @app.exception_handler(ApiError)  # the body limit's 413
    async def _api(request: Request, e: ApiError):
        return problem_response(e.status, e.reason, e.message, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _bad(request: Request, e: RequestValidationError):
        what = "; ".join(f"{'.'.join(str(x) for x in err['loc'][1:]) or 'body'}: {err['msg']}" for err in e.errors())
        return problem_response(422, "bad_request", what)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        return {"status": "ok"}

    _session_routes(app, review)
    _product_routes(app, review)
    return app


def _session_routes(app: FastAPI, review: Review) -> None:
    @app.get("/api/session")
    def session(request: Request):
        who = review.who(request)
        return {"reviewer": who.name, "verified": who.verified, "can_revise": who.can_revise,
                "queue": len(review.items), "lease_seconds": review.cfg.lease_s,
                **review.store.counts()}

    @app.post("/api/next")
    def next_product(request: Request):
        who = review.reviewer(request)
        pid = review.store.lease_next(who, (q.id for q in review.items), review.cfg.lease_s)
        if pid is None:
            return {"product": None, "detail": "nothing left to review in this queue"}
        return {"product": review.view(review.by_id[pid]), "lease_seconds": review.cfg.lease_s}

    @app.get("/api/decisions")
    def decisions(request: Request):
        review.reviewer(request)
        return {"decisions": review.store.current()}


def _product_routes(app: FastAPI, review: Review) -> None:
    @app.post("/api/products/{pid}/decision")
    def decide(pid: str, body: DecisionBody, request: Request):
        return _store(review, pid, body, review.who(request), revision=False)

    @app.post("/api/products/{pid}/revision")
    def revise(pid: str, body: DecisionBody, request: Request):
        who = review.who(request)
        if not who.can_revise:
            raise ReviewError(403, "cannot_revise", f"{who.name} may not revise answers: revisions need a reviewer "
                                                    "key with the role reviser (attrx review-keys add --role reviser)")
        return _store(review, pid, body, who, revision=True)

    @app.get("/api/products/{pid}/history")
    def history(pid: str, request: Request):
        review.item(pid)
        return {"id": pid, "history": review.store.history(pid)}

    @app.post("/api/products/{pid}/allowed")
    def allowed(pid: str, body: RecordBody, request: Request):
        review.reviewer(request)
        return {"allowed": review.allowed(review.item(pid), body.record)}

    @app.post("/api/products/{pid}/skip")
    def skip(pid: str, request: Request):
        who = review.reviewer(request)
        review.item(pid)
        review.store.skip(pid, who)
        return {"skipped": pid}

    @app.get("/api/products/{pid}/image")
    def image(pid: str, request: Request):
        image = review.item(pid).image
        if image and is_remote(image):
            data, media_type = remote_image(image)
            return Response(data, media_type=media_type)
        path, media_type = servable_image(image, review.image_root)
        return FileResponse(path, media_type=media_type)


def _store(review: Review, pid: str, body: DecisionBody, who: Who, revision: bool) -> dict:
    q = review.item(pid)
    answers = review.answers(q, body)
    try:
        n = review.store.record(pid, who.name, answers, q.title, q.image, verified=who.verified, revision=revision)
    except LeaseError as e:
        raise ReviewError(409, "leased_to_another", str(e)) from None
    except AnsweredError as e:
        raise ReviewError(409, "answered" if not revision else "not_answered", str(e)) from None
    return {"saved": n, "reviewer": who.name, "verified": who.verified, "revision": revision, **review.store.counts()}

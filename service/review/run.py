"""The review server's process: the review app under the API server's hardened uvicorn protocol (the
same header, body and connection limits and timeouts: attrx.service.http.frontend)."""

from __future__ import annotations

from pathlib import Path

from attrx.service.catalog.sources import is_remote
from attrx.service.review.review_settings import ReviewSettings
from attrx.service.review.web import ReviewConfig, create_review_app
from attrx.service.settings import ServeSettings


def _api_default(name: str):
    """The API server's default for a connection setting: one definition for both servers."""
    return ServeSettings.model_fields[name].default


def review_config(queue: str, s: ReviewSettings) -> ReviewConfig:
    from attrx.service.review.keys import read_reviewers

    reviewers = read_reviewers(s.reviewers) if s.reviewers else None
    db = s.db or str(Path(queue).with_suffix(".decisions.sqlite"))
    return ReviewConfig(queue, s.bundle, db, reviewers, s.shared_key(), s.lease_s, s.image_root, s.max_body_bytes)


def describe(app, s: ReviewSettings) -> str:
    review = app.state.review
    who = (f"their own keys ({len(review.cfg.reviewers)} in {s.reviewers})" if review.cfg.reviewers else
           "a shared key and the names they give (stored as unverified)" if review.cfg.shared_key else
           "WARNING: no key (--no-auth), the names they give (stored as unverified)")
    outside = sum(1 for q in review.items if q.image and not is_remote(q.image)
                  and not Path(q.image).resolve().is_relative_to(review.image_root))
    note = (f"\nwarning: {outside} of the queue's images lie outside the image root {review.image_root} and will "
            "not be shown (--image-root)") if outside else ""
    return (f"attrx review: {len(review.items)} products in {review.cfg.queue}, decisions in {review.cfg.db} "
            f"({review.store.counts()['products_answered']} answered so far); reviewers known by {who}{note}\n"
            f"open http://{s.host}:{s.port}/")


def run_review(queue: str, s: ReviewSettings) -> None:
    import uvicorn

    from attrx.service.http.frontend import guarded_protocol, raise_open_files_limit

    app = create_review_app(review_config(queue, s))
    print(describe(app, s), flush=True)
    connections = _api_default("max_connections")
    raise_open_files_limit(connections + 64)
    protocol = guarded_protocol(_api_default("header_timeout_s"), _api_default("body_timeout_s"), connections)
    uvicorn.run(app, host=s.host, port=s.port, log_level=s.log_level, http=protocol,
                timeout_keep_alive=_api_default("keep_alive_timeout_s"), limit_concurrency=connections)

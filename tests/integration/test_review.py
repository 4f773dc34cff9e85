"""`attrx review` (issue 23): a real server over a real queue and a bundle with constraints.

- Reviewers are named: their own keys (salted hashes in the file), or a shared key plus a name (stored
  as unverified); without either, 401/400, decided before any body is read.
- A product is answered once: a second answer is 409; a revision (by a reviser) keeps the first.
- Only images the queue names, under the image root, are served.
- Answers outside the bundle's classes or constraints are refused with a 422 naming the problem.
- A product is leased to one reviewer at a time; the lease ends when they walk away.
- kill -9 loses no confirmed decision: a restart finds every answer the server confirmed.
- The answers export as a catalog file (attrx corrections).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from helpers import ATTRS, shot, wait_listening

from attrx.cli import main

KEYS: dict[str, str] = {}  # name -> key, filled by reviewers_file (attrx review-keys add)
SHARED = "shared-review-key-0123456789"


@pytest.fixture(scope="module")
def constrained_bundle(checkpoint, demo_catalog, tmp_path_factory) -> Path:
    """The untrained test bundle with a taxonomy: of the first two attributes' value pairs, only half
    are allowed together (a catalog's constraint group, as a taxonomy file gives one)."""
    from attrx.export.build import export_bundle
    from attrx.service.contract.constraints import ConstraintGroup, Constraints
    from attrx.training.evaluation.constraint_learning import write_constraints
    from attrx.training.models.checkpoint import CALIBRATION, load_checkpoint

    ck_dir = tmp_path_factory.mktemp("ck-constrained") / "ck"
    shutil.copytree(checkpoint, ck_dir)
    ck = load_checkpoint(ck_dir)
    a, b = ATTRS[:2]
    pairs = [[x, y] for i, x in enumerate(ck.classes[a]) for j, y in enumerate(ck.classes[b]) if (i + j) % 2 == 0]
    constraints = Constraints(groups=[ConstraintGroup(attributes=[a, b], allowed=pairs, source="taxonomy: test")])
    write_constraints(ck_dir, constraints)
    calib = json.loads((ck_dir / CALIBRATION).read_text())  # the bundle takes them from the calibration
    (ck_dir / CALIBRATION).write_text(json.dumps({**calib, "constraints": constraints.model_dump()}))
    return export_bundle(ck_dir, tmp_path_factory.mktemp("b-constrained") / "b", name="constrained").path


@pytest.fixture(scope="module")
def queue(constrained_bundle, demo_catalog, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("queue")
    main(["score", str(demo_catalog), "--bundle", str(constrained_bundle), "--out", str(d / "scored.csv"),
          "--review-queue", str(d / "queue.jsonl"), "--quiet"])
    assert len((d / "queue.jsonl").read_text().splitlines()) >= 10
    return d / "queue.jsonl"


class Reviewing:
    """A real `attrx review` process on 127.0.0.1."""

    def __init__(self, queue: Path, bundle: Path, db: Path, *args: str, env: dict | None = None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        exe = str(Path(sys.executable).parent / "attrx")
        self.log = open(db.parent / f"review-{self.port}.log", "w+")
        self.proc = subprocess.Popen([exe, "review", str(queue), "--bundle", str(bundle), "--db", str(db),
                                      "--port", str(self.port), *args], stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        wait_listening(self.url, self.proc, self.output)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]

    def call(self, method: str, path: str, who: str | None = "alice", **kw) -> httpx.Response:
        headers = kw.pop("headers", {})
        if who in KEYS:
            headers["Authorization"] = f"Bearer {KEYS[who]}"
        return httpx.request(method, self.url + path, headers=headers, timeout=10, **kw)

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(20)
        self.log.close()


@pytest.fixture
def reviewers_file(tmp_path, capsys) -> Path:
    """alice reviews, bob may also revise; their keys as `attrx review-keys add` prints them."""
    f = tmp_path / "reviewers.txt"
    for name, role in (("alice", "reviewer"), ("bob", "reviser")):
        main(["review-keys", "add", name, "--reviewers", str(f), "--role", role])
        KEYS[name] = capsys.readouterr().out.strip().splitlines()[-1]
    assert not any(k in f.read_text() for k in KEYS.values())  # the file keeps hashes only
    return f


@pytest.fixture
def start_review(queue, constrained_bundle, tmp_path, reviewers_file):
    running = []

    def start(*args, db: Path | None = None, env=None, keys: bool = True):
        extra = ["--reviewers", str(reviewers_file)] if keys else []
        r = Reviewing(queue, constrained_bundle, db or tmp_path / "decisions.sqlite", *extra, *args, env=env)
        running.append(r)
        return r

    yield start
    for r in running:
        r.stop(signal.SIGKILL)


def accept_all(product: dict) -> dict:
    """Answers that keep the record allowed: for each attribute, its first allowed value."""
    answers, chosen = {}, {}
    for a in product["attributes"]:
        allowed = product["allowed"][a]
        answers[a] = {"action": "skip"} if not allowed else {"action": "correct", "value": allowed[0]}
        chosen[a] = allowed[0] if allowed else None
    return answers


def answer_next(r: Reviewing, who: str) -> tuple[str, dict]:
    """Lease the next product, answer it with values the server says are allowed, one at a time."""
    p = r.call("POST", "/api/next", who).json()["product"]
    chosen: dict[str, str | None] = {}
    answers = {}
    for a in p["attributes"]:
        allowed = r.call("POST", f"/api/products/{p['id']}/allowed", who, json={"record": chosen}).json()["allowed"][a]
        if allowed:
            chosen[a] = allowed[0]
            action = "accept" if allowed[0] == p["attributes"][a]["value"] else "correct"
            answers[a] = {"action": action, "value": allowed[0]}
        else:
            answers[a] = {"action": "skip"}
    resp = r.call("POST", f"/api/products/{p['id']}/decision", who, json={"answers": answers})
    assert resp.status_code == 200, resp.text
    return p["id"], answers


def test_every_call_needs_a_named_reviewer(start_review, queue, constrained_bundle, tmp_path):
    r = start_review()
    assert r.call("GET", "/api/session", None).status_code == 401
    assert r.call("GET", "/api/session", None, headers={"Authorization": "Bearer nope-nope-nope"}).status_code == 401
    assert r.call("GET", "/api/session", "bob").json()["reviewer"] == "bob"
    assert r.call("GET", "/", None).status_code == 200  # the page itself holds no data
    # one shared key (the review server's own variable): a name is required on top of it, and is unverified
    shared = start_review(db=tmp_path / "shared.sqlite", env={"ATTRX_REVIEW_API_KEY": SHARED}, keys=False)
    auth = {"Authorization": f"Bearer {SHARED}"}
    assert shared.call("GET", "/api/session", None).status_code == 401
    resp = shared.call("GET", "/api/session", None, headers=auth)
    assert resp.status_code == 400 and "X-Reviewer" in resp.json()["detail"]
    carol = shared.call("GET", "/api/session", None, headers={**auth, "X-Reviewer": "Carol"}).json()
    assert carol["reviewer"] == "Carol" and carol["verified"] is False and carol["can_revise"] is False


def test_a_second_answer_is_refused_and_a_revision_keeps_the_first(start_review, tmp_path):
    r = start_review(db=tmp_path / "revise.sqlite")
    pid, first = answer_next(r, "alice")
    again = r.call("POST", f"/api/products/{pid}/decision", "bob", json={"answers": first})
    assert again.status_code == 409 and again.json()["reason"] == "answered" and "revision" in again.json()["detail"]
    assert r.call("POST", f"/api/products/{pid}/decision", "alice", json={"answers": first}).status_code == 409
    refused = r.call("POST", f"/api/products/{pid}/revision", "alice", json={"answers": first})
    assert refused.status_code == 403 and refused.json()["reason"] == "cannot_revise"  # alice is no reviser
    skip_all = {a: {"action": "skip"} for a in first}
    revised = r.call("POST", f"/api/products/{pid}/revision", "bob", json={"answers": skip_all})
    assert revised.status_code == 200 and revised.json()["revision"] is True
    history = r.call("GET", f"/api/products/{pid}/history").json()["history"]
    assert [h["kind"] for h in history] == ["answer"] * len(first) + ["revision"] * len(first)
    assert {h["reviewer"] for h in history if h["kind"] == "answer"} == {"alice"}  # the first answer is kept
    current = {d["attribute"]: d for d in r.call("GET", "/api/decisions").json()["decisions"] if d["id"] == pid}
    assert {d["action"] for d in current.values()} == {"skip"} and all(d["verified"] for d in current.values())
    other = r.call("POST", "/api/next", "alice").json()["product"]["id"]
    nothing = r.call("POST", f"/api/products/{other}/revision", "bob", json={"answers": skip_all})
    assert nothing.status_code in (409, 422)  # nothing to revise (or not its attributes): never stored
    assert other not in {d["id"] for d in r.call("GET", "/api/decisions").json()["decisions"]}


def test_a_caller_without_a_key_gets_no_body_parsed_and_bodies_are_bounded(start_review):
    r = start_review()
    huge = b"[" * 200_000  # would take the JSON parser a while; refused from the headers
    resp = r.call("POST", "/api/products/x/decision", None, content=huge, headers={"Content-Type": "application/json"})
    assert resp.status_code in (401, 413)
    small = r.call("POST", "/api/products/x/decision", None, content=b"{", headers={"Content-Type": "application/json"})
    assert small.status_code == 401 and small.json()["reason"] == "unauthorized"
    big = r.call("POST", "/api/products/x/decision", "alice", content=b"{" + b" " * 100_000 + b"}",
                 headers={"Content-Type": "application/json"})
    assert big.status_code == 413


def test_only_the_queues_images_under_the_image_root_are_served(constrained_bundle, tmp_path, reviewers_file):
    from PIL import Image

    root = tmp_path / "catalog"
    (root / "img").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(root / "img" / "a.jpg")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for reviewers")
    (root / "img" / "link.jpg").symlink_to(secret)
    (root / "img" / "text.jpg").write_text("plain text named .jpg")
    attrs = {a: {"value": "x", "confidence": 0.5, "situation": "silent+image", "accepted": False} for a in ATTRS[:1]}
    rows = [{"format": 1, "id": i, "title": "t", "image": str(img), "priority": 1.0, "accepted": {},
             "attributes": attrs} for i, img in (("good", root / "img" / "a.jpg"), ("out", secret),
                                                 ("dots", root / "img" / ".." / ".." / "secret.txt"),
                                                 ("link", root / "img" / "link.jpg"), ("text", root / "img" / "text.jpg"))]
    q = root / "queue.jsonl"
    q.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = Reviewing(q, constrained_bundle, tmp_path / "img.sqlite", "--reviewers", str(reviewers_file))
    try:
        good = r.call("GET", "/api/products/good/image")
        assert good.status_code == 200 and good.headers["content-type"] == "image/jpeg"
        for pid, status in (("out", 403), ("dots", 403), ("link", 403), ("text", 415)):
            resp = r.call("GET", f"/api/products/{pid}/image")
            assert resp.status_code == status and "not for reviewers" not in resp.text, (pid, resp.text)
        assert r.call("GET", "/api/products/good/image", None).status_code == 401
    finally:
        r.stop(signal.SIGKILL)


def test_a_queue_image_named_by_url_is_fetched_and_served_from_the_page_origin(constrained_bundle, tmp_path,
                                                                               reviewers_file):
    from helpers import ImageHost
    from PIL import Image

    site = tmp_path / "cdn"
    site.mkdir()
    Image.new("RGB", (8, 8), "red").save(site / "a.jpg")
    (site / "page.html").write_text("<html>an error page</html>")
    host = ImageHost(site)
    attrs = {a: {"value": "x", "confidence": 0.5, "situation": "silent+image", "accepted": False} for a in ATTRS[:1]}
    rows = [{"format": 1, "id": i, "title": "t", "image": f"{host.url}/{path}", "priority": 1.0, "accepted": {},
             "attributes": attrs} for i, path in (("cdn", "a.jpg"), ("gone", "missing.jpg"), ("html", "_html/a.jpg"))]
    q = tmp_path / "queue.jsonl"
    q.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = Reviewing(q, constrained_bundle, tmp_path / "url.sqlite", "--reviewers", str(reviewers_file),
                  env={"ATTRX_CACHE_DIR": str(tmp_path / "cache")})
    try:
        good = r.call("GET", "/api/products/cdn/image")
        assert good.status_code == 200 and good.headers["content-type"] == "image/jpeg"
        assert good.content == (site / "a.jpg").read_bytes()
        assert r.call("GET", "/api/products/gone/image").status_code == 502
        assert r.call("GET", "/api/products/html/image").status_code == 502
        assert r.call("GET", "/api/products/cdn/image", None).status_code == 401
    finally:
        r.stop(signal.SIGKILL)
        host.stop()


def test_values_outside_the_bundles_lists_are_refused(start_review):
    r = start_review()
    p = r.call("POST", "/api/next").json()["product"]
    a = next(iter(p["attributes"]))
    others = {b: {"action": "skip"} for b in p["attributes"] if b != a}
    bad = r.call("POST", f"/api/products/{p['id']}/decision", json={"answers": {a: {"action": "correct",
                                                                                     "value": "Plaid Unicorn"}, **others}})
    assert bad.status_code == 422 and "'Plaid Unicorn' is not one of its" in bad.json()["detail"]
    missing = r.call("POST", f"/api/products/{p['id']}/decision", json={"answers": others})
    assert missing.status_code == 422 and a in missing.json()["detail"]
    assert r.call("POST", "/api/products/no-such-id/decision", json={"answers": {}}).status_code == 404
    junk = r.call("POST", f"/api/products/{p['id']}/decision", json={"answers": {a: {"action": "maybe"}}})
    assert junk.status_code == 422 and "answers." in junk.json()["detail"]  # a readable reason, not a schema dump
    notjson = r.call("POST", f"/api/products/{p['id']}/decision", content=b"{", headers={"Content-Type": "application/json"})
    assert notjson.status_code == 422 and notjson.json()["reason"] == "bad_request"
    assert r.call("GET", "/api/decisions").json()["decisions"] == []  # nothing refused was stored


def test_a_combination_the_constraints_forbid_is_refused(start_review, queue, constrained_bundle):
    """Values allowed one by one, but not together (the taxonomy's pairs), are refused naming the group."""
    from attrx.service.contract.bundle import load_bundle
    from attrx.service.review.queue_reader import Vocabulary

    vocab = Vocabulary(load_bundle(constrained_bundle).manifest)
    a, b = ATTRS[:2]
    r = start_review()
    p = r.call("POST", "/api/next").json()["product"]
    record = dict(p["accepted"])
    answers = {x: {"action": "skip"} for x in p["attributes"]}
    for x in (a, b):  # the group's attributes under review get values that cannot stand together
        if x in p["attributes"]:
            wrong = [v for v in vocab.values[x] if v not in vocab.allowed(x, record)] or vocab.values[x]
            record[x] = wrong[0]
            answers[x] = {"action": "correct", "value": wrong[0]}
    assert a in p["attributes"] or b in p["attributes"]  # the untrained model accepts little
    assert vocab.problems(record)
    resp = r.call("POST", f"/api/products/{p['id']}/decision", json={"answers": answers})
    assert resp.status_code == 422 and "no allowed combination of" in resp.json()["detail"], resp.text
    assert r.call("GET", "/api/decisions").json()["decisions"] == []
    allowed = r.call("POST", f"/api/products/{p['id']}/allowed", json={"record": {a: vocab.values[a][0]}})
    if b in p["attributes"] and a in p["attributes"]:  # what the page offers beside a value of a: only its pairs
        assert set(allowed.json()["allowed"][b]) == set(vocab.allowed(b, {a: vocab.values[a][0]}))


def test_one_reviewer_holds_a_product_until_the_lease_ends(start_review):
    r = start_review("--lease-seconds", "2")
    a = r.call("POST", "/api/next", "alice").json()["product"]
    b = r.call("POST", "/api/next", "bob").json()["product"]
    assert a["id"] != b["id"]
    assert r.call("POST", "/api/next", "alice").json()["product"]["id"] == a["id"]  # still hers
    steal = r.call("POST", f"/api/products/{a['id']}/decision", "bob", json={"answers": accept_all(a)})
    assert steal.status_code == 409 and "leased to alice" in steal.json()["detail"]
    time.sleep(2.5)  # alice walks away; bob finishes his and the lapsed lease is free again
    r.call("POST", f"/api/products/{b['id']}/skip", "bob")
    nxt = r.call("POST", "/api/next", "bob").json()["product"]
    assert nxt["id"] == a["id"]


def test_kill_9_loses_no_confirmed_decision(start_review, tmp_path):
    db = tmp_path / "durable.sqlite"
    r = start_review(db=db)
    confirmed = dict(answer_next(r, "alice") for _ in range(3))
    confirmed.update(dict(answer_next(r, "bob") for _ in range(2)))
    r.stop(signal.SIGKILL)  # no shutdown, no close: whatever was confirmed must already be on disk
    again = start_review(db=db)
    stored = again.call("GET", "/api/decisions").json()["decisions"]
    by_product: dict[str, dict] = {}
    for d in stored:
        by_product.setdefault(d["id"], {})[d["attribute"]] = d
    assert set(by_product) == set(confirmed)
    for pid, answers in confirmed.items():
        for a, ans in answers.items():
            assert by_product[pid][a]["action"] == ans["action"] and by_product[pid][a]["value"] == ans.get("value")
    assert {d["reviewer"] for d in stored} == {"alice", "bob"}
    assert again.call("GET", "/api/session").json()["products_answered"] == 5
    served = {again.call("POST", "/api/next", "alice").json()["product"]["id"]}
    assert not served & set(confirmed)  # an answered product is not offered again


def test_answers_export_as_a_catalog(start_review, tmp_path):
    db = tmp_path / "export.sqlite"
    r = start_review(db=db)
    answered = dict(answer_next(r, "alice") for _ in range(3))
    out = tmp_path / "corrections.csv"
    main(["corrections", str(db), "--out", str(out)])
    rows = {row["id"]: row for row in csv.DictReader(open(out))}
    labelled = {pid for pid, ans in answered.items() if any(x["action"] != "skip" for x in ans.values())}
    assert set(rows) == labelled
    for pid in labelled:
        for a, ans in answered[pid].items():
            assert rows[pid][a] == (ans.get("value") or "")
    assert json.loads(json.dumps(rows))  # plain strings: a file a catalog system reads


# -- the page in a real browser: headless Chromium (the `browser` fixture, conftest.py) -------------
def test_the_page_takes_keyboard_decisions_in_chromium(start_review, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    r = start_review()
    wait = WebDriverWait(browser, 15)
    browser.get(r.url + "/")
    wait.until(lambda d: d.find_element(By.ID, "login").is_displayed())
    browser.find_element(By.ID, "key").send_keys(KEYS["bob"] + "\n")
    wait.until(lambda d: d.find_element(By.ID, "product").is_displayed() and d.find_elements(By.CSS_SELECTOR, ".attr"))
    assert "reviewer: bob" in browser.find_element(By.ID, "who").text
    shot(browser, "review-page.png", tmp_path)
    first = browser.find_element(By.ID, "meta").text.split(" ")[1]
    attrs = [e.get_attribute("data-attr") for e in browser.find_elements(By.CSS_SELECTOR, ".attr")]
    body = browser.find_element(By.TAG_NAME, "body")
    expect = {}
    for i, a in enumerate(attrs):  # the second attribute gets no answer (x); the others their first offer (1)
        row = browser.find_element(By.CSS_SELECTOR, f'.attr[data-attr="{a}"]')
        offer = row.find_elements(By.CSS_SELECTOR, ".opts span[data-value]")
        key = "x" if i == 1 or not offer else "1"
        expect[a] = None if key == "x" else offer[0].get_attribute("data-value")
        body.send_keys(key)
        wait.until(lambda d, a=a: d.find_element(By.CSS_SELECTOR, f'.attr[data-attr="{a}"] .chosen').text)
        time.sleep(0.2)  # the allowed values of the others follow this answer
    shot(browser, "review-answered.png", tmp_path)
    body.send_keys("\n")  # every attribute answered: Enter saves, and the next product comes
    wait.until(lambda d: d.find_element(By.ID, "meta").text.split(" ")[1] != first)
    wait.until(lambda d: "saved 1 products" in d.find_element(By.ID, "status").text)
    stored = {d["attribute"]: d for d in r.call("GET", "/api/decisions").json()["decisions"] if d["id"] == first}
    assert set(stored) == set(attrs) and {d["reviewer"] for d in stored.values()} == {"bob"}
    for a, value in expect.items():
        assert stored[a]["value"] == value and (stored[a]["action"] == "skip") == (value is None)
    # another allowed value by typing it (/), then s skips the product: it goes back to the others
    second = browser.find_element(By.ID, "meta").text.split(" ")[1]
    a = browser.find_element(By.CSS_SELECTOR, ".attr.focus").get_attribute("data-attr")
    allowed = r.call("POST", f"/api/products/{second}/allowed", "bob", json={"record": {}}).json()["allowed"][a]
    body.send_keys("/")
    browser.switch_to.active_element.send_keys(allowed[-1] + "\n")
    wait.until(lambda d: allowed[-1] in d.find_element(By.CSS_SELECTOR, f'.attr[data-attr="{a}"] .chosen').text)
    shot(browser, "review-typed.png", tmp_path)
    browser.find_element(By.TAG_NAME, "body").send_keys("s")
    wait.until(lambda d: d.find_element(By.ID, "meta").text.split(" ")[1] not in (first, second))
    assert second not in {d["id"] for d in r.call("GET", "/api/decisions").json()["decisions"]}
    assert r.call("POST", "/api/next", "alice").json()["product"]["id"] == second  # skipped by bob, open to alice

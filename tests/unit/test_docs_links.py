"""Every link in the README and the documentation, checked offline: a relative link resolves to a file
of this repository (never outside it: ../shared is not in a clone), and an external link goes to a
host on a short allow-list of public sites."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if "hooks" not in p.parts)]
GENERATED = {"reference/cli.md", "reference/http.md", "reference/configuration.md", "reference/errors.md",
             "reference/openapi.json"}  # written by docs/hooks/reference.py when the site is built
ALLOWED_HOSTS = {"www.rfc-editor.org", "www.python-httpx.org", "labelstud.io", "jupytext.readthedocs.io",
                 "mlflow.org", "opentelemetry.io", "docs.ray.io", "kubernetes.io", "onnxruntime.ai",
                 "pytorch.org", "docs.pytest.org", "prometheus.io", "keda.sh", "github.com", "pypi.org"}
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
AUTO = re.compile(r"<(https?://[^>\s]+)>")


def links(page: Path) -> list[str]:
    text = CODE.sub("", FENCE.sub("", page.read_text()))
    return LINK.findall(text) + AUTO.findall(text)


def test_every_relative_link_resolves_inside_the_repository():
    bad = []
    for page in PAGES:
        for target in links(page):
            if urlsplit(target).scheme or target.startswith("#"):
                continue
            path = target.split("#")[0].split("?")[0]
            resolved = (page.parent / path).resolve()
            rel_docs = resolved.relative_to(ROOT / "docs").as_posix() if resolved.is_relative_to(ROOT / "docs") else None
            if not resolved.is_relative_to(ROOT):
                bad.append(f"{page.relative_to(ROOT)}: {target} leaves the repository")
            elif not resolved.exists() and rel_docs not in GENERATED:
                bad.append(f"{page.relative_to(ROOT)}: {target} does not resolve")
    assert not bad, "\n".join(bad)


def test_external_links_go_to_allowed_public_hosts():
    bad = [f"{page.relative_to(ROOT)}: {t}" for page in PAGES for t in links(page)
           if urlsplit(t).scheme in ("http", "https") and urlsplit(t).hostname not in ALLOWED_HOSTS]
    assert not bad, "\n".join(bad)
    assert not [t for page in PAGES for t in links(page) if urlsplit(t).scheme not in ("", "http", "https", "mailto")]


def test_headings_carry_no_issue_numbers_dates_or_commits():
    heading = re.compile(r"^#+ .*$", re.M)
    bad = [f"{page.relative_to(ROOT)}: {h}" for page in PAGES for h in heading.findall(FENCE.sub("", page.read_text()))
           if re.search(r"\bissue \d+|\b20\d\d-\d\d-\d\d\b|\bcommit [0-9a-f]{7,}", h, re.I)]
    assert not bad, "\n".join(bad)


def test_the_checker_finds_what_it_must(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("[a](../../shared/x.md) [b](https://evil.example/x) `[c](nowhere.md)`\n```\n[d](no.md)\n```\n")
    assert links(page) == ["../../shared/x.md", "https://evil.example/x"]

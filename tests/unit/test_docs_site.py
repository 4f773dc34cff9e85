"""The documentation site: `mkdocs build --strict` (broken links and anchors, pages left out of the
nav, a generated reference that fails: all errors), the generated reference pages against the code
they come from, and every `attrx ...` command the docs and the README show parsed by the real CLI."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
from helpers import build_site

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted(p for p in (ROOT / "docs").rglob("*.md") if "hooks" not in p.parts) + [ROOT / "README.md"]
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.S | re.M)
SHELL = {"", "bash", "sh", "shell", "console"}
SEPARATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", ")", "2>", "2>&1"}


def shown_commands(text: str) -> list[list[str]]:
    """The argv of every `attrx` command in the text's shell code blocks: continuation lines joined,
    comments dropped, cut at pipes and other shell operators; `.venv/bin/attrx`, `python -m attrx`
    and `$(which attrx)` count as `attrx`."""
    found = []
    for lang, body in FENCE.findall(text):
        if lang not in SHELL:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            lex = shlex.shlex(line.removeprefix("$ "), posix=True, punctuation_chars=True)
            lex.whitespace_split, lex.commenters = True, "#"
            try:
                tokens = list(lex)
            except ValueError:  # not shell (a quote left open in output text)
                continue
            found += _attrx_calls(tokens)
    return found


def _attrx_calls(tokens: list[str]) -> list[list[str]]:
    calls = []
    for i, tok in enumerate(tokens):
        if tok != "attrx" and not tok.endswith("/attrx"):
            continue
        rest = tokens[i + 1:]
        if rest[:1] == [")"]:  # $(which attrx) train ...
            rest = rest[1:]
        argv = []
        for t in rest:
            if t in SEPARATORS:
                break
            argv.append(t)
        if argv and not argv[0].startswith("<"):  # `attrx <command>` as prose inside a block
            calls.append(argv)
    return calls


def _parse(argv: list[str]) -> str | None:
    """None if the real parser accepts argv, else what it said."""
    from attrx.cli import parse_args

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parse_args(argv)
    except SystemExit as e:
        if e.code not in (0, None):
            return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {e.code}"
    return None


def test_every_attrx_command_in_the_docs_parses_with_the_real_cli():
    shown = [(page.relative_to(ROOT), argv) for page in PAGES for argv in shown_commands(page.read_text())]
    commands = {argv[0] for _, argv in shown}
    # the docs show every stage: a checker that found nothing would pass vacuously
    assert len(shown) >= 40 and {"train", "eval", "export", "serve", "score", "review", "pretrain"} <= commands, shown
    bad = [f"{page}: attrx {shlex.join(argv)}\n    {why}" for page, argv in shown if (why := _parse(argv))]
    assert not bad, "commands in the docs the CLI refuses:\n" + "\n".join(bad)


def test_the_checker_sees_through_shell_syntax_and_catches_a_wrong_flag():
    text = ("```bash\n.venv/bin/attrx score c.csv --bundle b \\\n   --out o.jsonl | tee log  # a comment\n"
            "torchrun --nproc-per-node 2 $(which attrx) train --catalog c.csv --out x\n```\n"
            "```text\nattrx score --not-parsed\n```\n")
    assert shown_commands(text) == [["score", "c.csv", "--bundle", "b", "--out", "o.jsonl"],
                                    ["train", "--catalog", "c.csv", "--out", "x"]]
    assert _parse(["score", "c.csv", "--bundle", "b", "--out", "o.jsonl"]) is None
    assert "unrecognized arguments: --no-such-flag" in _parse(["score", "c.csv", "--bundle", "b", "--out", "o",
                                                               "--no-such-flag"])
    assert "required" in _parse(["score", "c.csv"])


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs", reason="the documentation site needs the docs extra: pip install -e '.[docs]'")
    return build_site(tmp_path_factory.mktemp("site"))


def test_the_site_builds_strict_and_scoring_is_one_click_from_home(site):
    home = (site / "index.html").read_text()
    assert 'href="scoring-and-scale.html"' in home
    scoring = (site / "scoring-and-scale.html").read_text()
    assert "attrx score" in scoring and "--resume" in scoring
    for page in ("quickstart", "concepts", "http-api", "training", "serving", "container", "results/index",
                 "notebooks/client", "changelog", "kubernetes", "mlflow", "tracing", "python-client"):
        assert (site / f"{page}.html").is_file(), page


def test_the_cli_reference_is_the_parsers_help(site):
    from attrx.cli import build_parser

    text = (site / "reference" / "cli.html").read_text()
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, parser in sub.choices.items():
        assert f'id="attrx-{name}"' in text, name
        for action in parser._actions:  # every flag of every command
            if action.help == argparse.SUPPRESS:  # an old spelling kept for one release: not shown
                assert action.__class__.__name__ in ("Deprecated", "_OldPositional"), (name, action.dest)
                assert not any(f in text for f in action.option_strings if f not in ("--precision", "--catalog")), \
                    (name, action.option_strings)
                continue
            for flag in action.option_strings:
                assert flag in text, f"attrx {name} {flag}"


def test_the_api_reference_is_the_openapi_document(site):
    import json

    from attrx.service.http.app import openapi_document

    spec = openapi_document()
    assert json.loads((site / "reference" / "openapi.json").read_text()) == spec
    text = (site / "reference" / "http.html").read_text()
    for path, ops in spec["paths"].items():
        for method in ops:
            assert f"{method.upper()} {path}" in text, (method, path)
    for name, schema in spec["components"]["schemas"].items():
        assert f'id="{name.lower()}"' in text, name
        for field in schema.get("properties", {}):
            assert f"<code>{field}</code>" in text, (name, field)
    settings = (site / "reference" / "configuration.html").read_text()
    from attrx.service.settings import ServeSettings

    for name in ServeSettings.model_fields:
        assert f"ATTRX_{name.upper()}" in settings, name

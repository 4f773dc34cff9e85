"""One CLI dialect (../shared/design/ARCHITECTURE.md, "CLI vocabulary"): the new spellings parse, the old
ones still work for one release with a warning that names the new one, settings come from flags or from
each command's own environment prefix, and a missing requirement is a usage error (exit status 2)."""

from __future__ import annotations

import pytest

from attrx.cli import parse_args
from attrx.cli.common import EXIT_STATUS


@pytest.mark.parametrize("old, new, dest, value", [
    (["score", "c.csv", "--bundle", "b", "--out", "o", "--precision", "int8"], None, "variant", "int8"),
    (["serve", "--bundle", "b", "--precision", "fp16"], None, "variant", "fp16"),
    (["serve", "--bundle", "b", "--max-batch-items", "8"], None, "max_request_items", 8),
    (["serve", "--bundle", "b", "--inference-workers", "2"], None, "inference_threads", 2),
    (["export", "--checkpoint", "ck", "--out", "o", "--precision", "fp32,int8"], None, "variants", ["fp32", "int8"]),
    (["eval", "c.csv", "--checkpoint", "ck", "--precision", "0.9,0.95"], None, "min_precision", [0.9, 0.95]),
    (["train", "c.csv", "--attributes", "a", "--out", "o", "--precision", "bf16"], None, "amp", "bf16"),
    (["build-engine", "--bundle", "b", "--precision", "fp16"], None, "variant", "fp16"),
    (["review", "q.jsonl", "--bundle", "b", "--lease-seconds", "30"], None, "lease_s", 30.0),
])
def test_an_old_spelling_still_works_and_names_the_new_one(old, new, dest, value, capsys):
    a = parse_args(old)
    assert getattr(a, dest) == value
    err = capsys.readouterr().err
    assert "is deprecated and will be removed in the next release; use --" in err


@pytest.mark.parametrize("argv, dest, value", [
    (["train", "--catalog", "c.csv", "--attributes", "a", "--out", "o"], "catalog", "c.csv"),
    (["eval", "--checkpoint", "ck", "--catalog", "c.csv"], "catalog", "c.csv"),
    (["validate-bundle", "b"], "bundle", "b"),
])
def test_old_input_spellings_reach_the_new_place(argv, dest, value, capsys):
    assert getattr(parse_args(argv), dest) == value
    assert "deprecated" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["score", "c.csv", "--bundle", "b", "--out", "o", "--variant", "int8", "--min-precision", "0.95"],
    ["serve", "--bundle", "b", "--variant", "fp32", "--max-request-items", "8", "--inference-threads", "1",
     "--drain-timeout-s", "5", "--request-timeout-ms", "900"],
    ["export", "--checkpoint", "ck", "--out", "o", "--variants", "fp32,int8", "--quiet"],
    ["eval", "c.csv", "--checkpoint", "ck", "--min-precision", "0.9,0.95"],
    ["train", "c.csv", "--attributes", "a", "--out", "o", "--amp", "bf16"],
    ["pretrain", "c.csv", "--out", "o", "--family", "simla"],
    ["improve", "c.csv", "--checkpoint", "ck", "--corrections", "d.sqlite", "--out", "o"],
    ["validate-bundle", "--bundle", "b"],
    ["review", "q.jsonl", "--bundle", "b", "--lease-s", "30"],
])
def test_the_new_spellings_parse_without_a_warning(argv, capsys):
    parse_args(argv)
    assert "deprecated" not in capsys.readouterr().err


@pytest.mark.parametrize("argv, missing", [
    (["score", "c.csv", "--out", "o"], "--bundle"),
    (["serve"], "--bundle"),
    (["validate-bundle"], "--bundle"),
    (["train", "--attributes", "a", "--out", "o"], "CATALOG"),
    (["review", "q.jsonl"], "--bundle"),
])
def test_a_missing_requirement_is_a_usage_error(argv, missing, monkeypatch, capsys):
    for var in ("ATTRX_BUNDLE", "ATTRX_SCORE_BUNDLE", "ATTRX_REVIEW_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2 and missing in capsys.readouterr().err


def test_each_command_reads_its_own_environment_prefix(monkeypatch):
    from attrx.cli.common import settings_from
    from attrx.service.review.review_settings import ReviewSettings
    from attrx.service.scoring.score_settings import ScoreSettings

    # the API server's address never moves the review page (it did: the port clash)
    monkeypatch.setenv("ATTRX_HOST", "0.0.0.0")
    monkeypatch.setenv("ATTRX_PORT", "8000")
    monkeypatch.setenv("ATTRX_REVIEW_PORT", "8123")
    monkeypatch.setenv("ATTRX_SCORE_BUNDLE", "/models/b")
    monkeypatch.setenv("ATTRX_SCORE_BATCH_SIZE", "7")
    review = settings_from(ReviewSettings, parse_args(["review", "q.jsonl", "--bundle", "b", "--no-auth"]))
    assert (review.host, review.port) == ("127.0.0.1", 8123)
    score = settings_from(ScoreSettings, parse_args(["score", "c.csv", "--out", "o", "--batch-size", "9"]))
    assert score.bundle == "/models/b" and score.batch_size == 9  # a flag overrides its variable


def test_score_refuses_ray_options_without_ray_and_local_options_with_it():
    from pydantic import ValidationError

    from attrx.cli.common import settings_from
    from attrx.service.scoring.score_settings import ScoreSettings

    with pytest.raises(ValidationError, match="without --ray, --ray-concurrency would be ignored"):
        settings_from(ScoreSettings, parse_args(["score", "c", "--bundle", "b", "--out", "o",
                                                 "--ray-concurrency", "2"]))
    with pytest.raises(ValidationError, match="--workers sizes local decoding"):
        settings_from(ScoreSettings, parse_args(["score", "c", "--bundle", "b", "--out", "o", "--ray",
                                                 "--workers", "2"]))
    s = settings_from(ScoreSettings, parse_args(["score", "c", "--bundle", "b", "--out", "o", "--ray"]))
    assert s.ray == ""  # --ray alone: a local Ray


def test_the_exit_status_table_is_the_one_the_cli_prints():
    from attrx.cli import build_parser

    epilog = build_parser().epilog
    assert all(f"{k} {v}" in epilog for k, v in EXIT_STATUS.items())
    assert EXIT_STATUS[2].startswith("usage error") and "refused" in EXIT_STATUS[3]


def test_every_flag_and_argument_says_what_it_is_for():
    import argparse

    from attrx.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    silent = [(name, a.option_strings or a.dest) for name, p in sub.choices.items() for a in p._actions
              if a.help is None and a.dest != "help"]
    assert not silent

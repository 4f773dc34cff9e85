"""The `attrx` command: one module per stage of the data flow, each thin over library functions.
Training commands import torch lazily, so the serving install works without it. Nothing imports
this package (an import-linter contract checks it)."""

from __future__ import annotations

import argparse
import sys

from attrx.cli import demo_data, evaluate, export, review, score, serve, train
from attrx.cli.common import EXIT_STATUS, check_required
from attrx.service.inference.runtime.base import BackendError
from attrx.version import __version__


def build_parser() -> argparse.ArgumentParser:
    status = "; ".join(f"{k} {v}" for k, v in EXIT_STATUS.items())
    p = argparse.ArgumentParser(prog="attrx", description="Product attribute extraction from titles and images.",
                                epilog=f"Exit status: {status}.")
    p.add_argument("--version", action="version", version=f"attrx {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo_data.add_parsers(sub)
    train.add_parsers(sub)
    evaluate.add_parsers(sub)
    export.add_parsers(sub)
    serve.add_parsers(sub)
    score.add_parsers(sub)
    review.add_parsers(sub)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line as the CLI reads it: argparse, then the requirements that the old spellings
    and the environment variables keep out of argparse (the input data, --bundle)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["review"] and argv[1:2] in (["export"], ["import"]):  # attrx review export|import
        argv = [f"review-{argv[1]}", *argv[2:]]
    args = parser.parse_args(argv)
    check_required(args, parser.error)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BackendError as e:  # a runtime that cannot run here (provider, GPU, TensorRT version): say why
        raise SystemExit(f"attrx {args.command}: {e}") from None
    except (FileNotFoundError, FileExistsError, PermissionError, ValueError) as e:
        from pydantic import ValidationError

        if isinstance(e, ValidationError):  # a usage error: exit status 2, as argparse's own
            print(f"attrx {args.command}: invalid arguments:\n{e}", file=sys.stderr)
            raise SystemExit(2) from None
        raise SystemExit(f"attrx {args.command}: {e}") from None


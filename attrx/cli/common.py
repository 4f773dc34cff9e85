"""What the stage commands share: argument types and the check for the training extra."""

from __future__ import annotations

import argparse
import sys

# every command's exit status (docs: the CLI reference renders this table)
EXIT_STATUS = {
    0: "done",
    1: "failed (the message says why)",
    2: "usage error: a flag, an argument or a setting is wrong or missing",
    3: "done, but part of the result refused (attrx export: a variant that missed its gate; attrx score: more "
       "rows failed than --max-errors allows)",
    130: "interrupted (Ctrl-C; attrx score keeps the work done: --resume)",
}


def csv_list(s: str) -> list[str]:
    items = [x.strip() for x in s.split(",") if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list, e.g. colour,pattern")
    return items


def need_training_extra() -> None:
    # OpenMP threads that wait for work sleep instead of spinning: two trainings sharing a machine
    # then slow each other about 2x rather than fighting for the cores (set it yourself to override)
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise SystemExit(
            f"attrx: this command needs the training extra ({e.name} is not installed): "
            "pip install torch==2.13.0 && pip install 'attrx[train]'"
        ) from None


class Deprecated(argparse.Action):
    """An old spelling that still works for one release: it warns, naming the new one, and stores
    into the new one's destination. Hidden from --help, so the reference shows the new spellings."""

    def __init__(self, option_strings, dest, new: str, **kw):
        self.new = new
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"attrx: warning: {option_string} is deprecated and will be removed in the next release; "
              f"use {self.new}", file=sys.stderr, flush=True)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def deprecated(p, old: str, new: str, dest: str, **kw) -> None:
    """Accept `old` as a deprecated spelling of the option `new` (same destination; its type and choices
    unless given)."""
    current = p._option_string_actions.get(new)
    if current is not None:
        for k in ("type", "choices"):
            if k not in kw and getattr(current, k) is not None:
                kw[k] = getattr(current, k)
    p.add_argument(old, dest=dest, action=Deprecated, new=new, default=argparse.SUPPRESS, **kw)


def settings_flags(p: argparse.ArgumentParser, model, env_prefix: str, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of a pydantic settings model, with its description, environment variable
    and default: the flags and the environment are generated from one place. A field's
    json_schema_extra may name its argument `group`, and `nargs`/`const` for an optional value."""
    p.set_defaults(settings_model=model, env_prefix=env_prefix)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, f in model.model_fields.items():
        if name in skip:
            continue
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        where = groups.setdefault(extra["group"], p.add_argument_group(extra["group"])) if "group" in extra else p
        required = f.is_required()
        default = None if required else (f.default_factory() if f.default_factory is not None else f.default)
        env = f"env {env_prefix}{name.upper()}"
        text = f"{f.description or ''} ({env}; {'required' if required else f'default {default}'})".strip()
        flag = f"--{name.replace('_', '-')}"
        if f.annotation is bool:  # a switch: --resume, or --no-dedup for one on by default
            flag = f"--no-{name.replace('_', '-')}" if default else flag
            where.add_argument(flag, dest=name, action="store_const", const=not default, default=None, help=text)
            continue
        kind = next((t for t in (int, float, str) if t == f.annotation or t in getattr(f.annotation, "__args__", ())),
                    str)
        opts = {k: extra[k] for k in ("nargs", "const") if k in extra}
        where.add_argument(flag, dest=name, type=kind, default=None, help=text, **opts)


def settings_from(model, a: argparse.Namespace):
    """The settings model from the flags given (None: not given, so the environment or the default)."""
    fields = model.model_fields
    return model(**{k: v for k, v in vars(a).items() if k in fields and v is not None})


class _OldPositional(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        if values is not None:
            print("attrx: warning: the bundle as a positional argument is deprecated and will be removed in the "
                  "next release; use --bundle", file=sys.stderr, flush=True)
            if getattr(namespace, "bundle", None) is None:
                namespace.bundle = values


def bundle_option(p: argparse.ArgumentParser, help: str = "model bundle folder") -> None:
    """--bundle (required), and the old positional spelling for one release."""
    p.add_argument("--bundle", help=f"{help} (required)")
    p.add_argument("old_bundle", nargs="?", action=_OldPositional, help=argparse.SUPPRESS)
    p.set_defaults(require_bundle=True)


def input_argument(p: argparse.ArgumentParser, help: str, name: str = "catalog") -> None:
    """The command's input data, positional (NAME), and its old option spelling --NAME for one release."""
    p.add_argument(name, nargs="?", metavar=name.upper(), help=help)
    deprecated(p, f"--{name}", f"the positional {name.upper()}", f"old_{name}")
    p.set_defaults(require_input=name)


def check_required(a: argparse.Namespace, parser_error) -> None:
    """What the old spellings made optional to argparse is still required: the input and --bundle."""
    name = getattr(a, "require_input", None)
    if name and getattr(a, name) is None:
        setattr(a, name, getattr(a, f"old_{name}", None))
        if getattr(a, name) is None:
            parser_error(f"attrx {a.command}: the following arguments are required: {name.upper()}")
    if getattr(a, "require_bundle", False) and not getattr(a, "bundle", None):
        parser_error(f"attrx {a.command}: the following arguments are required: --bundle")
    model, prefix = getattr(a, "settings_model", None), getattr(a, "env_prefix", "")
    if model is not None:  # a required setting comes from its flag or its environment variable
        import os

        missing = [f"--{k.replace('_', '-')}" for k, f in model.model_fields.items()
                   if f.is_required() and getattr(a, k, None) is None and f"{prefix}{k.upper()}" not in os.environ]
        if missing:
            parser_error(f"attrx {a.command}: the following arguments are required: {', '.join(missing)}")


def model_defaults(p: argparse.ArgumentParser, model) -> None:
    """Each flag that sets a field of `model` says that field's default, read from the model: the
    defaults live in one place. (A hand-written "(default ...)" in a help text is replaced.)"""
    import re

    for action in p._actions:
        f = model.model_fields.get(action.dest)
        if f is None or action.help in (None, argparse.SUPPRESS) or f.is_required():
            continue
        default = f.default_factory() if f.default_factory is not None else f.default
        if isinstance(default, bool) or default is None or default == []:
            action.help = re.sub(r"\s*\(default [^()]*\)", "", action.help)
            continue
        shown = ",".join(map(str, default)) if isinstance(default, list) else f"{default:g}" \
            if isinstance(default, float) else default
        action.help = re.sub(r"\s*\(default [^()]*\)", "", action.help) + f" (default {shown})"


def mlflow_flags(p: argparse.ArgumentParser, what: str = "this run") -> None:
    """--mlflow-uri and --mlflow-experiment: track `what` in MLflow (the extra attrx[mlflow])."""
    g = p.add_argument_group("MLflow (pip install 'attrx[mlflow]')")
    g.add_argument("--mlflow-uri", help=f"log {what} to this MLflow tracking server (default: MLFLOW_TRACKING_URI; "
                                        "neither: not tracked)")
    g.add_argument("--mlflow-experiment", default="attrx", help="the MLflow experiment (default attrx)")

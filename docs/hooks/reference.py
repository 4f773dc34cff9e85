"""MkDocs hook: the reference pages are generated from the code each time the site is built, so they
cannot drift from it:
- reference/cli.md from `attrx`'s argparse parsers (attrx.cli.build_parser);
- reference/http.md (and reference/openapi.json) from the FastAPI app's OpenAPI document, the one
  `/openapi.json` serves (attrx.service.http.app.openapi_document);
- reference/configuration.md from the settings models of attrx serve, score and review;
- reference/errors.md from the registry of error reasons (attrx.service.http.problems.REASONS).
"""

from __future__ import annotations

import argparse
import json
import os

from mkdocs.structure.files import File

GENERATED = "Generated from the code when the site is built: it cannot drift from it."


def on_files(files, config):
    from attrx.service.http.app import openapi_document

    spec = openapi_document()
    pages = {"reference/cli.md": cli_markdown(), "reference/http.md": api_markdown(spec),
             "reference/openapi.json": json.dumps(spec, indent=2), "reference/configuration.md": settings_markdown(),
             "reference/errors.md": errors_markdown()}
    for uri, text in pages.items():
        files.append(File.generated(config, uri, content=text))
    return files


# -- the error reasons -----------------------------------------------------------------------------
def errors_markdown() -> str:
    from attrx.service.http.problems import REASONS, TYPE_PREFIX

    out = ["# Error reasons", "", f"{GENERATED} Every error answer is `application/problem+json` (RFC 9457) whose "
           f"`type` is `{TYPE_PREFIX}REASON` and whose `reason` member is the code below; the server answers "
           f"`GET {TYPE_PREFIX}REASON` with the same text. The shape: [HTTP API](../http-api.md#errors).", "",
           "| reason | status | title | when, and what to do |", "|---|---|---|---|"]
    out += [f"| <span id=\"{r}\"></span>`{r}` | {', '.join(map(str, st))} | {title} | {text} |"
            for r, (title, st, text) in REASONS.items()]
    return "\n".join(out) + "\n"


# -- the CLI ----------------------------------------------------------------------------------------
def cli_markdown() -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps its help to the terminal's width
    from attrx.cli import build_parser
    from attrx.cli.common import EXIT_STATUS

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {c.dest: c.help for c in sub._choices_actions}
    out = ["# CLI reference", "", f"{GENERATED} `attrx COMMAND --help` prints the same text.", "",
           "| command | what |", "|---|---|"]
    out += [f"| [`attrx {name}`](#attrx-{name}) | {helps.get(name, '')} |" for name in sub.choices]
    out += ["", "## One dialect", "",
            "- Input data is positional (`attrx score CATALOG`, `attrx train CATALOG`); a model is `--bundle` "
            "(served) or `--checkpoint` (trained), always an option.",
            "- The target precision is `--min-precision`; autocast is `--amp`; a bundle's variants are "
            "`--variants` (to write) and `--variant` (to run).",
            "- Units are suffixes (`-s`, `-ms`); `--workers` are processes, `--…-threads` threads.",
            "- The settings of `serve`, `score` and `review` are also environment variables, each command with its "
            "own prefix ([configuration reference](configuration.md)).",
            "- An old spelling still works for one release and prints a warning naming the new one.", "",
            "Exit status, for every command:", "", "| status | meaning |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in EXIT_STATUS.items()]
    out += ["", "```text", parser.format_help().rstrip(), "```", ""]
    for name, p in sub.choices.items():
        out += [f"## attrx {name}", "", helps.get(name, "") or "", "", "```text", p.format_help().rstrip(), "```", ""]
    return "\n".join(out)


# -- the HTTP API -----------------------------------------------------------------------------------
def _type(schema: dict) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    kind = schema.get("type", "any")
    if schema.get("format") == "binary" or schema.get("contentMediaType") == "application/octet-stream":
        return "file"
    if kind == "array":
        return f"list of {_type(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map of {_type(schema['additionalProperties'])}"
    return str(kind)


def _cell(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _properties(schema: dict) -> list[str]:
    props, required = schema.get("properties", {}), set(schema.get("required", []))
    if not props:
        return []
    rows = ["| field | type | required | description |", "|---|---|---|---|"]
    for name, p in props.items():
        default = f" (default `{json.dumps(p['default'])}`)" if "default" in p else ""
        rows.append(f"| `{name}` | {_type(p)} | {'yes' if name in required else ''} | "
                    f"{_cell(p.get('description') or p.get('title'))}{default} |")
    return rows


def _operation(path: str, method: str, op: dict) -> list[str]:
    out = [f"## {method.upper()} {path}", "", _cell(op.get("summary")), "", op.get("description", "").strip(), ""]
    for ctype, body in op.get("requestBody", {}).get("content", {}).items():
        out += [f"**Request body** (`{ctype}`): {_type(body.get('schema', {}))}", ""]
        out += _properties(body.get("schema", {})) + [""]
    out += ["| status | meaning | body |", "|---|---|---|"]
    for code, r in op.get("responses", {}).items():
        schema = next(iter(r.get("content", {}).values()), {}).get("schema", {})
        out.append(f"| {code} | {_cell(r.get('description'))} | {_type(schema) if schema else ''} |")
    return [*out, ""]


def api_markdown(spec: dict) -> str:
    out = ["# HTTP API reference", "",
           f"{GENERATED} A running server serves the same document at `/openapi.json` and an interactive "
           "page at `/docs`; [download it](openapi.json). Examples and the error reasons: "
           "[requests and answers](../http-api.md).", ""]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            out += _operation(path, method, op)
    out += ["## Schemas", ""]
    for name, schema in spec.get("components", {}).get("schemas", {}).items():
        out += [f"### {name}", "", _cell(schema.get("description")), ""] + _properties(schema) + [""]
    return "\n".join(out)


# -- the server's configuration ---------------------------------------------------------------------
def settings_markdown() -> str:
    from attrx.service.review.review_settings import ReviewSettings
    from attrx.service.scoring.score_settings import ScoreSettings
    from attrx.service.settings import ServeSettings

    out = ["# Configuration reference", "",
           f"{GENERATED} Every setting of a long-running command is an environment variable, and a flag of the "
           "command overrides it. Each command has its own prefix, so one never picks up another's settings. "
           "Defaults that depend on the machine say so.", ""]
    for command, model, prefix in (("serve", ServeSettings, "ATTRX_"), ("score", ScoreSettings, "ATTRX_SCORE_"),
                                   ("review", ReviewSettings, "ATTRX_REVIEW_")):
        out += [f"## attrx {command}", "",
                f"Environment variables `{prefix}<NAME>`; flags of [`attrx {command}`](cli.md#attrx-{command}).", "",
                "| variable | flag | default | meaning |", "|---|---|---|---|"]
        out += [_setting_row(name, field, prefix) for name, field in model.model_fields.items()] + [""]
    return "\n".join(out)


def _setting_row(name: str, field, prefix: str) -> str:
    if field.is_required():
        default = "(required)"
    else:
        default = "(computed)" if field.default_factory is not None else f"`{json.dumps(field.default)}`"
    flag = f"--{name.replace('_', '-')}"
    if field.annotation is bool:  # a switch, as the command spells it
        flag = f"--no-{flag[2:]}" if field.default else flag
    return f"| `{prefix}{name.upper()}` | `{flag}` | {default} | {_cell(field.description)} |"

"""`attrx serve`: a bundle over HTTP."""

from __future__ import annotations

import argparse
import sys


def cmd_serve(a) -> None:
    from attrx.service.contract.bundle import BundleError, load_bundle
    from attrx.service.serving.supervisor import serve
    from attrx.service.settings import ServeSettings

    if a.api_key is not None:
        print("attrx serve: warning: --api-key shows in the process list (/proc/PID/cmdline, ps); "
              "set ATTRX_API_KEY or use --api-key-file instead", file=sys.stderr, flush=True)
    fields = ServeSettings.model_fields
    settings = ServeSettings(**{k: v for k, v in vars(a).items() if k in fields and v is not None})
    try:
        load_bundle(settings.bundle)
    except BundleError as e:
        raise SystemExit(f"attrx serve: {e}") from None
    url = f"http://{settings.host}:{settings.port}"
    auth = ' -H "Authorization: Bearer $ATTRX_API_KEY"' if settings.api_key else ""
    print(f"attrx: serving {settings.bundle} at {url} (API docs: {url}/docs, metrics: {url}/metrics)\n"
          f"try:\n  curl -s{auth} -F 'title=Roadster Men Blue Striped T-Shirt' -F image=@some-product.jpg {url}/v1/extract\n"
          f"  curl -s{auth} -H 'Content-Type: application/json' -d '{{\"title\": \"Velora Women Red Dress\"}}' "
          f"{url}/v1/extract", flush=True)
    raise SystemExit(serve(settings, log_level=a.log_level, access_log=a.access_log))


def _add_settings_flags(p: argparse.ArgumentParser) -> None:
    from attrx.service.settings import ServeSettings

    for name, f in ServeSettings.model_fields.items():
        ann = f.annotation
        default = f.default_factory() if f.default_factory is not None else f.default
        text = f"{f.description or ''} (env ATTRX_{name.upper()}; default {default})".strip()
        if ann is bool:  # a switch: --allow-provider-fallback, or --no-dedup for one on by default
            flag = f"--no-{name.replace('_', '-')}" if default else f"--{name.replace('_', '-')}"
            p.add_argument(flag, dest=name, action="store_const", const=not default, default=None, help=text)
            continue
        typ = ann if ann in (int, float, str) else str
        p.add_argument(f"--{name.replace('_', '-')}", type=typ, default=None, help=text)


def _serve_parser(sub) -> None:
    s = sub.add_parser("serve", help="serve a bundle over HTTP (FastAPI, dynamic batching, Prometheus metrics)")
    _add_settings_flags(s)
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    s.add_argument("--access-log", action="store_true", help="log every request")
    s.set_defaults(func=cmd_serve)


def add_parsers(sub) -> None:
    _serve_parser(sub)

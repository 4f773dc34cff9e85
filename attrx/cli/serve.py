"""`attrx serve`: a bundle over HTTP."""

from __future__ import annotations

import os
import sys

from attrx.cli.common import deprecated, settings_flags, settings_from


def cmd_serve(a) -> None:
    from attrx.service.contract.bundle import BundleError, load_bundle
    from attrx.service.serving.model_registry import RegistryError, with_local_bundle
    from attrx.service.serving.supervisor import serve
    from attrx.service.settings import ServeSettings

    if a.api_key is not None:
        print("attrx serve: warning: --api-key shows in the process list (/proc/PID/cmdline, ps); "
              "set ATTRX_API_KEY or use --api-key-file instead", file=sys.stderr, flush=True)
    _renamed_environment()
    settings = settings_from(ServeSettings, a)
    try:
        settings = with_local_bundle(settings)
        load_bundle(settings.bundle)
    except (BundleError, RegistryError) as e:
        raise SystemExit(f"attrx serve: {e}") from None
    url = f"http://{settings.host}:{settings.port}"
    auth = ' -H "Authorization: Bearer $ATTRX_API_KEY"' if settings.api_key else ""
    if settings.api_key is None:
        why = "--no-auth" if settings.no_auth else f"loopback only: {settings.host}"
        print(f"attrx serve: WARNING: no API key ({why}): anyone who reaches {url} may call /v1/*", flush=True)
    if settings.admin_key is None:
        print("attrx serve: admin endpoints (POST /v1/drift/baseline) are off: no admin key (ATTRX_ADMIN_KEY)",
              flush=True)
    print(f"attrx: serving {settings.bundle} at {url} (API docs: {url}/docs, metrics: {url}/metrics)\n"
          f"try:\n  curl -s{auth} -F 'title=Roadster Men Blue Striped T-Shirt' -F image=@some-product.jpg {url}/v1/extract\n"
          f"  curl -s{auth} -H 'Content-Type: application/json' -d '{{\"title\": \"Velora Women Red Dress\"}}' "
          f"{url}/v1/extract", flush=True)
    raise SystemExit(serve(settings, log_level=a.log_level, access_log=a.access_log))


# old spellings, kept for one release: flag, its new spelling, the setting
RENAMED = (("--precision", "--variant", "variant"), ("--max-batch-items", "--max-request-items", "max_request_items"),
           ("--inference-workers", "--inference-threads", "inference_threads"),
           ("--preprocess-workers", "--preprocess-threads", "preprocess_threads"))


def _renamed_environment() -> None:
    """ATTRX_<old name> still sets its setting for one release, with a warning."""
    for old, _, name in RENAMED:
        old_env, new_env = f"ATTRX_{old[2:].replace('-', '_').upper()}", f"ATTRX_{name.upper()}"
        if old_env in os.environ and new_env not in os.environ:
            print(f"attrx serve: warning: {old_env} is deprecated and will be removed in the next release; "
                  f"use {new_env}", file=sys.stderr, flush=True)
            os.environ[new_env] = os.environ[old_env]


def _serve_parser(sub) -> None:
    from attrx.service.settings import ServeSettings

    s = sub.add_parser("serve", help="serve a bundle over HTTP (FastAPI, dynamic batching, Prometheus metrics)",
                       description="Every setting is also an environment variable ATTRX_<SETTING>. Exit status: 0 "
                                   "stopped after draining, 1 failed (or work left past the drain timeout), "
                                   "2 usage error.")
    settings_flags(s, ServeSettings, "ATTRX_")
    for old, new, name in RENAMED:
        deprecated(s, old, new, name)
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default info)")
    s.add_argument("--access-log", action="store_true", help="log every request")
    s.set_defaults(func=cmd_serve)


def add_parsers(sub) -> None:
    _serve_parser(sub)

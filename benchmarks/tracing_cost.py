"""What OpenTelemetry tracing costs the server at concurrency 32: `attrx serve --tracing` against the same
server without it, over HTTP with wrk, alternating, --repeats runs each (target: the median throughput
cost at most 3%, reported with its range). Two traced configurations: `on`, the default sampling
(tracing_sample_ratio 0.05), and `on-all`, every request traced (--tracing-sample-ratio 1).

    python benchmarks/tracing_cost.py --bundle build/demo-bundle --catalog build/demo/data/catalog.csv

The traced servers export their spans over OTLP/HTTP to an endpoint in this process (benchmarks/otlp_sink.py), which decodes nothing and answers at once, so the cost is
attrx's and the SDK's, not a collector's. Each repetition runs both servers, the order alternating;
the cost of a repetition is 1 - traced / untraced requests per second. Also reported: p50 and p99
per configuration and the spans received (5 a request: the proof that the traced runs traced).

Prints JSON; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from otlp_sink import OtlpSink  # noqa: E402
from serve import load_bodies, log, serve_and_load  # noqa: E402


def spread(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 4), "min": round(min(xs), 4), "max": round(max(xs), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="build/demo-bundle")
    ap.add_argument("--catalog", default="build/demo/data/catalog.csv")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--products", type=int, default=128)
    a = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("benchmarks/tracing_cost.py needs wrk (Debian: apt-get install wrk)")
    products, bodies, script = load_bodies(a.catalog, a.products, "attrx-tracing-")
    a.compare_bundle, a.max_batch_size, a.max_queue_delay_ms = None, 32, None  # serve_and_load reads these
    configs = {"off": [], "on": ["--tracing"], "on-all": ["--tracing", "--tracing-sample-ratio", "1"]}
    runs: dict[str, list[dict]] = {k: [] for k in configs}
    with OtlpSink(keep=False) as sink:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.url  # the untraced server ignores it
        names = list(configs)
        for rep in range(a.repeats):
            order = names[rep % 3:] + names[:rep % 3]  # each configuration first, second and last in turn
            for name in order:
                row = serve_and_load(a, f"tracing-{name}", configs[name], bodies, script, [a.concurrency])[0]
                runs[name].append(row)
        exports = sink.requests
    def cost(name: str) -> list[float]:
        return [1 - on["requests_per_s"] / off["requests_per_s"] for on, off in zip(runs[name], runs["off"], strict=True)]

    costs = cost("on")
    result = {
        "benchmark": "tracing_cost", "machine": {"cpus": os.cpu_count()}, "concurrency": a.concurrency,
        "duration_s": a.duration, "repeats": a.repeats, "products": len(products),
        "throughput_cost": spread(costs), "throughput_cost_every_request_traced": spread(cost("on-all")),
        "target": "median <= 0.03 (default sampling)",
        "met": statistics.median(costs) <= 0.03,
        "requests_per_s": {k: spread([r["requests_per_s"] for r in v]) for k, v in runs.items()},
        "p50_ms": {k: spread([r["p50_ms"] for r in v]) for k, v in runs.items()},
        "p99_ms": {k: spread([r["p99_ms"] for r in v]) for k, v in runs.items()},
        "otlp_exports_received": exports, "raw": runs,
    }
    log(f"tracing cost at c={a.concurrency}: median {result['throughput_cost']['median']:.3f} "
        f"(range {result['throughput_cost']['min']:.3f} to {result['throughput_cost']['max']:.3f})")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

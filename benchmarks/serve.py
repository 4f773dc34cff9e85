"""Serving benchmark: the HTTP server with and without dynamic batching, the in-process pipeline,
and `attrx score`, measured in one run on the same machine.

    python benchmarks/serve.py --bundle build/demo-bundle --catalog build/demo/data/catalog.csv

Load comes from wrk (Debian package `wrk`; a C load generator, so the client is not the
bottleneck a Python client would be) with a Lua script that cycles through real products
(title + base64 JPEG). Each level runs for --duration seconds (bounded), on 127.0.0.1 only.
Every configuration runs --repeats times (default 3), alternating, and the medians and ranges
are reported. `--litserve` adds the peer: LitServe serving the same bundle with attrx's own
preprocessing, backend and decoding (benchmarks/litserve_peer.py; `pip install -e '.[bench]'`),
and the attrx / LitServe ratio per concurrency, repetition by repetition.
Admission control is opened wide (`--max-in-flight 4096`): this measures throughput and latency
at a fixed concurrency; shedding under overload is benchmarks/overload.py's subject.
`batched` runs `attrx serve` with its default front-end processes (one per core); `batched-1w`
with one, for the scaling figure. `--compare-bundle B` adds `compare`: the batched server on another
bundle (e.g. today's default recipe beside a new one), with the ratio --bundle / B per concurrency,
repetition by repetition.
Every server runs attrx's default settings (adaptive batching, deduplication on, no response
cache) unless a flag here says otherwise (--max-queue-delay-ms, --batching).
Duplicates: `dedup` and `no-dedup` (--no-dedup) serve a load in which every product is asked for
twice in a row, so half the requests in flight repeat another's product, at concurrency
--dup-concurrency; `cache` (--response-cache) serves it with the response cache on, where the
repeats of the cycle hit it. Before its load, the dedup server answers each of 64 products alone
and then twice at once, and the answers must be identical (`dedup_answers`).

Prints JSON; progress goes to stderr. Targets (issue "Fast at every load"), reported, not asserted,
each a median of per-repetition ratios with its range:
  at concurrency 1, batched p50 <= 1.2x unbatched p50
  at concurrency 8, batched >= 1.0x unbatched requests/s and >= 1.5x LitServe (with --litserve)
  at concurrency 32 and 64, batched / LitServe >= 1.65 and 2.07 (the last round's; with --litserve)
  dedup >= 1.3x no-dedup requests/s on the duplicate load, with identical answers
Earlier rounds' figures, still reported: batched / unbatched at 32, batched at 32 / the in-process
pipeline, p99 at 32, attrx score / the in-process pipeline.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LUA = r"""
local bodies = {}
local counter = 0
function init(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
end
request = function()
  counter = counter + 1
  return wrk.format("POST", "/v1/extract", {["Content-Type"] = "application/json"}, bodies[(counter % #bodies) + 1])
end
done = function(summary, latency, requests)
  io.write(string.format('RESULT {"requests": %d, "duration_us": %d, "status_errors": %d, "timeouts": %d, ' ..
    '"connect_errors": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.timeout, summary.errors.connect,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """CPU time of a server process and its children (LitServe works in child processes)."""
    import psutil

    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def in_process(bundle_dir: str, products, batch: int, seconds: float) -> dict:
    """Preprocess + inference at `batch`, sequentially in this process: no HTTP, no queue."""
    from attrx.service.contract.bundle import load_bundle
    from attrx.service.inference.predictor import Predictor
    from attrx.service.inference.runtime import load_backend

    b = load_bundle(bundle_dir)
    pred = Predictor(b, backend=load_backend(b))
    items = [(p.title, p.image.read_bytes() if p.image else None) for p in products]
    pred.run_batch([pred.decode_request(*items[0]).inputs] * batch)  # warm-up
    n, k, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        chunk = [items[(k + i) % len(items)] for i in range(batch)]
        k += batch
        pred.run_batch([pred.decode_request(t, im).inputs for t, im in chunk])
        n += batch
    rate = n / (time.perf_counter() - t0)
    feeds = pred.batch([pred.decode_request(*items[i % len(items)]).inputs for i in range(batch)])
    runs = []
    for _ in range(30):
        t = time.perf_counter()
        pred.predict(feeds)
        runs.append(time.perf_counter() - t)
    return {"batch": batch, "precision": pred.backend.precision, "items_per_s": round(rate, 1),
            "median_batch_inference_ms": round(statistics.median(runs) * 1000, 3)}


def run_wrk(url: str, bodies: Path, script: Path, concurrency: int, duration: float) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(concurrency), "-d", f"{max(1, round(duration))}s", "--timeout", "10s", "-s", str(script),
         url, "--", str(bodies)], capture_output=True, text=True, timeout=duration + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    m = re.search(r"^RESULT (.*)$", out.stdout, re.M)
    if not m:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    r = json.loads(m.group(1))
    secs = r["duration_us"] / 1e6
    ok = r["requests"] - r["status_errors"]
    return {
        "concurrency": concurrency, "requests": r["requests"], "errors": r["status_errors"] + r["timeouts"],
        "requests_per_s": round(ok / secs, 1),
        "p50_ms": round(r["p50_us"] / 1000, 2), "p95_ms": round(r["p95_us"] / 1000, 2),
        "p99_ms": round(r["p99_us"] / 1000, 2),
        "loadgen_cpu_cores": round(((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)) / secs, 2),
    }


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL to whatever is left after 30 s."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children still alive after their parent left
    except ProcessLookupError:
        pass


def server_command(args, name: str, port: int, extra: list[str]) -> list[str]:
    if name == "litserve":
        return [sys.executable, str(ROOT / "benchmarks/litserve_peer.py"), "--bundle", args.bundle, "--port", str(port),
                "--max-batch-size", str(args.max_batch_size), "--batch-timeout-ms", str(args.max_queue_delay_ms)]
    exe = str(Path(sys.executable).parent / "attrx")
    bundle = args.compare_bundle if name == "compare" else args.bundle
    return [exe, "serve", "--bundle", bundle, "--port", str(port), "--log-level", "warning",
            "--max-queue-size", "4096", "--max-in-flight", "4096", "--request-timeout-ms", "30000", *extra]


def serve_and_load(args, name: str, extra: list[str], bodies: Path, script: Path, concurrency: list[int],
                   check: list | None = None) -> list[dict]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_log = open(Path(tempfile.gettempdir()) / f"attrx-bench-{name}.log", "w")  # never an unread pipe
    # its own process group: LitServe's worker processes outlive a signal to their parent alone
    proc = subprocess.Popen(server_command(args, name, port, extra), stdout=subprocess.DEVNULL, stderr=server_log,
                            start_new_session=True)
    import httpx

    try:
        end = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > end or proc.poll() is not None:
                raise RuntimeError(f"server did not get ready; see {server_log.name}")
            time.sleep(0.1)
        if check is not None:
            check.append(dedup_answers(url, bodies))
            log(f"{name}: answers to products alone and twice at once: {check[-1]}")
        rows = []
        for c in concurrency:
            c0, t0 = cpu_seconds(proc.pid), time.monotonic()
            row = run_wrk(url, bodies, script, c, args.duration)
            row["server_cpu_cores"] = round((cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0), 2)
            rows.append(row)
            log(f"{name:9s} c={c:3d}: {row['requests_per_s']:7.1f} req/s  p50 {row['p50_ms']:6.1f} ms  "
                f"p95 {row['p95_ms']:6.1f}  p99 {row['p99_ms']:6.1f}  errors {row['errors']}  "
                f"(server {row['server_cpu_cores']} cores, wrk {row['loadgen_cpu_cores']})")
        if name == "litserve":
            return rows
        metrics = httpx.get(url + "/metrics", timeout=5).text
        s = re.search(r"^attrx_batch_size_sum ([0-9.e+]+)$", metrics, re.M)
        n = re.search(r"^attrx_batch_size_count ([0-9.e+]+)$", metrics, re.M)
        if s and n and float(n.group(1)):
            rows.append({"mean_batch_size_over_run": round(float(s.group(1)) / float(n.group(1)), 2)})
        return rows
    finally:
        stop_group(proc)
        server_log.close()


def load_bodies(catalog: str, n: int, prefix: str) -> tuple[list, Path, Path]:
    """The catalog's first n products with a title and an image, as wrk's request bodies (JSON, the
    image base64) and its Lua script, in a new temporary folder."""
    from attrx.service.catalog.reader import read_catalog

    products = [p for p in read_catalog(catalog).products if p.title and p.image][:n]
    work = Path(tempfile.mkdtemp(prefix=prefix))
    bodies, script = work / "bodies.jsonl", work / "post.lua"
    bodies.write_text("".join(json.dumps({"title": p.title, "image_base64": base64.b64encode(
        p.image.read_bytes()).decode()}) + "\n" for p in products))
    script.write_text(LUA)
    return products, bodies, script


def dup_bodies(bodies: Path, out: Path) -> Path:
    """Every product twice in a row: wrk's one thread sends consecutive requests on different
    connections, so each pair is in flight together."""
    lines = bodies.read_text().splitlines(keepends=True)
    out.write_text("".join(line + line for line in lines))
    return out


def dedup_answers(url: str, bodies: Path, n: int = 64) -> dict:
    """Each of n products alone, then twice at once: the predictions must be identical."""
    import concurrent.futures as cf

    import httpx

    lines = bodies.read_text().splitlines()[:n]
    with httpx.Client(timeout=30) as c:
        alone = [c.post(url + "/v1/extract", content=b, headers={"Content-Type": "application/json"})
                 .json()["predictions"] for b in lines]
    with cf.ThreadPoolExecutor(16) as ex:
        pairs = list(ex.map(lambda b: httpx.post(url + "/v1/extract", content=b, timeout=30,
                                                 headers={"Content-Type": "application/json"}).json()["predictions"],
                            [b for b in lines for _ in range(2)]))
    differ = sum(pairs[2 * i] != alone[i] or pairs[2 * i + 1] != alone[i] for i in range(len(lines)))
    return {"products": len(lines), "differ": differ, "identical": differ == 0}


def summarise_reps(reps: list[list[dict]], concurrency: list[int]) -> list[dict]:
    """Per concurrency: the median over repetitions of req/s and latencies, with the req/s range."""
    out = []
    for c in concurrency:
        rows = [r for rep in reps for r in rep if r.get("concurrency") == c]
        med = {k: round(statistics.median(r[k] for r in rows), 2) for k in
               ("requests_per_s", "p50_ms", "p95_ms", "p99_ms", "errors", "loadgen_cpu_cores")}
        rps = [r["requests_per_s"] for r in rows]
        out.append({"concurrency": c, **med, "requests_per_s_range": [min(rps), max(rps)], "n": len(rows)})
    sizes = [r["mean_batch_size_over_run"] for rep in reps for r in rep if "mean_batch_size_over_run" in r]
    if sizes:
        out.append({"mean_batch_size_over_run": round(statistics.median(sizes), 2)})
    return out


def ratio_of(ours: list[list[dict]], peer: list[list[dict]], c: int, key: str) -> dict:
    """ours / peer of `key` at concurrency c, repetition by repetition: median and range."""
    ratios = [next(r for r in a if r.get("concurrency") == c)[key] / next(r for r in b if r.get("concurrency") == c)[key]
              for a, b in zip(ours, peer, strict=True)]
    return {"measured": round(statistics.median(ratios), 3), "range": [round(min(ratios), 3), round(max(ratios), 3)]}


def ratio_by_rep(ours: list[list[dict]], peer: list[list[dict]], concurrency: list[int]) -> list[dict]:
    """ours / peer req/s (and p99) per concurrency, repetition by repetition (they ran side by side)."""
    out = []
    for c in concurrency:
        ratios = [next(r for r in a if r.get("concurrency") == c)["requests_per_s"]
                  / next(r for r in b if r.get("concurrency") == c)["requests_per_s"] for a, b in zip(ours, peer, strict=True)]
        p99 = [next(r for r in a if r.get("concurrency") == c)["p99_ms"]
               / next(r for r in b if r.get("concurrency") == c)["p99_ms"] for a, b in zip(ours, peer, strict=True)]
        out.append({"concurrency": c, "req_per_s_ratio": round(statistics.median(ratios), 3),
                    "range": [round(min(ratios), 3), round(max(ratios), 3)],
                    "p99_ratio": round(statistics.median(p99), 3)})
    return out


def targets(result: dict, max_queue_delay_ms: float, reps: dict | None = None) -> dict:
    """The issues' targets, each with its measured figure and whether it is met."""
    def at(rows, c):
        return next((r for r in rows if r.get("concurrency") == c), None)

    inproc, sc = result["in_process"], result["score"]
    b32, u32 = at(result["batched"], 32), at(result["unbatched"], 32)
    bound = max_queue_delay_ms + 3 * inproc["median_batch_inference_ms"]
    out = {"score_over_in_process": {"measured": round(sc["items_per_s"] / inproc["items_per_s"], 2), "target": 0.7}}
    if b32 and u32:  # concurrency 32 was measured
        out.update({
            "batched_over_unbatched_at_c32": {"measured": round(b32["requests_per_s"] / u32["requests_per_s"], 2),
                                              "target": 1.5},
            "http_over_in_process_at_c32": {"measured": round(b32["requests_per_s"] / inproc["items_per_s"], 2),
                                            "target": 0.8},
            "p99_at_c32_ms": {"measured": b32["p99_ms"], "target_at_most": round(bound, 2)},
        })
    if reps is not None:
        out.update(_load_targets(reps))
    for t in out.values():
        t["met"] = t["measured"] <= t["target_at_most"] if "target_at_most" in t else t["measured"] >= t["target"]
    return out


def _load_targets(reps: dict) -> dict:
    """Issue 24's: per-repetition ratios at the levels it names."""
    out = {}
    b, u = reps["batched"], reps["unbatched"]
    if any(r.get("concurrency") == 1 for r in b[0]):
        out["batched_p50_over_unbatched_at_c1"] = {**ratio_of(b, u, 1, "p50_ms"), "target_at_most": 1.2}
    if any(r.get("concurrency") == 8 for r in b[0]):
        out["batched_over_unbatched_at_c8"] = {**ratio_of(b, u, 8, "requests_per_s"), "target": 1.0}
    if "litserve" in reps:
        for c, target in ((8, 1.5), (32, 1.65), (64, 2.07)):
            if any(r.get("concurrency") == c for r in b[0]):
                out[f"over_litserve_at_c{c}"] = {**ratio_of(b, reps["litserve"], c, "requests_per_s"), "target": target}
    if "dedup" in reps:
        c = next(r["concurrency"] for r in reps["dedup"][0] if "concurrency" in r)
        out[f"dedup_over_no_dedup_at_c{c}"] = {**ratio_of(reps["dedup"], reps["no-dedup"], c, "requests_per_s"),
                                               "target": 1.3}
    return out


def score_run(args) -> dict:
    exe = str(Path(sys.executable).parent / "attrx")
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([exe, "score", args.catalog, "--bundle", args.bundle, "--out", f"{tmp}/s.jsonl",
                              "--quiet"], capture_output=True, text=True, timeout=600)
    m = re.search(r"scored (\d+), failed (\d+).*?, ([0-9.]+) items/s", out.stdout)
    if not m:
        raise RuntimeError(out.stdout + out.stderr)
    return {"scored": int(m.group(1)), "failed": int(m.group(2)), "items_per_s": float(m.group(3))}


def server_configs(a) -> dict[str, list[str]]:
    """Each configuration's `attrx serve` flags (LitServe's: none)."""
    batching = ["--max-batch-size", str(a.max_batch_size)]
    if a.max_queue_delay_ms is not None:
        batching += ["--max-queue-delay-ms", str(a.max_queue_delay_ms)]
    if a.batching is not None:
        batching += ["--batching", a.batching]
    a.max_queue_delay_ms = 5.0 if a.max_queue_delay_ms is None else a.max_queue_delay_ms  # for LitServe
    configs = {"batched": batching, "batched-1w": [*batching, "--workers", "1"],
               "unbatched": ["--max-batch-size", "1"]}
    if a.litserve:
        configs["litserve"] = []
    if a.compare_bundle:
        configs["compare"] = batching
    if a.dedup_cost:
        configs["batched-no-dedup"] = [*batching, "--no-dedup"]
    if a.drift_cost:
        configs["batched-no-drift"] = [*batching, "--drift-window", "0"]
    if not a.no_duplicates:
        configs.update({"dedup": batching, "no-dedup": [*batching, "--no-dedup"],
                        "cache": [*batching, "--response-cache", str(a.response_cache)]})
    return configs


def run_configs(a, configs: dict, bodies: Path, dups: Path, script: Path) -> tuple[dict, list]:
    """Every configuration --repeats times, alternating: each repetition starts with the next one."""
    reps = {name: [] for name in configs}
    answers = []
    for rep in range(a.repeats):
        names = list(configs)
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            dup = name in ("dedup", "no-dedup", "cache")
            reps[name].append(serve_and_load(a, name, configs[name], dups if dup else bodies, script,
                                             [a.dup_concurrency] if dup else a.concurrency,
                                             check=answers if name == "dedup" else None))
    return reps, answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="build/demo-bundle")
    ap.add_argument("--catalog", default="build/demo/data/catalog.csv")
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32, 64])
    ap.add_argument("--duration", type=float, default=6.0, help="seconds per load level")
    ap.add_argument("--max-queue-delay-ms", type=float, default=None, help="default: the server's")
    ap.add_argument("--batching", choices=["adaptive", "fixed"], default=None, help="default: the server's")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--dup-concurrency", type=int, default=32, help="concurrency of the duplicate load")
    ap.add_argument("--response-cache", type=int, default=4096, help="entries, for the `cache` configuration")
    ap.add_argument("--no-duplicates", action="store_true", help="skip the dedup / no-dedup / cache configurations")
    ap.add_argument("--drift-cost", action="store_true",
                    help="also `batched-no-drift` (--drift-window 0): what drift telemetry costs over HTTP")
    ap.add_argument("--dedup-cost", action="store_true",
                    help="also `batched-no-dedup` on the ordinary load, where nothing repeats: what dedup costs")
    ap.add_argument("--products", type=int, default=256, help="distinct products the load cycles through")
    ap.add_argument("--repeats", type=int, default=3, help="alternating repetitions of every configuration")
    ap.add_argument("--litserve", action="store_true",
                    help="also serve the same bundle with LitServe (benchmarks/litserve_peer.py; pip install -e '.[bench]')")
    ap.add_argument("--compare-bundle", help="also serve this bundle batched, and report --bundle / it")
    a = ap.parse_args()
    if a.litserve:
        try:
            import litserve  # noqa: F401
        except ImportError:
            raise SystemExit("--litserve needs litserve: pip install -e '.[bench]'") from None
    if shutil.which("wrk") is None:
        raise SystemExit("benchmarks/serve.py needs wrk (Debian: apt-get install wrk)")


    products, bodies, script = load_bodies(a.catalog, a.products, "attrx-bench-")
    work = bodies.parent

    log("in-process pipeline (preprocess + inference, batch 32, no HTTP)...")
    inproc = in_process(a.bundle, products, 32, 5.0)
    log(f"in-process: {inproc['items_per_s']} items/s, median batch-32 inference {inproc['median_batch_inference_ms']} ms")
    configs = server_configs(a)
    reps, answers = run_configs(a, configs, bodies, dup_bodies(bodies, work / "bodies-dup.jsonl"), script)
    dup_names = ("dedup", "no-dedup", "cache")
    summary = {name: summarise_reps(rows, a.concurrency) for name, rows in reps.items() if name not in dup_names}
    batched, unbatched = summary["batched"], summary["unbatched"]
    log("attrx score on the catalog...")
    sc = score_run(a)
    log(f"attrx score: {sc['items_per_s']} items/s")

    result = {
        "benchmark": "serve", "machine": {"cpus": os.cpu_count()},
        "settings": {"max_batch_size": a.max_batch_size, "max_queue_delay_ms": a.max_queue_delay_ms,
                     "duration_s": a.duration, "products": len(products), "loadgen": "wrk -t1"},
        "repeats": a.repeats, "in_process": inproc, "batched": batched, "batched_1_worker": summary["batched-1w"],
        "unbatched": unbatched, "score": sc,
        "front_ends_2_over_1": ratio_by_rep(reps["batched"], reps["batched-1w"], a.concurrency),
        "raw": reps,
    }
    if a.litserve:
        result["litserve"] = summary["litserve"]
        result["attrx_over_litserve"] = ratio_by_rep(reps["batched"], reps["litserve"], a.concurrency)
    if a.compare_bundle:
        result["compare"] = {"bundle": a.compare_bundle, "batched": summary["compare"],
                             "bundle_over_compare": ratio_by_rep(reps["batched"], reps["compare"], a.concurrency)}
    if a.dedup_cost:
        result["dedup_cost"] = {"batched_no_dedup": summary["batched-no-dedup"],
                                "batched_over_no_dedup": ratio_by_rep(reps["batched"], reps["batched-no-dedup"],
                                                                      a.concurrency)}
    if a.drift_cost:
        result["drift_cost"] = {"batched_no_drift": summary["batched-no-drift"],
                                "batched_over_no_drift": ratio_by_rep(reps["batched"], reps["batched-no-drift"],
                                                                      a.concurrency)}
    if not a.no_duplicates:
        result["duplicates"] = {
            "load": f"every product twice in a row, concurrency {a.dup_concurrency}",
            "answers": {"identical": all(x["identical"] for x in answers), "checks": answers},
            **{name: summarise_reps(reps[name], [a.dup_concurrency]) for name in ("dedup", "no-dedup", "cache")},
            "cache_over_dedup": ratio_of(reps["cache"], reps["dedup"], a.dup_concurrency, "requests_per_s"),
        }
    result["targets"] = targets(result, a.max_queue_delay_ms, reps)
    print(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

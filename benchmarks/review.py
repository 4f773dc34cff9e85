"""The simulated reviewer (issue 23): what a round of review buys, and which queue order buys most.

On the fashion-products catalog's id-hash split (the one `attrx train` uses):
- the training split is cut, per seed, into a labelled part (--labelled-frac) and an unlabelled pool;
- a model (`small-effnet`, its pretrained image tower locked, its outputs computed once for every
  product and shared by all runs) trains on the labelled part; thresholds are calibrated on the
  validation split, as `attrx train` does;
- each round, the pool is scored as `attrx score` decides it (thresholds per situation, conflicts,
  constraints), the review queue is every pool product with an attribute not accepted, and the top
  --per-round products of an order are "reviewed": their attributes that were not accepted get
  their true labels (nothing else);
- the model is then improved as `attrx improve` does it (fine-tuned from the last round's weights on
  the labelled part plus every reviewed product, reviewed labels weighted --trusted-weight), and
  recalibrated on the validation split (never on reviewed products).

Orders: `priority` (the queue's own: expected wrong values corrected, service/scoring/queue_writer.py),
`lowest-confidence`, `random` (among the queued products), and `control`: the same fine-tuning steps
with no new labels (labelled products drawn again, at the same weight, in place of reviewed ones), so
the labels' gain is separated from more training's. Every figure is on the untouched test split:
coverage at the P>=0.90 thresholds with its realised precision, and accuracy, averaged over the
attributes; orders are compared paired by seed.

    python benchmarks/review.py                  # 3 seeds x 3 rounds x 200 products (~45 min on 2 cores)
    python benchmarks/review.py --seeds 1 --rounds 1 --per-round 50 --max-products 2000   # a smoke run

Prints one JSON document (also written to --out/results.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CATALOG = ROOT.parent / "shared" / "data" / "fashion-products" / "catalog.csv"
ATTRS = "gender,masterCategory,subCategory,articleType,baseColour,season,usage"
ORDERS = ("priority", "lowest-confidence", "random", "control")
TARGET = "0.90"


def log(msg: str) -> None:
    print(f"[review {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class World:
    """What every run shares: the encoded catalog, the cached tower outputs, situations, the config."""
    run: object  # training.prepare.Prepared (all rows of the catalog)
    cfg: object  # training.params.TrainConfig of the first training
    features: object
    situations: np.ndarray  # [N, A] per catalog row
    test: np.ndarray
    compute: object
    specials: dict = field(default_factory=dict)
    vocab: int = 0


def _catalog(a, out: Path) -> Path:
    """The catalog, or (--max-products) its first rows with absolute image paths, for smoke runs."""
    from subset import first_rows

    return first_rows(a.catalog, a.max_products, out)


def world(a, out: Path) -> World:
    from tokenizers import Tokenizer

    from attrx.service.contract.decisions import situation_index
    from attrx.service.contract.situations import SituationReader
    from attrx.training.data import features, tokenizer
    from attrx.training.device import resolve
    from attrx.training.params import TrainConfig
    from attrx.training.prepare import prepare

    cfg = TrainConfig(catalog=str(_catalog(a, out)), attributes=a.attributes.split(","), out=str(out / "scratch"),
                      config="small-effnet", lock_image=True, warmup_epochs=1, e2e_epochs=a.epochs, e2e_lr=2e-3,
                      tune_epochs=1, batch_size=64, min_class_count=10, modality_dropout=0.3, threads=a.threads,
                      image_cache=str(out / "cache"), progress=False, patience=3)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    run, cfg = prepare(cfg, Path(cfg.out))
    every = np.arange(len(run.data))
    compute = resolve("cpu", "fp32")
    t0 = time.time()
    store, warm = features.tower_features(run.model, run.data, every, out / "cache", Path(cfg.catalog), run.pre,
                                          device=compute.device, progress=False)
    log(f"tower outputs for {len(every)} products {'read from the cache' if warm else 'computed'} "
        f"({time.time() - t0:.0f}s)")
    reader = SituationReader(run.label_words)
    sits = np.array([situation_index(reader.read(p.title, p.image is not None)) for p in run.data.products],
                    dtype=np.int64).reshape(len(run.data), -1)
    raw = Tokenizer.from_file(str(run.tok_file))
    return World(run, cfg, store, sits, run.data.indices("test"), compute, tokenizer.special_ids(raw),
                 raw.get_vocab_size())


def new_model(w: World, seed: int):
    import torch

    from attrx.training.models.factory import create_model

    torch.manual_seed(seed)
    model, _ = create_model(w.cfg, [len(c) for c in w.run.classes.values()], w.specials, w.vocab)
    return model


def train_rows(w: World, model, labels: np.ndarray, rows: np.ndarray, weights: np.ndarray | None, seed: int,
               fine_tune: bool, a) -> None:
    """Train (or fine-tune) model in place on `rows`, reading `labels`; the best validation loss wins."""
    import contextlib
    import io

    import torch

    from attrx.training.data.augment import TitleSilencer
    from attrx.training.distributed import Dist
    from attrx.training.loop import Run, fit

    torch.manual_seed(seed)
    cfg = w.cfg.model_copy(update={"seed": seed})
    if fine_tune:
        cfg = cfg.model_copy(update={"warmup_epochs": 0, "e2e_epochs": a.fine_tune_epochs, "e2e_lr": a.fine_tune_lr,
                                     "tune_epochs": 0})
    data = replace(w.run.data, labels=labels)
    run = replace(w.run, data=data, tr=np.sort(rows))
    silencer = TitleSilencer(run.label_words, cfg.silence_title, run.tok, seed) if cfg.silence_title else None
    with contextlib.redirect_stdout(io.StringIO()):
        fit(Run(model, run, cfg, w.compute, Dist(), w.compute.generator(seed), silencer, io.StringIO(),
                features=w.features, item_weights=weights))


def calibrate(w: World, model, constraints) -> dict:
    import contextlib
    import io

    from attrx.training.evaluation.calibration import calibrate_checkpoint

    with contextlib.redirect_stdout(io.StringIO()):
        return calibrate_checkpoint(None, model, w.run.data, w.run.va, w.run.classes, w.run.tok, w.run.label_words,
                                    constraints, features=w.features)


def decisions(w: World, model, calib: dict, rows: np.ndarray):
    """As `attrx score` decides: (accepted [N, A], confidence [N, A], value [N, A]) at P>=0.90."""
    from attrx.service.contract.decisions import decide
    from attrx.training.evaluation.calibration import decision_rules
    from attrx.training.evaluation.predict import predict_outputs

    outs = predict_outputs(model, w.run.data, rows, features=w.features)
    rules, decoder = decision_rules(calib, w.run.classes)
    d = decide(rules, decoder, outs["probs"], w.situations[rows], TARGET, outs["text"], outs["image"])
    return np.stack(d.accepted, 1), np.stack(d.confidence, 1), np.stack(d.value, 1)


def test_figures(w: World, model, calib: dict) -> dict:
    """Coverage at the P>=0.90 thresholds, its realised precision and accuracy, per attribute and averaged."""
    from attrx.training.data.encode import IGNORE

    acc, _, val = decisions(w, model, calib, w.test)
    y = w.run.data.labels[w.test]
    per = {}
    for j, a in enumerate(w.run.classes):
        lab = y[:, j] != IGNORE
        right = val[lab, j] == y[lab, j]
        took = acc[lab, j]
        per[a] = {"coverage": float(took.mean()), "precision": float(right[took].mean()) if took.any() else None,
                  "accuracy": float(right.mean())}
    precs = [p["precision"] for p in per.values() if p["precision"] is not None]
    return {"coverage": float(np.mean([p["coverage"] for p in per.values()])),
            "precision": float(np.mean(precs)) if precs else None,
            "precision_pooled": _pooled(acc, val, y),
            "accuracy": float(np.mean([p["accuracy"] for p in per.values()])), "attributes": per}


def _pooled(acc, val, y) -> float | None:
    from attrx.training.data.encode import IGNORE

    took = acc & (y != IGNORE)
    return float((val[took] == y[took]).mean()) if took.any() else None


def choose(order: str, pool: np.ndarray, acc: np.ndarray, conf: np.ndarray, n: int, rng) -> np.ndarray:
    """The positions (into pool) of the n queued products an order puts first."""
    from attrx.service.scoring.queue_writer import lowest_confidence, priorities

    queued = np.flatnonzero(~acc.all(1))
    if order == "priority":
        key = priorities(conf[queued], acc[queued])
    elif order == "lowest-confidence":
        key = lowest_confidence(conf[queued], acc[queued])
    else:
        key = rng.random(len(queued))
    return queued[np.argsort(-key, kind="stable")[:n]]


def review(w: World, labels: np.ndarray, truth: np.ndarray, rows: np.ndarray, acc: np.ndarray) -> int:
    """The simulated reviewer answers the attributes not accepted of `rows` (in place); labels spent."""
    from attrx.training.data.encode import IGNORE

    answer = ~acc & (truth[rows] != IGNORE)
    for r, ok in zip(rows, answer, strict=True):
        labels[r, ok] = truth[r, ok]
    return int(answer.sum())


def run_order(w: World, a, order: str, seed: int, start: dict, labelled: np.ndarray, pool: np.ndarray,
              base: np.ndarray, constraints) -> list[dict]:
    """Rounds of one order from the seed's first model: per round, the test figures and labels spent."""
    model = new_model(w, seed)
    model.load_state_dict(start["state"])
    calib, labels, truth = start["calib"], base.copy(), w.run.data.labels
    rng = np.random.default_rng([seed, ORDERS.index(order)])
    reviewed, spent, rounds = np.array([], dtype=np.int64), 0, [{"round": 0, **start["figures"],
                                                                 "products_reviewed": 0, "labels_spent": 0}]
    weights = np.ones(len(w.run.data), dtype=np.float32)
    for rnd in range(1, a.rounds + 1):
        t0 = time.time()
        if order == "control":  # the same steps, no new labels: labelled products drawn again
            extra = rng.choice(labelled, size=rnd * a.per_round, replace=True)
            rows = np.concatenate([labelled, extra])
        else:
            todo = np.setdiff1d(pool, reviewed)
            acc, conf, _ = decisions(w, model, calib, todo)
            pick = choose(order, todo, acc, conf, a.per_round, rng)
            spent += review(w, labels, truth, todo[pick], acc[pick])
            reviewed = np.concatenate([reviewed, todo[pick]])
            weights[todo[pick]] = a.trusted_weight
            rows = np.concatenate([labelled, reviewed])
        train_rows(w, model, labels, rows, weights, seed * 1000 + rnd, True, a)
        calib = calibrate(w, model, constraints)
        fig = test_figures(w, model, calib)
        rounds.append({"round": rnd, **fig, "products_reviewed": len(reviewed), "labels_spent": spent,
                       "seconds": round(time.time() - t0, 1)})
        log(f"seed {seed} {order} round {rnd}: coverage {fig['coverage']:.4f} precision {fig['precision']:.4f} "
            f"accuracy {fig['accuracy']:.4f} ({len(reviewed)} products, {spent} labels; {time.time() - t0:.0f}s)")
    return rounds


def run_seed(w: World, a, seed: int) -> dict:
    import copy

    from attrx.training.data.encode import IGNORE
    from attrx.training.evaluation.constraint_learning import learn_constraints

    rng = np.random.default_rng(seed)
    perm = rng.permutation(w.run.tr)
    k = int(round(len(perm) * a.labelled_frac))
    labelled, pool = np.sort(perm[:k]), np.sort(perm[k:])
    base = w.run.data.labels.copy()
    base[pool] = IGNORE
    constraints = learn_constraints([w.run.data.products[i] for i in labelled], w.run.classes)
    t0 = time.time()
    model = new_model(w, seed)
    train_rows(w, model, base, labelled, None, seed, False, a)
    calib = calibrate(w, model, constraints)
    start = {"state": copy.deepcopy(model.state_dict()), "calib": calib, "figures": test_figures(w, model, calib)}
    first = round(time.time() - t0, 1)
    log(f"seed {seed}: first model on {k} labelled products: coverage {start['figures']['coverage']:.4f} ({first:.0f}s)")
    arms = {o: run_order(w, a, o, seed, start, labelled, pool, base, constraints) for o in ORDERS}
    return {"seed": seed, "labelled": int(k), "pool": int(len(pool)), "first_model_seconds": first,
            "seed_seconds": round(time.time() - t0, 1), "orders": arms}


def _spread(xs: list[float | None]) -> dict:
    """Mean, min, max and the per-seed values (a None, e.g. no precision where nothing was accepted, is left out)."""
    kept = [x for x in xs if x is not None]
    if not kept:
        return {"mean": None, "min": None, "max": None, "per_seed": xs}
    xs = kept
    return {"mean": round(float(np.mean(xs)), 4), "min": round(float(np.min(xs)), 4),
            "max": round(float(np.max(xs)), 4), "per_seed": [round(float(x), 4) for x in xs]}


def summarise(seeds: list[dict]) -> dict:
    """Paired by seed: each order's last-round gain over control, and the targets."""
    last = {o: [s["orders"][o][-1] for s in seeds] for o in ORDERS}
    out = {}
    for o in ORDERS:
        out[o] = {"coverage": _spread([r["coverage"] for r in last[o]]),
                  "precision": _spread([r["precision"] for r in last[o]]),
                  "accuracy": _spread([r["accuracy"] for r in last[o]]),
                  "coverage_gain_vs_control": _spread([r["coverage"] - c["coverage"]
                                                       for r, c in zip(last[o], last["control"], strict=True)]),
                  "labels_spent": _spread([r["labels_spent"] for r in last[o]])}
    gain = {o: out[o]["coverage_gain_vs_control"]["mean"] for o in ORDERS}
    ratio = gain["priority"] / gain["random"] if gain["random"] > 0 else None
    out["targets"] = {
        "priority_gain_vs_control>=0.02": {"value": gain["priority"], "met": gain["priority"] >= 0.02},
        "priority_gain>=1.3x_random": {"value": None if ratio is None else round(ratio, 3),
                                       "met": ratio is not None and ratio >= 1.3},
        "precision>=0.88": {"value": out["priority"]["precision"]["min"],
                            "met": (out["priority"]["precision"]["min"] or 0.0) >= 0.88},
        "beats_lowest_confidence": {"value": round(gain["priority"] - gain["lowest-confidence"], 4),
                                    "met": gain["priority"] > gain["lowest-confidence"]}}
    return out


def markdown(doc: dict) -> str:
    """The per-round table (mean over seeds, min-max) and the targets, for docs/review-queue.md."""
    seeds, lines = doc["seeds"], []
    lines += ["| order | round | products reviewed | attribute labels | coverage at P>=0.90 | realised precision "
              "| accuracy |", "|---|---|---|---|---|---|---|"]
    for o in ORDERS:
        for k in range(len(seeds[0]["orders"][o])):
            rows = [s["orders"][o][k] for s in seeds]
            cells = []
            for m in ("coverage", "precision", "accuracy"):
                sp = _spread([r[m] for r in rows])
                cells.append(f"{sp['mean']:.4f} ({sp['min']:.4f}-{sp['max']:.4f})")
            lines.append(f"| {o} | {k} | {rows[0]['products_reviewed']} | "
                         f"{_spread([r['labels_spent'] for r in rows])['mean']:.0f} | " + " | ".join(cells) + " |")
    lines += ["", "| target | value | met |", "|---|---|---|"]
    lines += [f"| {k} | {v['value']} | {'yes' if v['met'] else 'no'} |" for k, v in doc["summary"]["targets"].items()]
    gains = {o: doc["summary"][o]["coverage_gain_vs_control"] for o in ORDERS if o != "control"}
    lines += ["", "Coverage gain over control after the last round, paired by seed (mean, min-max, per seed):", ""]
    lines += [f"- {o}: {g['mean']:+.4f} ({g['min']:+.4f} to {g['max']:+.4f}; {', '.join(f'{x:+.4f}' for x in g['per_seed'])})"
              for o, g in gains.items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", default=str(DEFAULT_CATALOG))
    ap.add_argument("--out", default=str(ROOT / "build" / "review"))
    ap.add_argument("--attributes", default=ATTRS)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-round", type=int, default=200, help="products reviewed per round")
    ap.add_argument("--labelled-frac", type=float, default=0.5, help="share of the training split labelled at first")
    ap.add_argument("--epochs", type=int, default=8, help="end-to-end epochs of the first model")
    ap.add_argument("--fine-tune-epochs", type=int, default=2)
    ap.add_argument("--fine-tune-lr", type=float, default=5e-4)
    ap.add_argument("--trusted-weight", type=float, default=2.0, help="loss weight of a reviewed label")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-products", type=int, default=0, help="only the catalog's first rows (smoke runs)")
    ap.add_argument("--render-only", action="store_true", help="rewrite OUT/results.md from OUT/results.json")
    a = ap.parse_args(argv)
    if a.render_only:
        (Path(a.out) / "results.md").write_text(markdown(json.loads((Path(a.out) / "results.json").read_text())))
        return
    if not Path(a.catalog).is_file():
        raise SystemExit(f"benchmarks/review.py: no catalog at {a.catalog}; point --catalog to the fashion-products "
                         "catalog.csv (../shared/data/fashion-products/)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with contextlib.redirect_stdout(sys.stderr):  # attrx's own progress lines: stdout is the JSON
        w = world(a, out)
        seeds = [run_seed(w, a, s) for s in range(a.seeds)]
    doc = {"benchmark": "review", "argv": sys.argv[1:], "config": {k: v for k, v in vars(a).items()},
           "split": {"train": int(len(w.run.tr)), "val": int(len(w.run.va)), "test": int(len(w.test))},
           "target": TARGET, "seeds": seeds, "summary": summarise(seeds), "seconds": round(time.time() - t0, 1)}
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    (out / "results.md").write_text(markdown(doc))
    print(json.dumps({k: doc[k] for k in ("config", "split", "summary", "seconds")}, indent=1))


if __name__ == "__main__":
    main()

"""Fault injection into the engine's model runs, for tests and `benchmarks/faults.py`: never set it
in production.

`ATTRX_INJECT_FAULTS` holds comma-separated `key=value` pairs:

- `raise=P`: each batch raises `InjectedFault` with probability P (0-1);
- `slow=F`: batches take F times as long (the extra time is slept) ...
- `slow_after=S`, `slow_for=S`: ... from S seconds after the engine is warm, for S seconds
  (default: from then on, for ever);

Faults start once the engine has warmed up (`arm()`), so a server with faults still starts.
- `seed=N`: the random draws' seed (default 0).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable

ENV = "ATTRX_INJECT_FAULTS"
KEYS = ("raise", "slow", "slow_after", "slow_for", "seed")


class InjectedFault(RuntimeError):
    """A batch failure injected on purpose (ATTRX_INJECT_FAULTS)."""


def parse(text: str) -> dict[str, float]:
    spec: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in KEYS:
            raise ValueError(f"{ENV}: {part!r} is not one of {', '.join(k + '=...' for k in KEYS)}")
        try:
            spec[key] = float(value)
        except ValueError:
            raise ValueError(f"{ENV}: {key} wants a number, not {value!r}") from None
    return spec


class Faulty:
    """run_batch with the faults of `spec`, once armed."""

    def __init__(self, run_batch: Callable, spec: dict[str, float]):
        self.run_batch, self.spec = run_batch, spec
        self.draw = random.Random(int(spec.get("seed", 0)))
        self.armed_at: float | None = None

    def arm(self) -> None:
        self.armed_at = time.monotonic()

    def __call__(self, items):
        if self.armed_at is None:
            return self.run_batch(items)
        spec = self.spec
        if spec.get("raise", 0.0) and self.draw.random() < spec["raise"]:
            raise InjectedFault(f"a fault injected by {ENV}")
        t0 = time.monotonic()
        out = self.run_batch(items)
        after, span = spec.get("slow_after", 0.0), spec.get("slow_for", float("inf"))
        if spec.get("slow", 1.0) > 1 and after <= t0 - self.armed_at < after + span:
            time.sleep((spec["slow"] - 1) * (time.monotonic() - t0))
        return out


def injected(run_batch: Callable, text: str | None = None) -> Callable:
    """run_batch as is when no faults are asked for, else a `Faulty` wrapper (call `arm()` when warm)."""
    text = os.environ.get(ENV, "") if text is None else text
    spec = parse(text)
    return Faulty(run_batch, spec) if spec else run_batch

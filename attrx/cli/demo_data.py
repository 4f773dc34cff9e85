"""`attrx demo-data`: the synthetic demo catalog."""

from __future__ import annotations

from pathlib import Path


def cmd_demo_data(a) -> None:
    from attrx.training.data.demo import write_demo_catalog

    path = write_demo_catalog(a.out, n=a.n, seed=a.seed, progress=not a.quiet)
    print(f"demo catalog: {path} ({a.n} products, seed {a.seed})")


def _demo_data_parser(sub) -> None:
    d = sub.add_parser("demo-data", help="write the synthetic demo catalog (catalog.csv + images/)")
    d.add_argument("--out", required=True, type=Path, help="folder for catalog.csv and images/")
    d.add_argument("--n", type=int, default=3000, help="number of products (default 3000)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0): the same seed, the same catalog")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_demo_data)


def add_parsers(sub) -> None:
    _demo_data_parser(sub)

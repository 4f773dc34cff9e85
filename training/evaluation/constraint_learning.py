"""Learn a catalog's constraints between attributes from its training split (or read a taxonomy).

Two attributes are tied when their allowed pairs (those seen at least `min_pair_count` times) are
both true and restrictive in the training products: they cover at least `min_cover` of the
products, and if the two attributes were independent, at least `min_excluded` of the probability
mass would fall on pairs that are not allowed. Hierarchies (articleType -> subCategory ->
masterCategory) pass this test, and so do combinations with enough support such as gender x
articleType; pairs such as gender x season (anything goes) or articleType x baseColour (too many
rare pairs to call the rest impossible) do not. Tied attributes form groups (connected components); a group's allowed
combinations are those whose every tied pair is allowed and whose other pairs occur in training.

A taxonomy file (CSV: one column per attribute, one allowed combination per row) replaces what was
learned for its attributes. Values are the model's classes: labels folded into `other` are `other`.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections import Counter
from pathlib import Path

from attrx.service.catalog.reader import Product
from attrx.service.contract.constraints import ConstraintGroup, Constraints

CONSTRAINTS = "constraints.json"
MIN_PAIR_COUNT = 3
MIN_EXCLUDED = 0.15
MIN_COVER = 0.995


def _value(p: Product, a: str, classes: dict[str, list[str]]) -> str | None:
    v = p.labels.get(a)
    if v is None:
        return None
    return v if v in classes[a] else ("other" if "other" in classes[a] else None)


def tied_pairs(products: list[Product], classes: dict[str, list[str]], *, min_pair_count: int = MIN_PAIR_COUNT,
               min_excluded: float = MIN_EXCLUDED, min_cover: float = MIN_COVER) -> dict[tuple[str, str], set]:
    """{(a, b): allowed (value a, value b) pairs} for the attribute pairs that pass the test."""
    out = {}
    for a, b in itertools.combinations(list(classes), 2):
        counts = Counter((_value(p, a, classes), _value(p, b, classes)) for p in products)
        counts = Counter({k: n for k, n in counts.items() if None not in k})
        total = sum(counts.values())
        keep = {k for k, n in counts.items() if n >= min_pair_count}
        if not total or not keep:
            continue
        pa, pb = Counter(), Counter()
        for (x, y), n in counts.items():
            pa[x] += n / total
            pb[y] += n / total
        excluded = 1.0 - sum(pa[x] * pb[y] for x, y in keep)
        cover = sum(counts[k] for k in keep) / total
        if excluded >= min_excluded and cover >= min_cover:
            out[(a, b)] = keep
    return out


def _components(attrs: list[str], pairs) -> list[list[str]]:
    groups: list[set] = []
    for a, b in pairs:
        hit = [g for g in groups if a in g or b in g]
        merged = set().union({a, b}, *hit)
        groups = [g for g in groups if g not in hit] + [merged]
    return [[a for a in attrs if a in g] for g in groups]


def _combinations(group: list[str], classes: dict[str, list[str]], pairs: dict) -> list[list[str]]:
    """Every combination of the group's values whose pairs are all allowed (joined attribute by
    attribute, the one with most classes first, so the partial combinations stay few)."""
    order = sorted(group, key=lambda a: -len(classes[a]))
    combos: list[dict[str, str]] = [{}]
    for a in order:
        nxt = []
        for combo in combos:
            for v in classes[a]:
                if all((combo[b], v) in pairs[(b, a)] if (b, a) in pairs else (v, combo[b]) in pairs[(a, b)]
                       for b in combo if (b, a) in pairs or (a, b) in pairs):
                    nxt.append({**combo, a: v})
        combos = nxt
    return [[c[a] for a in group] for c in combos]


def _seen(products: list[Product], classes: dict[str, list[str]], a: str, b: str) -> set:
    return {(va, vb) for p in products if (va := _value(p, a, classes)) is not None
            and (vb := _value(p, b, classes)) is not None}


def learn_constraints(products: list[Product], classes: dict[str, list[str]], **rule) -> Constraints:
    """Tied pairs allow their supported combinations; the other pairs inside a group allow what the
    training split has seen at all, so the folded class `other` never lets an unseen pair through."""
    pairs = tied_pairs(products, classes, **rule)
    groups = []
    for group in _components(list(classes), pairs):
        inside = {(a, b): pairs.get((a, b)) or _seen(products, classes, a, b)
                  for a, b in itertools.combinations(group, 2)}
        allowed = _combinations(group, classes, inside)
        if allowed:
            groups.append(ConstraintGroup(attributes=group, allowed=allowed, source="learned"))
    return Constraints(groups=groups)


def read_taxonomy(path: str | Path, classes: dict[str, list[str]]) -> ConstraintGroup:
    """A CSV whose header names attributes and whose rows are allowed combinations."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--taxonomy {path}: no such file")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise ValueError(f"{path}: a taxonomy needs a header of attribute names and at least one combination")
    head = [h.strip() for h in rows[0]]
    unknown = [h for h in head if h not in classes]
    if unknown or len(head) < 2:
        raise ValueError(f"{path}: the header must name at least two of the model's attributes "
                         f"({', '.join(classes)}); unknown: {unknown}")
    allowed = []
    for n, r in enumerate(rows[1:], start=2):
        vals = [v.strip() for v in r]
        if len(vals) != len(head):
            raise ValueError(f"{path}:{n}: {len(vals)} values for {len(head)} attributes")
        allowed.append([v if v in classes[a] else "other" for a, v in zip(head, vals, strict=True)])
    return ConstraintGroup(attributes=head, allowed=[list(x) for x in sorted({tuple(x) for x in allowed})],
                           source=f"taxonomy: {path.name}")


def with_taxonomies(learned: Constraints, taxonomies: list[ConstraintGroup]) -> Constraints:
    """Learned groups that share no attribute with a taxonomy, then the taxonomies."""
    named = {a for t in taxonomies for a in t.attributes}
    keep = [g for g in learned.groups if not named & set(g.attributes)]
    return Constraints(groups=[*keep, *taxonomies], fit_ratio=learned.fit_ratio)


def write_constraints(path: Path, constraints: Constraints) -> None:
    (path / CONSTRAINTS).write_text(json.dumps(constraints.model_dump(), indent=1))


def read_constraints(path: Path) -> Constraints | None:
    f = path / CONSTRAINTS
    return Constraints.model_validate_json(f.read_text()) if f.is_file() else None


def checkpoint_constraints(out: Path, products: list[Product], classes: dict[str, list[str]], learn: bool,
                           taxonomies: list[str]) -> Constraints:
    """Learn (and/or read) the constraints and write them to the checkpoint's constraints.json."""
    learned = learn_constraints(products, classes) if learn else Constraints()
    constraints = with_taxonomies(learned, [read_taxonomy(t, classes) for t in taxonomies])
    write_constraints(out, constraints)
    for g in constraints.groups:
        print(f"constraints: {' x '.join(g.attributes)}: {len(g.allowed)} allowed combinations ({g.source})")
    return constraints

"""What a review session reads: the queue (docs/review-queue.md) and the values a reviewer may give.

The allowed values of an attribute are the bundle's classes, less its folded class ("other" is not
a value a catalog holds), and, where the bundle carries constraints between attributes, only those
that some allowed combination of every group holding the attribute shares with the record's other
known values (the accepted ones, and the reviewer's answers so far).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from attrx.service.scoring.queue_writer import FORMAT


class QueueError(ValueError):
    """The queue file cannot be used (missing, or a line that is not a queue record)."""


@dataclass(frozen=True)
class QueueItem:
    id: str
    title: str | None
    image: str | None
    priority: float
    attributes: dict[str, dict]  # the attributes not accepted, as the queue line gives them
    accepted: dict[str, str]  # the record's accepted values


def read_queue(path: str | Path) -> list[QueueItem]:
    """The queue's products, highest priority first (file order among equals); one line per product,
    a later line for the same id replacing an earlier one (a resumed score appends)."""
    path = Path(path)
    if not path.is_file():
        raise QueueError(f"review queue {path} does not exist (attrx score ... --review-queue {path} writes it)")
    items: dict[str, QueueItem] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            if d.get("format") != FORMAT:
                raise QueueError(f"{path}:{n}: format {d.get('format')!r}, this attrx reads format {FORMAT}")
            items[str(d["id"])] = QueueItem(str(d["id"]), d.get("title"), d.get("image"), float(d["priority"]),
                                            dict(d["attributes"]), dict(d.get("accepted") or {}))
        except QueueError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise QueueError(f"{path}:{n}: not a review-queue line ({type(e).__name__}: {e})") from None
    order = sorted(enumerate(items.values()), key=lambda t: (-t[1].priority, t[0]))
    return [item for _, item in order]


class Vocabulary:
    """The values each attribute may take, from a bundle's manifest (classes, folded class, constraints)."""

    def __init__(self, manifest):
        self.values = {a.name: [c for c in a.classes if c != a.folded_class] for a in manifest.attributes}
        # attribute -> family -> its values, for attributes with value families
        self.families = {a.name: {f: [c for c, k in zip(a.classes, a.families.of_class, strict=True) if k == i]
                                  for i, f in enumerate(a.families.names)}
                         for a in manifest.attributes if getattr(a, "families", None)}
        self.groups = [(g.attributes, [tuple(c) for c in g.allowed])
                       for g in (manifest.constraints.groups if manifest.constraints else [])
                       if all(a in self.values for a in g.attributes)]

    def allowed(self, attribute: str, record: dict[str, str | None]) -> list[str]:
        """The values of `attribute` that keep `record` (its other known values) in every allowed
        combination list of the groups that hold it."""
        keep = set(self.values[attribute])
        for attrs, combos in self.groups:
            if attribute not in attrs:
                continue
            k = attrs.index(attribute)
            fixed = [(i, record.get(a)) for i, a in enumerate(attrs) if a != attribute and record.get(a)]
            keep &= {c[k] for c in combos if all(c[i] == v for i, v in fixed)}
        return [v for v in self.values[attribute] if v in keep]

    def family_values(self, attribute: str, family: str | None, allowed: list[str]) -> list[str]:
        """The family's values among the allowed ones: where the family is accepted, what is left to
        review is which of them."""
        members = self.families.get(attribute, {}).get(family or "", [])
        return [v for v in allowed if v in members]

    def problems(self, record: dict[str, str | None]) -> list[str]:
        """Why a record cannot be stored: values outside an attribute's list, or a combination that
        no allowed combination of a constraint group holds. Empty when it can."""
        out = [f"{a}: {v!r} is not one of its {len(self.values[a])} allowed values"
               for a, v in record.items() if v is not None and a in self.values and v not in self.values[a]]
        out += [f"unknown attribute {a!r}" for a in record if a not in self.values]
        for attrs, combos in self.groups:
            known = [(i, record.get(a)) for i, a in enumerate(attrs) if record.get(a)]
            if len(known) >= 2 and not any(all(c[i] == v for i, v in known) for c in combos):
                shown = ", ".join(f"{attrs[i]}={v}" for i, v in known)
                out.append(f"{shown}: no allowed combination of {' x '.join(attrs)} holds these values together")
        return out

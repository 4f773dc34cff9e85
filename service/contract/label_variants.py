"""How titles spell an attribute's values: each label's variants, as the bundle carries them.

A catalog labels a product "Tshirts" or "Watches"; its titles say "T-shirt", "tee", "watch". The
situation of a product (situations.py) asks whether its title names one of the attribute's values, so
the matcher must know those spellings, or most titles that name their value count as silent.

A label's variants come from three places, merged into one list per label:
- rules (`rule_variants`): singular and plural, hyphens and spacing of a label's own words;
- the catalog's taxonomy of synonyms, where one is given (value -> synonym rows);
- the training titles (training/data/label_variants.py): spellings whose letters are the label's,
  and the words that predict a label most precisely. They are written beside the checkpoint in
  `label_variants.json`, which a user may edit; evaluation and export read the edited file.

The matcher's word list for an attribute is its labels plus every variant (`matcher_words`);
`LabelSpellings` says which values a title names. numpy-free and torch-free.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from attrx.service.contract.situations import label_pattern

VARIANTS_FILE = "label_variants.json"
_WORD = re.compile(r"[0-9A-Za-z]+")


def singular(word: str) -> str:
    """An English word's singular by the common suffix rules (lower-case in, lower-case out)."""
    for suffix, repl in (("ies", "y"), ("sses", "ss"), ("shes", "sh"), ("ches", "ch"), ("xes", "x"),
                         ("oes", "o")):
        if word.endswith(suffix) and len(word) > len(suffix) + 1:
            return word[: -len(suffix)] + repl
    if word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
        return word[:-1]
    return word


def plural(word: str) -> str:
    if word.endswith("y") and len(word) > 2 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    if word.endswith(("s", "sh", "ch", "x", "z")):
        return word + "es"
    return word + "s"


def spelling_key(text: str) -> str:
    """What two spellings of one value share: lower-case letters and digits of the singular, without
    spaces or hyphens ("T-shirts", "t shirt", "Tshirt" -> "tshirt")."""
    words = _WORD.findall(text.lower())
    if not words:
        return ""
    return "".join(words[:-1]) + singular(words[-1])


def rule_variants(label: str) -> list[str]:
    """Spellings of a label by rule: its last word singular and plural, its words joined, hyphenated
    and spaced. Lower-case, the label's own lower-case spelling excluded."""
    words = _WORD.findall(label.lower())
    if not words:
        return []
    out = set()
    for last in {words[-1], singular(words[-1]), plural(singular(words[-1]))}:
        ws = [*words[:-1], last]
        out.update({" ".join(ws), "-".join(ws), "".join(ws)} if len(ws) > 1 else {ws[0]})
    out.discard(label.lower())
    return sorted(w for w in out if len(w) > 1)


def merge(*sources: Mapping[str, Iterable[str]] | None) -> dict[str, list[str]]:
    """Label -> variants, the union of several sources (case-insensitive, first spelling kept)."""
    out: dict[str, dict[str, str]] = {}
    for src in sources:
        for label, ws in (src or {}).items():
            seen = out.setdefault(label, {})
            for w in ws:
                w = " ".join(w.split())
                if w and w.lower() != label.lower():
                    seen.setdefault(w.lower(), w)
    return {label: sorted(ws.values(), key=str.lower) for label, ws in out.items()}


def matcher_words(labels: Iterable[str], variants: Mapping[str, Iterable[str]] | None) -> list[str]:
    """An attribute's matcher list: its labels and their variants (a label without variants: itself)."""
    labels = list(labels)
    extra = [w for lab in labels for w in (variants or {}).get(lab, [])]
    return sorted({*labels, *extra}, key=str.lower)


def matcher_words_of(label_words: Mapping[str, Iterable[str]],
                     variants: Mapping[str, Mapping[str, Iterable[str]]] | None) -> dict[str, list[str]]:
    """matcher_words for every attribute."""
    return {a: matcher_words(ls, (variants or {}).get(a)) for a, ls in label_words.items()}


class LabelSpellings:
    """Which of an attribute's values a title names, each by its label or any of its variants."""

    def __init__(self, labels: Iterable[str], variants: Mapping[str, Iterable[str]] | None = None):
        self.labels = list(labels)
        self.patterns = {lab: label_pattern([lab, *(variants or {}).get(lab, [])]) for lab in self.labels}

    def named(self, title: str | None) -> list[str]:
        """The values the title names, in label order."""
        if not title:
            return []
        return [lab for lab, p in self.patterns.items() if p is not None and p.search(title)]

    def names(self, title: str | None, label: str | None) -> bool:
        """Does the title name this value (by any of its spellings)?"""
        p = self.patterns.get(label) if label else None
        if p is None and label:
            p = label_pattern([label])
        return bool(title) and p is not None and p.search(title) is not None


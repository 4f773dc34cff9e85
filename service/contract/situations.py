"""What attrx can see about one product, per attribute: its situation.

A situation has two parts:
- the title's state for the attribute: it names one of the attribute's label words (`named`), it
  names none (`silent`), or there is no title (`no_title`);
- whether the image is present (`image`) or missing (`no_image`).

Five situations exist (a product with neither title nor image is refused at the door). Acceptance
is calibrated per attribute x situation, because the model is as confident on a silent title as on
a named one, from weaker evidence.

The label-word matcher lives here, beside the bundle contract, so that training (silent-title
augmentation, evaluation conditions, calibration copies) and serving (the situation of a request)
match words the very same way: whole words or phrases, case-insensitive, longest first, so
"navy blue" goes before "blue". numpy-free and torch-free.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from attrx.service.contract.preprocess import normalise_title

SITUATIONS = ("named+image", "silent+image", "no_title+image", "named+no_image", "silent+no_image")


def label_pattern(words: Iterable[str]) -> re.Pattern | None:
    """One regex that matches any of `words` as a whole word or phrase (longest first)."""
    ws = sorted({w.strip() for w in words if w and w.strip()}, key=len, reverse=True)
    if not ws:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in ws) + r")(?!\w)", re.IGNORECASE)


def strip_pattern(title: str | None, pattern: re.Pattern | None) -> str | None:
    """The title without the pattern's words; None when nothing is left."""
    if not title or pattern is None:
        return title
    return " ".join(pattern.sub(" ", title).split()) or None


def strip_words(title: str | None, words: Iterable[str]) -> str | None:
    """Remove whole-word, case-insensitive occurrences of `words` (longest first) from a title."""
    return strip_pattern(title, label_pattern(words))


def names_label(title: str | None, label: str) -> bool:
    """Does the title name the label, with the same whole-word matching as strip_words?"""
    pat = label_pattern([label])
    return bool(title) and pat is not None and pat.search(title) is not None


def situation_of(title: str | None, has_image: bool, pattern: re.Pattern | None) -> str:
    """The situation of one attribute, from the (normalised) title and whether an image came."""
    if not title:
        state = "no_title"
    elif pattern is not None and pattern.search(title):
        state = "named"
    else:
        state = "silent"
    return f"{state}+{'image' if has_image else 'no_image'}"


_WORD = re.compile(r"\w+")


class SituationReader:
    """The situation of every attribute of a product, from the bundle's label words.

    Served per request, so an attribute's pattern runs only when the title has, as a whole word, the
    first word of one of its labels: a label that matches as a whole word has its first word as a
    whole word of the title, so skipping the others changes no answer (tests hold it to situation_of)."""

    def __init__(self, label_words: dict[str, list[str]]):
        self.attributes = list(label_words)
        self.patterns = [label_pattern(ws) for ws in label_words.values()]
        self.first_words: list[set[str] | None] = []
        for ws in label_words.values():
            firsts = [_WORD.findall(w.lower())[:1] for w in ws if w and w.strip()]
            self.first_words.append(None if any(not f for f in firsts) else {f[0] for f in firsts})

    @classmethod
    def of_attributes(cls, attributes) -> SituationReader:
        """From a bundle's attribute specs: each attribute's label words, else its class names."""
        return cls({a.name: a.label_words or a.classes for a in attributes})

    def __call__(self, title: str | None, image) -> list[str]:
        """From a request's title and image (None or empty bytes: no image)."""
        return self.read(title, image is not None and not (isinstance(image, bytes) and not image))

    def read(self, title: str | None, has_image: bool) -> list[str]:
        title = normalise_title(title)
        if not title:
            return [situation_of(None, has_image, None)] * len(self.patterns)
        words = set(_WORD.findall(title.lower()))
        return [situation_of(title, has_image, p if first is None or words & first else None)
                for p, first in zip(self.patterns, self.first_words, strict=True)]

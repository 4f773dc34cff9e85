"""Label variants learned from the training titles, read from a taxonomy, and kept in a file a user edits.

Two kinds are learned (service/contract/label_variants.py says how variants are used):
- spellings: a title's word, pair of words or hyphenated word whose letters are a label's
  (spelling_key: "T-shirt", "t shirt", "tshirt" for "Tshirts"; "watch" for "Watches"), seen at
  least `min_spelling` times;
- predictors: a single word that predicts one label of the attribute with precision at least
  `min_precision` over at least `min_count` training titles, used by at least `min_leaders`
  different title openings (the first word of a title is most often the brand: a brand's name is
  not a way to spell a value), and opening at most half of its titles. At most `per_label` per label.

`label_variants.json` in a checkpoint: {"variants": {attr: {label: [spelling, ...]}} (rules,
spellings seen, synonyms: what the matcher uses), "proposed": {attr: {label: {word: {"count",
"precision"}}}} (predictors, not used until a person moves them into "variants"), "spellings_seen"
(each spelling's count), "synonyms" (the taxonomy's)}. Only "variants" is read back: edit it, then
`attrx eval` recalibrates with it and `attrx export` carries it.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

from attrx.service.contract.families import read_value_pairs
from attrx.service.contract.label_variants import VARIANTS_FILE, merge, rule_variants, spelling_key

_TOKEN = re.compile(r"[0-9A-Za-z]+(?:-[0-9A-Za-z]+)*")
MIN_SPELLING, MIN_COUNT, MIN_PRECISION, MIN_LEADERS, PER_LABEL = 2, 20, 0.95, 5, 3


def _candidates(title: str) -> list[str]:
    """A title's words, hyphenated words and adjacent pairs, lower-case."""
    toks = [t.lower() for t in _TOKEN.findall(title)]
    return [*toks, *(f"{a} {b}" for a, b in zip(toks, toks[1:], strict=False))]


def learn_spellings(titles: list[str], labels: list[str]) -> dict[str, dict[str, int]]:
    """label -> {spelling seen in titles: count}, for spellings that share the label's key."""
    keys = defaultdict(list)
    for lab in labels:
        keys[spelling_key(lab)].append(lab)
    seen: dict[str, dict[str, int]] = defaultdict(Counter)
    for t in titles:
        for c in set(_candidates(t or "")):
            for lab in keys.get(spelling_key(c), ()):
                if c != lab.lower():
                    seen[lab][c] += 1
    return {lab: {w: n for w, n in cs.items() if n >= MIN_SPELLING} for lab, cs in seen.items()}


def learn_predictors(titles: list[str], values: list[str | None]) -> dict[str, dict[str, dict]]:
    """label -> {word: {count, precision}}: single words that predict a label precisely (see the module)."""
    by_word: dict[str, Counter] = defaultdict(Counter)
    leaders: dict[str, set] = defaultdict(set)
    opens: Counter = Counter()
    for t, v in zip(titles, values, strict=True):
        toks = [w.lower() for w in _TOKEN.findall(t or "")]
        if v is None or not toks:
            continue
        opens[toks[0]] += 1
        for w in set(toks):
            if len(w) >= 3 and w.isalpha():
                by_word[w][v] += 1
                leaders[w].add(toks[0])
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for w, cs in by_word.items():
        n = sum(cs.values())
        lab, k = cs.most_common(1)[0]
        if n >= MIN_COUNT and k / n >= MIN_PRECISION and len(leaders[w] - {w}) >= MIN_LEADERS and opens[w] <= n / 2:
            out[lab][w] = {"count": n, "precision": round(k / n, 4)}
    return {lab: dict(sorted(ws.items(), key=lambda x: (-x[1]["precision"], -x[1]["count"]))[:PER_LABEL])
            for lab, ws in out.items()}


def read_synonyms(path: str | Path, attrs) -> dict[str, dict[str, list[str]]]:
    """A synonyms taxonomy (CSV: attribute,value,synonym) -> {attr: {value: [synonym, ...]}}."""
    out: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for a, value, synonym in read_value_pairs(path, attrs, "synonym", "--synonyms"):
        out[a][value].append(synonym)
    return {a: dict(v) for a, v in out.items()}


def learn_variants(products, label_words: dict[str, list[str]], synonyms: dict | None = None) -> dict:
    """The label_variants.json document for these training products and each attribute's labels.
    Rules, spellings and synonyms are used; predictors are proposed: a word that predicts a value is
    not always a way to name it ("watch" predicts season Winter in one catalog), so a person moves
    the ones that are into "variants"."""
    titles = [p.title or "" for p in products]
    variants, spellings, proposed = {}, {}, {}
    for a, labels in label_words.items():
        spell = learn_spellings(titles, labels)
        variants[a] = merge({lab: rule_variants(lab) for lab in labels}, spell, (synonyms or {}).get(a))
        variants[a] = {lab: ws for lab, ws in variants[a].items() if lab in labels and ws}
        spellings[a] = {lab: ws for lab, ws in spell.items() if ws}
        used = {lab: {w.lower() for w in [lab, *ws]} for lab, ws in variants[a].items()}
        pred = learn_predictors(titles, [p.labels.get(a) for p in products])
        proposed[a] = {lab: {w: d for w, d in ws.items() if w not in used.get(lab, {lab.lower()})}
                       for lab, ws in pred.items() if lab in labels}
        proposed[a] = {lab: ws for lab, ws in proposed[a].items() if ws}
    return {"variants": variants, "proposed": proposed, "spellings_seen": spellings, "synonyms": synonyms or {}}


def write_variants(folder: Path, doc: dict) -> Path:
    f = Path(folder) / VARIANTS_FILE
    f.write_text(json.dumps(doc, indent=1, ensure_ascii=False))
    return f


def read_variants(folder: Path) -> dict[str, dict[str, list[str]]] | None:
    """The (possibly edited) variants of a checkpoint, or None for one trained before variants."""
    f = Path(folder) / VARIANTS_FILE
    if not f.is_file():
        return None
    doc = json.loads(f.read_text())
    variants = doc.get("variants") if isinstance(doc, dict) else None
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise ValueError(f"{f}: expected {{\"variants\": {{attribute: {{label: [spelling, ...]}}}}}}")
    return {a: {lab: [str(w) for w in ws] for lab, ws in v.items()} for a, v in variants.items()}


def learn_for_checkpoint(checkpoint: str | Path, catalog: str | Path, synonyms: str | None = None) -> Path:
    """Learn a checkpoint's label variants from its own training split of `catalog` (one trained
    before variants, or to start again from an edited file); writes its label_variants.json."""
    from attrx.service.catalog.reader import read_catalog
    from attrx.training.data.encode import split_of

    ck = Path(checkpoint)
    if not (ck / "config.json").is_file():
        raise FileNotFoundError(f"{ck} is not an attrx checkpoint: config.json is missing (made by `attrx train`)")
    cfg = json.loads((ck / "config.json").read_text())
    attrs = list(cfg["attributes"])
    split = cfg.get("split", {"val_frac": 0.1, "test_frac": 0.1})
    train = [p for p in read_catalog(catalog, attrs, require_labels=True).products
             if split_of(p.id, split["val_frac"], split["test_frac"]) == "train"]
    if not train:
        raise ValueError(f"{catalog}: none of its products is in the checkpoint's training split")
    words = cfg.get("label_words") or {a: [c for c in cl if c != "other"] for a, cl in cfg["attributes"].items()}
    return write_variants(ck, learn_variants(train, words, read_synonyms(synonyms, attrs) if synonyms else None))

"""The model bundle: the only thing `export/` hands to `service/`.

A folder with
  manifest.json   this schema (versioned; v1 and v2 bundles are still read)
  model.onnx      the fp32 graph, always present. Inputs: attrx.service.contract.preprocess.INPUT_NAMES; outputs
                  per attribute `<attr>.probs` [B, C] and `<attr>.modality_weights` [B, 2] (text, image), and
                  with `model.unimodal` (v3) `<attr>.text_probs` and `<attr>.image_probs` [B, C]: the
                  title-only and image-only predictions that show title-image conflicts
  model.fp16.onnx, model.int8.onnx
                  optional precision variants of the same graph (same inputs and outputs), each
                  listed under `variants` with its intended providers and its parity report
  model.plan      optional TensorRT engine (`attrx build-engine`), listed as variant `tensorrt`
  tokenizer.json  a `tokenizers` file
No torch and no training code are needed to read or serve it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from attrx.service.contract.constraints import Constraints
from attrx.service.contract.preprocess import INPUT_NAMES, PreprocessConfig
from attrx.service.contract.situations import SITUATIONS

# v3: thresholds and support per situation, label words, conflict checks, record constraints,
# unimodal outputs; v5: label variants, value families
SCHEMA_VERSION = 5
SUPPORTED_SCHEMAS = (1, 2, 3, 4, 5)
MANIFEST = "manifest.json"
REQUIRED_FILES = ("model.onnx", "tokenizer.json")


class BundleError(ValueError):
    """A bundle that cannot be served; the message names what is wrong."""


def output_names(attribute: str, unimodal: bool = False) -> tuple[str, ...]:
    names = (f"{attribute}.probs", f"{attribute}.modality_weights")
    return (*names, f"{attribute}.text_probs", f"{attribute}.image_probs") if unimodal else names


# optional, after the attributes' outputs (SIMLA's concept head): per title token [B, L], how strongly
# the image alone says the token is there (0 for special tokens and padding), and the token ids
# (0 at padding) that say which token each score belongs to
CONCEPT_OUTPUTS = ("concepts.token_scores", "concepts.token_ids")


def precision_key(target: float) -> str:
    return f"{target:.2f}"


def _check_thresholds(thresholds: dict[str, list[float | None]], n: int, where: str) -> None:
    for key, ths in thresholds.items():
        if len(ths) != n:
            raise ValueError(f"{where}thresholds[{key!r}] has {len(ths)} values for {n} classes")
        bad = [t for t in ths if t is not None and not 0.0 <= t <= 1.0]
        if bad:
            raise ValueError(f"{where}thresholds[{key!r}] has values outside [0, 1]: {bad[:3]}")


def _check_families(fam: FamilySpec, spec) -> None:
    n = len(fam.names)
    if len(fam.of_class) != len(spec.classes) or any(not -1 <= k < n for k in fam.of_class):
        raise ValueError(f"families.of_class needs one index in [-1, {n}) per class ({len(spec.classes)})")
    unknown = sorted(set(fam.situations) - set(SITUATIONS))
    if unknown:
        raise ValueError(f"families: unknown situations {unknown}")
    for name, sit in fam.situations.items():
        _check_thresholds(sit.thresholds, n, f"families.situations[{name!r}].")


class SituationSpec(BaseModel):
    """Acceptance in one situation: per target, one threshold per class (None: never accepted)."""
    model_config = ConfigDict(extra="forbid")
    support: int = Field(ge=0)  # calibration products in this situation (natural and copies)
    natural: int = Field(0, ge=0)  # of them, validation products as they are
    class_support: list[int] | None = None
    thresholds: dict[str, list[float | None]]
    # certified thresholds: which level's rows certified them (situation, or attribute where the
    # situation is too small and its own rows do not contradict the attribute's), and per target how
    # many more reviewed products at the current error rate would certify it (0: it is; None: it cannot)
    certified_by: str | None = None
    more_needed: dict[str, int | None] | None = None


class ConflictSpec(BaseModel):
    """A title-image conflict: the title-only prediction names a value with at least
    `min_title_confidence`, and the image-only prediction gives that value at most
    `max_image_probability`."""
    model_config = ConfigDict(extra="forbid")
    min_title_confidence: float = Field(ge=0.0, le=1.0)
    max_image_probability: float = Field(ge=0.0, le=1.0)
    flagged_named: float | None = None  # share of validation products whose title names their label, flagged
    flagged_precision: float | None = None  # how often the flagged answers were right on validation


class FamilySpec(BaseModel):
    """A hierarchy over an attribute's values (service/contract/families.py): families of two or more
    classes, and acceptance per situation of a family's summed probability, for the products whose
    value is not accepted (None per family: never accepted)."""
    model_config = ConfigDict(extra="forbid")
    names: list[str] = Field(min_length=1)
    of_class: list[int]  # per class: its family's index in names, -1 for none
    situations: dict[str, SituationSpec] = {}
    source: str = "default"  # "default" (attrx's colour families) or the catalog's file name


class AttributeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    classes: list[str] = Field(min_length=2)
    # precision target ("0.90") -> one threshold per class; None: the target is unreachable for that class
    thresholds: dict[str, list[float | None]]
    # validation positives per class that the thresholds rest on; a class with fewer than
    # min_support of them has no threshold (None) for any target
    support: list[int] | None = None
    min_support: int | None = Field(None, ge=0)
    # v3: the words that name each label in a title (the situation matcher), acceptance per
    # situation, the conflict check, and the folded class that is never accepted
    label_words: list[str] | None = None
    # how titles spell each label (label -> variants; its words are in label_words too): a user may
    # edit them (label_variants.json beside the checkpoint) before the export
    label_variants: dict[str, list[str]] | None = None
    situations: dict[str, SituationSpec] | None = None
    conflict: ConflictSpec | None = None
    folded_class: str | None = None
    families: FamilySpec | None = None

    @field_validator("classes")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dup = sorted({c for c in v if v.count(c) > 1})
        if dup:
            raise ValueError(f"duplicate class names {dup}")
        return v

    @model_validator(mode="after")
    def _thresholds_match_classes(self):
        _check_thresholds(self.thresholds, len(self.classes), "")
        unknown = sorted(set(self.situations or {}) - set(SITUATIONS))
        if unknown:
            raise ValueError(f"unknown situations {unknown}; known: {', '.join(SITUATIONS)}")
        for name, sit in (self.situations or {}).items():
            _check_thresholds(sit.thresholds, len(self.classes), f"situations[{name!r}].")
            if set(sit.thresholds) != set(self.thresholds):
                raise ValueError(f"situations[{name!r}] has targets {sorted(sit.thresholds)}, the attribute "
                                 f"{sorted(self.thresholds)}")
        if self.folded_class is not None and self.folded_class not in self.classes:
            raise ValueError(f"folded_class {self.folded_class!r} is not one of the classes")
        if self.families is not None:
            _check_families(self.families, self)
        if self.support is not None and len(self.support) != len(self.classes):
            raise ValueError(f"support has {len(self.support)} values for {len(self.classes)} classes")
        return self


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    family: str
    config: dict
    inputs: list[str]
    outputs: list[str]
    opset: int = Field(ge=17)
    attention: str = Field("unfused", pattern="^(fused|unfused)$")
    unimodal: bool = False  # v3: title-only and image-only outputs beside the fused ones

    @property
    def concepts(self) -> bool:
        """The graph says which title words the image itself supports (CONCEPT_OUTPUTS)."""
        return CONCEPT_OUTPUTS[0] in self.outputs


PRECISIONS = ("fp32", "fp16", "int8")
# The one TensorRT release attrx builds engines with and runs them on. A plan built version-compatible
# without an embedded lean runtime runs only on a lean runtime of the same version (TensorRT's docs;
# `Runtime.load_runtime`), so the `tensorrt` and `gpu` extras pin tensorrt-lean-cu13 to it,
# `attrx build-engine` refuses another builder, and the backend compares the version a plan was
# built with before deserialising it. tests/unit/test_packaging.py holds pyproject.toml to it.
TENSORRT_VERSION = "11.4.0.106"


def tensorrt_release(version: str) -> tuple[int, ...]:
    """'11.4.0.106.post1' -> (11, 4, 0, 106): the release, without post or local parts."""
    m = re.match(r"^\d+(?:\.\d+)*", version.strip())
    return tuple(int(x) for x in m.group(0).split(".")) if m else ()


PROVIDER_KINDS = ("cpu", "cuda", "tensorrt")


class VariantSpec(BaseModel):
    """One runnable form of the model: an ONNX graph at some precision, or a TensorRT engine."""
    model_config = ConfigDict(extra="forbid")
    file: str
    format: str = Field("onnx", pattern="^(onnx|tensorrt)$")
    precision: str = Field(pattern="^(fp32|fp16|int8)$")
    providers: list[str] = Field(min_length=1)  # where it is meant to run: cpu, cuda, tensorrt
    parity: dict = {}
    build: dict = {}  # a TensorRT engine: the TensorRT version, profile and flags it was built with

    @field_validator("providers")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [p for p in v if p not in PROVIDER_KINDS]
        if bad:
            raise ValueError(f"unknown providers {bad}; use {', '.join(PROVIDER_KINDS)}")
        return v


class FileSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha256: str = Field(pattern="^[0-9a-f]{64}$")
    bytes: int = Field(ge=1)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    schema_version: int
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    created: str
    model: ModelSpec
    attributes: list[AttributeSpec] = Field(min_length=1)
    precision_targets: list[float] = Field(min_length=1)
    preprocess: PreprocessConfig
    files: dict[str, FileSpec]
    metrics: dict = {}
    parity: dict = {}
    # v2: precision name ("fp32", "fp16", "int8") or "tensorrt" -> its variant; a v1 bundle gets
    # one fp32 variant, its model.onnx
    variants: dict[str, VariantSpec] = {}
    refused: dict[str, str] = {}  # variants export was asked for and refused, with the reason
    constraints: Constraints | None = None  # v3: the catalog's constraints between attributes
    # v4: the validation split's drift statistics (attrx.service.contract.drift_stats, which checks them
    # against the attributes where they are used); None: none recorded
    drift_reference: dict | None = None

    @property
    def situation_calibrated(self) -> bool:
        return all(a.situations is not None for a in self.attributes)

    @field_validator("schema_version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v not in SUPPORTED_SCHEMAS:
            raise ValueError(f"schema_version {v} is not supported by this attrx (supports "
                             f"{', '.join(map(str, SUPPORTED_SCHEMAS))}); re-export the bundle with a matching attrx")
        return v

    @model_validator(mode="after")
    def _variants(self):
        if self.schema_version == 1 and not self.variants:
            self.variants = {"fp32": VariantSpec(file="model.onnx", precision="fp32", providers=list(PROVIDER_KINDS),
                                                 parity=self.parity)}
        if "fp32" not in self.variants or self.variants["fp32"].file != "model.onnx":
            raise ValueError("variants must list fp32 as model.onnx")
        for key, v in self.variants.items():
            if v.file not in self.files:
                raise ValueError(f"variant {key!r}: its file {v.file} is not listed under files")
            if key in PRECISIONS and (v.format != "onnx" or v.precision != key):
                raise ValueError(f"variant {key!r} must be an ONNX graph of precision {key}")
        return self

    @field_validator("precision_targets")
    @classmethod
    def _targets(cls, v: list[float]) -> list[float]:
        if any(not 0.0 < t < 1.0 for t in v):
            raise ValueError(f"precision targets must be in (0, 1), got {v}")
        return sorted(v)

    @model_validator(mode="after")
    def _consistent(self):
        names = [a.name for a in self.attributes]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate attribute names in {names}")
        keys = {precision_key(t) for t in self.precision_targets}
        for a in self.attributes:
            if set(a.thresholds) != keys:
                raise ValueError(f"attribute {a.name!r}: thresholds for {sorted(a.thresholds)}, "
                                 f"precision_targets say {sorted(keys)}")
        missing = [f for f in REQUIRED_FILES if f not in self.files]
        if missing:
            raise ValueError(f"files lists no {', '.join(missing)}")
        if list(self.model.inputs) != list(INPUT_NAMES):
            raise ValueError(f"model.inputs {self.model.inputs} differ from the preprocessing contract {list(INPUT_NAMES)}")
        want = [n for a in names for n in output_names(a, self.model.unimodal)]
        if list(self.model.outputs) not in (want, [*want, *CONCEPT_OUTPUTS]):
            raise ValueError(f"model.outputs {self.model.outputs} do not match the attributes (expected {want}, "
                             f"optionally followed by {list(CONCEPT_OUTPUTS)})")
        return self

    def attribute(self, name: str) -> AttributeSpec:
        for a in self.attributes:
            if a.name == name:
                return a
        raise KeyError(f"unknown attribute {name!r}; the bundle has {[a.name for a in self.attributes]}")


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest

    @property
    def model_path(self) -> Path:
        return self.path / "model.onnx"

    def variant_path(self, key: str) -> Path:
        return self.path / self.manifest.variants[key].file

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _explain(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def _schema_of(raw) -> object:
    return raw.get("schema_version", SCHEMA_VERSION) if isinstance(raw, dict) else SCHEMA_VERSION


# the default precision per provider kind, best first; fp32 always runs
PREFERENCE = {"cpu": ("int8", "fp32"), "cuda": ("fp16", "fp32"), "tensorrt": ("fp16", "fp32")}


def choose_variant(manifest: Manifest, precision: str, provider: str) -> str:
    """`auto`: the best ONNX variant meant for `provider` (cpu, cuda or tensorrt); a named precision
    must be in the bundle."""
    if precision == "auto":
        for key in PREFERENCE.get(provider, ("fp32",)):
            v = manifest.variants.get(key)
            if v is not None and provider in v.providers:
                return key
        return "fp32"
    if precision not in PRECISIONS:
        raise BundleError(f"unknown precision {precision!r}; use auto, {', '.join(PRECISIONS)}")
    if precision not in manifest.variants:
        why = f" (export refused it: {manifest.refused[precision]})" if precision in manifest.refused else ""
        raise BundleError(f"the bundle has no {precision} variant{why}; it has {', '.join(manifest.variants)}. "
                          f"Re-export with `attrx export --precision fp32,{precision}`")
    return precision


def load_bundle(path: str | Path, *, verify_hashes: bool = True) -> Bundle:
    """Read and validate a bundle; raises BundleError naming every problem found."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: no such bundle folder")
    mf = path / MANIFEST
    if not mf.is_file():
        raise BundleError(f"{path}: {MANIFEST} is missing (a bundle is written by `attrx export`)")
    try:
        raw = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{mf}: not valid JSON ({e.msg} at line {e.lineno})") from None
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as e:
        raise BundleError(f"{mf} does not match the bundle schema v{_schema_of(raw)}:"
                          f"\n{_explain(e)}") from None
    problems = []
    for name, spec in manifest.files.items():
        f = path / name
        if not f.is_file():
            problems.append(f"{name} is listed in the manifest but missing")
        elif verify_hashes and sha256_file(f) != spec.sha256:
            problems.append(f"{name} does not match its sha256 in the manifest (modified or corrupt)")
    if problems:
        raise BundleError(f"{path}: " + "; ".join(problems))
    return Bundle(path, manifest)

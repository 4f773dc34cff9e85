"""Request and response models: what /docs shows as the API reference."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from attrx.service.contract.bundle import load_bundle
from attrx.service.settings import ServeSettings


class ExtractRequest(BaseModel):
    # strict: "3" is not an integer and true is not a number; the types are the ones documented
    model_config = ConfigDict(extra="forbid", strict=True)
    id: str | None = Field(None, description="echoed back in batch results")
    title: str | None = Field(None, description="product title")
    image_base64: str | None = Field(None, description="the image file (JPEG, PNG, WebP, ...) base64-encoded")
    image_url: str | None = Field(None, max_length=4096,
                                  description="an http(s) URL the server fetches the image from, instead of "
                                              "image_base64; only where the server allows it (--image-url-allow)")
    min_precision: float | None = Field(None, gt=0, le=1,
                                        description="one of the bundle's calibrated precision targets (GET /v1/model "
                                                    "lists them; another value is answered 422 bad_option); "
                                                    "default the lowest")
    top_k: int = Field(1, ge=1, le=50, description="how many candidates to list per attribute")


class Candidate(BaseModel):
    value: str
    probability: float


class ModalityWeights(BaseModel):
    text: float = Field(description="weight of the title; 0 when the product has none")
    image: float = Field(description="weight of the image; 0 when the product has none")


class FamilyAnswer(BaseModel):
    name: str = Field(description="the value's family (e.g. the colour family Blue for Navy Blue)")
    confidence: float = Field(description="the family's summed probability")
    threshold: float | None = Field(description="the family's threshold in the product's situation; null: never "
                                                "accepted there")
    accepted: bool = Field(description="the value is not accepted, and the family is: fill in the family")


class AttributePrediction(BaseModel):
    value: str
    confidence: float
    top_k: list[Candidate]
    modality_weights: ModalityWeights
    situation: str = Field(description="what attrx saw for this attribute: the title names one of its labels "
                                       "(named), names none (silent) or is missing (no_title); the image is present "
                                       "or not, e.g. silent+image")
    threshold: float | None = Field(description="the threshold for this value's class, the product's situation and "
                                                "the requested precision; null: no threshold (the situation or class "
                                                "lacked calibration support, or the target is unreachable)")
    accepted: bool = Field(description="confidence >= threshold, and no reason for review")
    conflict: bool = Field(False, description="the title-only and image-only predictions disagree confidently: "
                                              "never accepted, a finding about the listing")
    constrained: bool = Field(False, description="the catalog's constraints changed this value from the model's "
                                                 "own argmax (the most probable allowed combination)")
    conflict_values: dict[str, str] | None = Field(None, description="with a conflict: what the title alone "
                                                                     "(title_says) and the image alone "
                                                                     "(image_says) predict")
    review: str | None = Field(None, description="why the value is not accepted: no_allowed_combination, other "
                                                 "(the folded class), conflict, no_support, below_threshold; "
                                                 "null when accepted")
    accepted_level: str | None = Field(None, description="the finest level accepted: value (accepted is true), "
                                                         "family (the value is not accepted, its family is), or "
                                                         "null (nothing)")
    family: FamilyAnswer | None = Field(None, description="the value's family, for attributes with families and "
                                                          "values in one")
    reviews_to_certify: int | None = Field(None, description="how many more reviewed products in this situation, at "
                                                             "its current error rate, would certify its threshold for "
                                                             "the requested precision: 0 when it is certified; null "
                                                             "when unknown or out of reach")


class ModelRef(BaseModel):
    name: str
    version: str


class WordEvidence(BaseModel):
    word: str
    score: float = Field(description="how strongly the image alone says the word is there (0-1)")


class Evidence(BaseModel):
    image_backs: list[WordEvidence] = Field(description="the title's words, most supported by the image first")


EVIDENCE_DOC = ("bundles with a concept head (SIMLA) only, and only with a title and an image: which title "
                "words the image itself supports, from the image alone")


class ExtractResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    model: ModelRef
    min_precision: str
    predictions: dict[str, AttributePrediction]
    evidence: Evidence | None = Field(None, description=EVIDENCE_DOC)
    latency_ms: float = Field(description="server-side time for this request")


class ErrorBody(BaseModel):
    reason: str
    message: str


class Problem(BaseModel):
    """An error answer: RFC 9457 problem details, served as application/problem+json."""

    type: str = Field(description="what the error is: /problems/{reason}, which the server itself explains")
    title: str
    status: int
    detail: str = Field(description="this occurrence, in words")
    instance: str | None = Field(None, description="urn:attrx:request:{request_id}")
    reason: str = Field(description="attrx's code for the error (the last segment of type)")
    request_id: str | None = Field(None, description="the answer's X-Request-ID")
    error: ErrorBody | None = Field(None, description="the error shape before problem details, kept for one "
                                                      "release: read reason and detail instead")


class BatchItemResult(BaseModel):
    index: int
    id: str | None = None
    min_precision: str | None = None
    predictions: dict[str, AttributePrediction] | None = None
    evidence: Evidence | None = Field(None, description=EVIDENCE_DOC)
    error: ErrorBody | None = None


class BatchResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    model: ModelRef
    results: list[BatchItemResult]
    latency_ms: float


class SituationInfo(BaseModel):
    support: int = Field(description="calibration products in this situation (validation products and their "
                                     "copies with label words removed, title or image dropped)")
    natural: int = Field(0, description="of them, validation products as they are")
    thresholds: dict[str, list[float | None]] = Field(description="per precision target, one threshold per class")
    certified_by: str | None = Field(None, description="which rows certified the thresholds: situation, or attribute "
                                                       "(a small situation leaning on its attribute); null: none")
    more_needed: dict[str, int | None] | None = Field(None, description="per target, how many more reviewed products "
                                                                        "at the current error rate would certify it "
                                                                        "(0: certified; null: it cannot)")


class FamilyInfo(BaseModel):
    names: list[str]
    of_class: list[int] = Field(description="per class, its family's index in names (-1: none)")
    situations: dict[str, SituationInfo] = Field(description="per situation, one threshold per family and target, "
                                                             "for products whose value is not accepted")
    source: str = Field(description="default (attrx's colour families) or catalog (the catalog's own file)")


class AttributeInfo(BaseModel):
    name: str
    classes: list[str]
    thresholds: dict[str, list[float | None]] = Field(description="per-class thresholds of a bundle that is not "
                                                                  "situation-calibrated (used in every situation)")
    support: list[int] | None = Field(None, description="validation positives per class behind the thresholds")
    situations: dict[str, SituationInfo] | None = Field(None, description="thresholds and support per situation; "
                                                                          "a situation not listed is never accepted")
    conflict: dict | None = Field(None, description="the title-image conflict check: min_title_confidence, "
                                                    "max_image_probability, and the share of validation products "
                                                    "whose title names their label that it flags")
    folded_class: str | None = Field(None, description="the class of folded rare labels: never accepted")
    label_variants: dict[str, list[str]] | None = Field(None, description="how titles spell each label (the "
                                                                          "situation matcher matches these too)")
    families: FamilyInfo | None = Field(None, description="value families, and their thresholds per situation")


class ModelInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    name: str
    version: str
    family: str
    created: str
    precision_targets: list[float]
    situation_calibrated: bool = Field(description="false for a bundle made before situations: its per-class "
                                                   "thresholds apply in every situation")
    attributes: list[AttributeInfo]
    constraints: dict | None = Field(None, description="the record constraints the bundle applies")
    metrics: dict
    backend: str
    providers: list[str]
    precision: str = Field(description="precision of the variant that runs: fp32, fp16 or int8")
    variant: str = Field(description="its key in the bundle's variants (a precision, or tensorrt)")
    variants: list[str] = Field(description="the variants the bundle has")
    batching: dict
    limits: dict | None = Field(None, description="what one request may hold: max_request_items (products in a "
                                                  "/v1/extract/batch call), max_body_bytes, max_title_chars")


def calibrated_targets(settings: ServeSettings) -> list[float] | None:
    """The bundle's precision targets, for the API schema (None if the bundle cannot be read: the
    server then fails at startup with the bundle's own error). Manifest only, no file hashing."""
    try:
        return list(load_bundle(settings.bundle, verify_hashes=False).manifest.precision_targets)
    except (OSError, ValueError):
        return None


def request_schemas(targets: list[float] | None) -> tuple[dict, dict]:
    """(JSON, multipart) request schemas. min_precision is a number in (0, 1]; the bundle's calibrated
    targets, the only values the server takes, are named in its description and listed in
    `x-attrx-calibrated-targets`, not as an enum: client generators take enums of strings and
    integers only (openapi-python-client skipped both extract operations over a float enum)."""
    mp: dict = {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
    js = ExtractRequest.model_json_schema()
    about = js["properties"]["min_precision"].get("description", "")
    if targets:
        mp["x-attrx-calibrated-targets"] = targets
        about += f" (this server's bundle: {', '.join(f'{t:g}' for t in targets)})"
    js["properties"]["min_precision"] = {"anyOf": [mp, {"type": "null"}], "description": about}
    multipart = {"type": "object", "properties": {
        "title": {"type": "string", "description": "product title (may be left out if an image is sent)"},
        "image": {"type": "string", "format": "binary",
                  "description": "the image file: JPEG, PNG, WebP, ... (may be left out if a title is sent)"},
        "min_precision": {**mp, "description": about},
        "top_k": {"type": "integer", "minimum": 1, "maximum": 50,
                  "description": "how many candidates to list per attribute (default 1)"}}}
    return js, multipart

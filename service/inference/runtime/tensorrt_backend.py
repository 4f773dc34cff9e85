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

from attrx.service.contract.bundle import TENSORRT_VERSION, Bundle, tensorrt_release
from attrx.service.inference.runtime.base import BackendError

INSTALL_HINT = f"pip install 'attrx[tensorrt]' (tensorrt-lean-cu13=={TENSORRT_VERSION} and cuda-bindings 13)"


def check_versions(built_with: str | None, runtime: str, plan: str) -> None:
    """A version-compatible plan without an embedded lean runtime runs only on the lean runtime of
    the TensorRT version that built it: refuse, naming both, before deserialising."""
    if built_with is None:
        raise BackendError(f"{plan}: the manifest does not say which TensorRT built this engine; rebuild it with "
                           f"`attrx build-engine` (TensorRT {TENSORRT_VERSION})")
    if tensorrt_release(built_with) != tensorrt_release(runtime):
        raise BackendError(f"{plan} was built with TensorRT {built_with}, and this lean runtime is {runtime}: a plan "
                           f"runs only on the lean runtime of its own version. Rebuild it with `attrx build-engine` "
                           f"under TensorRT {runtime}, or install tensorrt-lean-cu13=={built_with}")


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


def _pinned(cudart, nbytes: int, dtype: np.dtype, what: str) -> tuple[int, np.ndarray]:
    """Page-locked host memory (so copies on a stream are truly asynchronous) and a flat numpy view."""
    import ctypes

    ptr = int(_cuda(cudart, cudart.cudaHostAlloc(nbytes, cudart.cudaHostAllocDefault), f"pinning {what}"))
    raw = (ctypes.c_byte * nbytes).from_address(ptr)
    return ptr, np.frombuffer(raw, dtype=dtype)


class _Worker:
    """One thread's execution context, stream, device buffers and pinned host buffers, made on that
    thread after selecting the backend's GPU there (cudaSetDevice holds per thread)."""

    def __init__(self, backend: TensorRTBackend):
        self.b, cudart = backend, backend.cudart
        _cuda(cudart, cudart.cudaSetDevice(backend.device), f"selecting GPU {backend.device} on this thread")
        self.context = backend.engine.create_execution_context()
        if self.context is None:
            raise BackendError("TensorRT could not create an execution context: " + backend.last_errors())
        self.stream = _cuda(cudart, cudart.cudaStreamCreate(), "creating a CUDA stream")
        self.buffers, self.host, self.host_ptrs = {}, {}, {}
        for name in backend.io_names:
            nbytes = int(np.prod(backend.max_shape[name])) * backend.dtypes[name].itemsize
            self.buffers[name] = _cuda(cudart, cudart.cudaMalloc(nbytes), f"allocating {name}")
            self.host_ptrs[name], self.host[name] = _pinned(cudart, nbytes, backend.dtypes[name], name)
            self.context.set_tensor_address(name, int(self.buffers[name]))

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        b, cudart = self.b, self.b.cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in b.input_names:
            arr = inputs[name]
            staged = self.host[name][:arr.size].reshape(arr.shape)
            staged[...] = arr  # converts to the engine's dtype on the way into pinned memory
            self.context.set_input_shape(name, arr.shape)
            _cuda(cudart, cudart.cudaMemcpyAsync(self.buffers[name], self.host_ptrs[name], staged.nbytes, h2d,
                                                 self.stream), f"copying {name} to the GPU")
        if not self.context.execute_async_v3(self.stream):
            raise BackendError("TensorRT inference failed: " + b.last_errors())
        views = []
        for name in b.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            view = self.host[name][:int(np.prod(shape))].reshape(shape)
            _cuda(cudart, cudart.cudaMemcpyAsync(self.host_ptrs[name], self.buffers[name], view.nbytes, d2h,
                                                 self.stream), f"copying {name} from the GPU")
            views.append(view)
        _cuda(cudart, cudart.cudaStreamSynchronize(self.stream), "waiting for the GPU")
        return [v.astype(np.float32, copy=True) for v in views]  # copies: the pinned buffers are reused

    def close(self) -> None:
        for ptr in self.buffers.values():
            self.b.cudart.cudaFree(ptr)
        for ptr in self.host_ptrs.values():
            self.b.cudart.cudaFreeHost(ptr)
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
        check_versions((variant.build or {}).get("tensorrt"), self.trt.__version__, str(bundle.variant_path("tensorrt")))
        check_gpu(self.cudart)
        self.device = device
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

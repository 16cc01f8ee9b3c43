"""A tiny ctypes wrapper over libcudart: device memory, copies, streams, device properties.

The native TensorRT backend and the GPU-tensor input path need a handful of CUDA runtime
calls; pulling in pycuda or torch for them would defeat a light runtime, so they are bound
here directly. Nothing is loaded until `cuda_runtime()` is called, so this module imports
(and its pure helpers run) on machines without CUDA.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.util
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

# cudaMemcpyKind
HOST_TO_DEVICE, DEVICE_TO_HOST, DEVICE_TO_DEVICE = 1, 2, 3
# cudaDeviceAttr
ATTR_COMPUTE_CAPABILITY_MAJOR, ATTR_COMPUTE_CAPABILITY_MINOR = 75, 76
# cudaDeviceProp starts with `char name[256]`; the struct is ~1 KB and grows between CUDA
# versions, so it is read into a generous buffer and only the name is taken from it.
DEVICE_PROP_BUFFER = 16384
LIBRARY_NAMES = ("libcudart.so", "libcudart.so.12", "libcudart.so.13", "libcudart.so.11.0", "cudart64_12.dll")


class CudaError(RuntimeError):
    pass


@dataclass(frozen=True)
class DeviceArray:
    """A buffer in GPU memory that a backend can read without a host copy."""

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype
    device_id: int = 0

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def _candidate_paths() -> list[str]:
    found = ctypes.util.find_library("cudart")
    paths = [found] if found else []
    paths += list(LIBRARY_NAMES)
    # The pip wheel nvidia-cuda-runtime-cu12 (pulled in by onnxruntime-gpu / tensorrt).
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        paths += sorted(glob.glob(os.path.join(root, "cuda_runtime", "lib", "libcudart.so*")))
    return paths


class CudaRuntime:
    """The few libcudart functions the runtime uses; every call checks its error code."""

    def __init__(self, library: ctypes.CDLL):
        self.lib = library
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p

    def _check(self, code: int, what: str) -> None:
        if code != 0:
            reason = self.lib.cudaGetErrorString(code).decode(errors="replace")
            raise CudaError(f"{what} failed: {reason} (cuda error {code})")

    # -- devices -------------------------------------------------------------------------------
    def device_count(self) -> int:
        count = ctypes.c_int(0)
        self._check(self.lib.cudaGetDeviceCount(ctypes.byref(count)), "cudaGetDeviceCount")
        return count.value

    def set_device(self, device_id: int) -> None:
        self._check(self.lib.cudaSetDevice(ctypes.c_int(device_id)), "cudaSetDevice")

    def device_name(self, device_id: int = 0) -> str:
        buffer = ctypes.create_string_buffer(DEVICE_PROP_BUFFER)
        self._check(self.lib.cudaGetDeviceProperties(buffer, ctypes.c_int(device_id)), "cudaGetDeviceProperties")
        return buffer.raw[:256].split(b"\0", 1)[0].decode(errors="replace")

    def compute_capability(self, device_id: int = 0) -> str:
        values = []
        for attribute in (ATTR_COMPUTE_CAPABILITY_MAJOR, ATTR_COMPUTE_CAPABILITY_MINOR):
            value = ctypes.c_int(0)
            self._check(self.lib.cudaDeviceGetAttribute(ctypes.byref(value), ctypes.c_int(attribute),
                                                        ctypes.c_int(device_id)), "cudaDeviceGetAttribute")
            values.append(value.value)
        return f"{values[0]}.{values[1]}"

    def synchronize(self) -> None:
        self._check(self.lib.cudaDeviceSynchronize(), "cudaDeviceSynchronize")

    # -- memory --------------------------------------------------------------------------------
    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self._check(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(nbytes, 1))), "cudaMalloc")
        return int(ptr.value)

    def free(self, ptr: int) -> None:
        self._check(self.lib.cudaFree(ctypes.c_void_p(ptr)), "cudaFree")

    def memset_async(self, ptr: int, value: int, nbytes: int, stream: int) -> None:
        self._check(self.lib.cudaMemsetAsync(ctypes.c_void_p(ptr), ctypes.c_int(value), ctypes.c_size_t(nbytes),
                                             ctypes.c_void_p(stream)), "cudaMemsetAsync")

    def memcpy_async(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
        self._check(self.lib.cudaMemcpyAsync(ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes),
                                             ctypes.c_int(kind), ctypes.c_void_p(stream)), "cudaMemcpyAsync")

    def upload(self, ptr: int, array: np.ndarray, stream: int) -> None:
        array = np.ascontiguousarray(array)
        self.memcpy_async(ptr, array.ctypes.data, array.nbytes, HOST_TO_DEVICE, stream)

    def download(self, ptr: int, shape: tuple[int, ...], dtype, stream: int) -> np.ndarray:
        out = np.empty(shape, dtype=dtype)
        self.memcpy_async(out.ctypes.data, ptr, out.nbytes, DEVICE_TO_HOST, stream)
        self.stream_synchronize(stream)
        return out

    # -- streams -------------------------------------------------------------------------------
    def stream_create(self) -> int:
        stream = ctypes.c_void_p()
        self._check(self.lib.cudaStreamCreate(ctypes.byref(stream)), "cudaStreamCreate")
        return int(stream.value or 0)

    def stream_synchronize(self, stream: int) -> None:
        self._check(self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")

    def stream_destroy(self, stream: int) -> None:
        self._check(self.lib.cudaStreamDestroy(ctypes.c_void_p(stream)), "cudaStreamDestroy")


class DeviceBuffers:
    """Device allocations freed together when the block ends (one batch's inputs and outputs)."""

    def __init__(self, cuda: CudaRuntime):
        self.cuda, self.pointers = cuda, []

    def alloc(self, shape: tuple[int, ...], dtype, device_id: int = 0) -> DeviceArray:
        shape, dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        ptr = self.cuda.malloc(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        self.pointers.append(ptr)
        return DeviceArray(ptr, shape, dtype, device_id)

    def __enter__(self) -> "DeviceBuffers":
        return self

    def __exit__(self, *exc) -> None:
        for ptr in self.pointers:
            self.cuda.free(ptr)
        self.pointers.clear()


_runtime: CudaRuntime | None = None
_runtime_error: str | None = None
_lock = threading.Lock()


@contextmanager
def device_batch(cuda: "CudaRuntime", windows: list, width: int, device_id: int):
    """(wave, start, end) windows, in GPU or host memory, as one zero-padded [B, width] float32
    DeviceArray on `device_id` (freed on exit): copies stay on the GPU."""
    cuda.set_device(device_id)      # the current device is per host thread
    cuda.synchronize()              # the producer may still be writing its tensors on its own stream
    with DeviceBuffers(cuda) as buffers:
        batch = buffers.alloc((len(windows), width), np.float32, device_id)
        row_bytes, item = width * 4, 4
        cuda.memset_async(batch.ptr, 0, batch.nbytes, 0)
        for row, (wave, start, end) in enumerate(windows):
            destination = batch.ptr + row * row_bytes
            if isinstance(wave, DeviceArray):
                cuda.memcpy_async(destination, wave.ptr + start * item, (end - start) * item, DEVICE_TO_DEVICE, 0)
            else:
                cuda.upload(destination, np.ascontiguousarray(wave[start:end], np.float32), 0)
        cuda.stream_synchronize(0)
        yield batch


def cuda_runtime() -> CudaRuntime:
    """The process-wide libcudart binding; raises CudaError (one line) when there is none."""
    global _runtime, _runtime_error
    with _lock:
        if _runtime is None and _runtime_error is None:
            _runtime, _runtime_error = _load()
    if _runtime is None:
        raise CudaError(_runtime_error)
    return _runtime


def _load() -> tuple[CudaRuntime | None, str | None]:
    for path in _candidate_paths():
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        runtime = CudaRuntime(library)
        try:
            count = runtime.device_count()
        except CudaError as error:
            return None, f"no usable CUDA device ({error})"
        if count == 0:
            return None, "no CUDA device found"
        return runtime, None
    return None, "libcudart not found (install the CUDA runtime or onnxruntime-gpu)"


# --- GPU tensors as inputs (torch, CuPy, JAX, ...), recognised by their protocols ---------------

KDL_CUDA = 2


def is_cuda_array(obj) -> bool:
    """A CUDA tensor: DLPack-capable and exposing __cuda_array_interface__ (torch raises
    AttributeError for the latter on CPU tensors, so hasattr is False for them)."""
    return hasattr(obj, "__dlpack__") and hasattr(obj, "__cuda_array_interface__")


def device_array_of(obj) -> DeviceArray:
    """Describe a CUDA tensor as a DeviceArray of float32 mono samples, without copying it.
    Raises ValueError with the reason when the tensor cannot be read in place."""
    interface = obj.__cuda_array_interface__
    shape = tuple(int(s) for s in interface["shape"])
    dtype = np.dtype(interface["typestr"])
    if dtype != np.float32:
        raise ValueError(f"CUDA audio must be float32, got {dtype} (convert it on the GPU first)")
    long_axes = [axis for axis, size in enumerate(shape) if size > 1]
    if len(shape) not in (1, 2) or len(long_axes) > 1:
        raise ValueError(f"CUDA audio must be mono (1-D), got shape {shape}; mix the channels on the GPU first")
    strides = interface.get("strides")  # None means C-contiguous
    if strides is not None and long_axes and int(strides[long_axes[0]]) != dtype.itemsize:
        raise ValueError("CUDA audio must be contiguous (call .contiguous() first)")
    device_id = 0
    if hasattr(obj, "__dlpack_device__"):
        kind, device_id = obj.__dlpack_device__()
        if int(kind) != KDL_CUDA:
            raise ValueError(f"tensor is not in CUDA memory (DLPack device type {int(kind)})")
    samples = int(np.prod(shape, dtype=np.int64))
    return DeviceArray(int(interface["data"][0]), (samples,), dtype, int(device_id))

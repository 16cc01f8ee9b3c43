"""Inference backends: the three bundle graphs behind one small interface.

    backend.run(graph, feeds) -> outputs      graph in audio_encoder / text_encoder / heads
    backend.describe() -> str                 one line: what runs where

Implementations: ONNX Runtime with the CPU, CUDA or TensorRT execution provider, and native
TensorRT engines (device memory through runtime/cuda.py). `select_backend` picks one, trying
the fastest first, and records why the others were skipped. A backend that was asked for and
cannot load raises BackendUnavailable with a one-line reason, never a silent CPU fallback.

What a backend runs is what was verified: each graph file (and each side file of its weights)
is read once into memory, its sha256 checked against manifest.json (Bundle.read_verified), and
the session or engine is built from those bytes, never from the path. A file swapped or
rewritten after load_bundle hashed it, or while it is read, is refused; one changed after the
session is built no longer matters. External weights (`<graph>.onnx.data`) reach ONNX Runtime
as tensors viewing the verified side-file buffer (add_external_initializers, located by
runtime/onnx_external.py; ORT uses them in place), else as the side file in memory (ORT >=
1.23 copies each tensor out), else through a private temporary folder (0700) ORT opens.

Cost, measured on the default bundle (110 MB of FP32 graphs, 86 MB of it the text encoder's
side file) on a shared 2-core machine: a warm Scorer.load went from 0.29 to 0.47 s (best of 3
interleaved rounds, median of 7 loads each; more under other load). That is reading the side
file (40-70 ms) and hashing the graphs (sha256 at ~1.4 GB/s: ~80 ms), which the hash memo
used to skip because ORT memory-mapped the side file by its path. Building the text encoder's
session from tensors costs about what the path did (0.12 vs 0.10 s); from the whole file in
memory ORT copies every tensor (~0.08 s more per 90 MB), hence tensors first.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import posixpath
import tempfile
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import paths
from .audio import pad_waves
from .bundle import GRAPH_IO, GRAPHS, PRECISIONS, Bundle, BundleError, check_graph_io, load_bundle
from .contract import AUDIO_ENCODER, HEADS, TEXT_ENCODER
from .cuda import CudaError, DeviceArray, DeviceBuffers, cuda_runtime, device_batch
from .engines import TRT_DIR, DeviceDescription, find_engine_set
from .errors import one_line as _one_line
from .onnx_external import external_tensors

BACKENDS = ("auto", "tensorrt", "onnxruntime-tensorrt", "onnxruntime-cuda", "onnxruntime-cpu")
AUTO_ORDER = BACKENDS[1:]
ORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                 "tensorrt": "TensorrtExecutionProvider"}


class BackendUnavailable(RuntimeError):
    """A backend that cannot run here; the message is one line naming it and the cause."""



class Backend:
    """Runs bundle graphs. `device` says where inputs may already live ("cpu" or "cuda")."""

    name = "backend"
    device = "cpu"
    device_id = 0
    max_batch: int | None = None     # an engine's shape profile may cap the batch
    min_samples = 0                  # ... and set a shortest waveform (shorter ones are zero-padded)

    def __init__(self) -> None:
        self.calls: Counter = Counter()     # runs per graph (tests and benchmarks read it)
        self._calls_lock = threading.Lock()
        self.report: BackendReport | None = None

    def run(self, graph: str, feeds: dict) -> dict[str, np.ndarray]:
        with self._calls_lock:
            self.calls[graph] += 1
        return self._run(graph, feeds)

    def _run(self, graph: str, feeds: dict) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def run_pipeline(self, wave, lengths, ids, mask) -> dict[str, np.ndarray]:
        """The three graphs in a row on one batch (row i: clip i and its prompt): the heads' outputs."""
        frames, frame_mask = AUDIO_ENCODER.outputs_of(self.run(AUDIO_ENCODER.name, AUDIO_ENCODER.feeds(wave, lengths)))
        (tokens,) = TEXT_ENCODER.outputs_of(self.run(TEXT_ENCODER.name, TEXT_ENCODER.feeds(ids, mask)))
        return self.run(HEADS.name, HEADS.feeds(frames, frame_mask, tokens, mask))

    def describe(self) -> str:
        return self.name

    @contextmanager
    def waveform_batch(self, windows: list, width: int):
        """(wave, start, end) windows as one zero-padded [B, width] float32 batch, where this
        backend reads it: host memory, or GPU memory when any window is already there."""
        if not any(isinstance(wave, DeviceArray) for wave, _, _ in windows):
            yield pad_waves([wave[start:end] for wave, start, end in windows], width)[0]
            return
        if self.device != "cuda":
            raise RuntimeError(f"{self.name} cannot read GPU memory")
        with device_batch(cuda_runtime(), windows, width, self.device_id) as batch:
            yield batch

    def close(self) -> None:
        pass


# --- ONNX Runtime ----------------------------------------------------------------------------------


class OrtBackend(Backend):
    def __init__(self, bundle: Bundle, precision: str = "fp32", provider: str = "cpu",
                 threads: int | None = None, device_id: int = 0):
        super().__init__()
        import onnxruntime as ort

        if provider not in ORT_PROVIDERS:
            raise ValueError(f"provider must be one of {sorted(ORT_PROVIDERS)}, got {provider!r}")
        self.name = f"onnxruntime-{provider}"
        self.provider, self.precision, self.threads = provider, precision, threads
        self.device = "cpu" if provider == "cpu" else "cuda"
        self.device_id = device_id
        wanted = ORT_PROVIDERS[provider]
        if wanted not in ort.get_available_providers():
            hint = "" if provider == "cpu" else " (pip install onnxruntime-gpu)"
            raise BackendUnavailable(f"{self.name}: this onnxruntime {ort.__version__} has no {wanted}{hint}")
        self._ort = ort
        self.bundle = bundle
        # The three sessions open side by side: ORT parses and optimises outside the GIL, so a
        # cold `deramos-run` waits for the slowest graph (the text encoder), not for the sum.
        with ThreadPoolExecutor(max_workers=len(GRAPHS)) as pool:
            opening = {graph: pool.submit(self._open, graph) for graph in GRAPHS}
            self.sessions = {graph: future.result() for graph, future in opening.items()}
        self.outputs = {graph: [o.name for o in s.get_outputs()] for graph, s in self.sessions.items()}

    def _providers(self) -> list:
        if self.provider == "cpu":
            return ["CPUExecutionProvider"]
        cuda = ("CUDAExecutionProvider", {"device_id": self.device_id})
        if self.provider == "cuda":
            return [cuda, "CPUExecutionProvider"]
        cache = str(_ort_engine_cache(self.bundle))
        trt = ("TensorrtExecutionProvider", {
            "device_id": self.device_id,
            # Precision lives in the graph (FP16 weights, INT8 QDQ); these flags let TensorRT
            # pick the matching kernels for it.
            "trt_fp16_enable": self.precision in ("fp16", "int8"),
            "trt_int8_enable": self.precision == "int8",
            "trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": True, "trt_timing_cache_path": cache,
        })
        return [trt, cuda, "CPUExecutionProvider"]

    def _open(self, graph: str):
        path = self.bundle.graph_path(graph, self.precision)
        model, weights = verified_graph(self.bundle, graph, self.precision)   # BundleError when tampered
        options = self._ort.SessionOptions()
        options.log_severity_level = 3          # fallbacks are reported by us, in one line
        # Each session has its own intra-op pool, whose threads busy-wait after a run by default.
        # A score runs three graphs back to back, so the idle pools spun on the cores the next
        # graph needed: on 2 cores that made a batch of 1 run 2.4x slower (65 vs 27 ms).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.threads:
            options.intra_op_num_threads = int(self.threads)
            options.inter_op_num_threads = 1
        try:
            session = session_from_bytes(self._ort, model, weights, options, self._providers())
        except Exception as error:  # ORT raises its own Fail/InvalidGraph/RuntimeError types
            if self.provider == "cpu":
                raise BundleError(f"{path}: onnxruntime cannot load it ({_one_line(error)})") from None
            raise BackendUnavailable(f"{self.name}: {path.name} did not load ({_one_line(error)})") from None
        wanted = ORT_PROVIDERS[self.provider]
        if wanted not in session.get_providers():
            # ORT drops a provider whose libraries fail to load (CUDA/cuDNN version mismatch)
            # and carries on with the CPU: say so rather than run 50x slower unnoticed.
            libraries = "libcudnn/libcudart version mismatch or no GPU?" if self.provider == "cuda" \
                else "libnvinfer/libcudnn version mismatch or no GPU?"
            raise BackendUnavailable(f"{self.name}: {wanted} did not load ({libraries}); "
                                     f"session fell back to {', '.join(session.get_providers())}")
        check_graph_io(self.bundle, graph, self.precision,
                       [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        return session

    def _run(self, graph: str, feeds: dict) -> dict[str, np.ndarray]:
        if any(isinstance(v, DeviceArray) for v in feeds.values()):
            return self._run_bound(graph, feeds)
        session = self.sessions[graph]
        return dict(zip(self.outputs[graph], session.run(self.outputs[graph], feeds)))

    def _run_bound(self, graph: str, feeds: dict) -> dict[str, np.ndarray]:
        """Inputs already in GPU memory are bound in place (IOBinding): no host round trip."""
        if self.device != "cuda":
            raise RuntimeError(f"{self.name} cannot read GPU memory")
        session = self.sessions[graph]
        binding = session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, DeviceArray):
                binding.bind_input(name, device_type="cuda", device_id=value.device_id,
                                   element_type=value.dtype.type, shape=tuple(value.shape), buffer_ptr=value.ptr)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.outputs[graph]:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        return dict(zip(self.outputs[graph], binding.copy_outputs_to_cpu()))

    def describe(self) -> str:
        threads = f", {self.threads} threads" if self.threads else ""
        return f"{self.name} ({self.precision}{threads}; onnxruntime {self._ort.__version__})"


def verified_graph(bundle: Bundle, graph: str, precision: str) -> tuple[bytes, dict[str, bytes]]:
    """The graph file's bytes and its side files' ({name as the graph refers to it: bytes}),
    each read once and checked against manifest.json when the bundle was verified."""
    names = bundle.graph_names(graph, precision)
    folder = posixpath.dirname(names[0]) or "."
    weights = {}
    for name in names[1:]:
        relative = posixpath.relpath(name, folder)
        if relative.startswith(".."):
            raise BundleError(f"{bundle.root / name}: a side file of {names[0]} must be in its folder "
                              f"(graphs.{graph}.files.{precision} in manifest.json)")
        weights[relative] = bundle.read_verified(name)
    return bundle.read_verified(names[0]), weights


def session_from_bytes(ort, model: bytes, weights: dict[str, bytes], options, providers, how: str | None = None):
    """An InferenceSession built from these bytes only. External weights go to ORT as
    how="tensors": arrays viewing the verified side-file buffers (add_external_initializers; ORT
    uses them in place, so the session keeps them alive), "files": the side files in memory
    (ORT >= 1.23 copies each tensor out), or "copy": a private temporary folder ORT opens.
    None: the first that applies (runtime/onnx_external.py says when "tensors" does not)."""
    if not weights:
        return ort.InferenceSession(model, options, providers=providers)
    tensors = external_tensors(model) if how in (None, "tensors") else None
    if tensors is not None:
        unlisted = sorted({t.location for t in tensors} - set(weights))
        if unlisted:
            raise ValueError(f"its weights are in {unlisted[0]!r}, which manifest.json does not list with it")
        if all(t.offset + t.length <= len(weights[t.location]) for t in tensors):
            values = [ort.OrtValue.ortvalue_from_numpy(t.view(weights[t.location])) for t in tensors]
            options.add_external_initializers([t.name for t in tensors], values)
            session = ort.InferenceSession(model, options, providers=providers)
            session._deramos_weights = (weights, values)   # ORT reads these buffers for the session's life
            return session
    if how == "tensors":
        raise ValueError("its external weights cannot be handed over as tensors")
    if how in (None, "files") and hasattr(options, "add_external_initializers_from_files_in_memory"):
        names = list(weights)
        options.add_external_initializers_from_files_in_memory(names, [weights[n] for n in names],
                                                               [len(weights[n]) for n in names])
        return ort.InferenceSession(model, options, providers=providers)
    # mkdtemp makes the folder 0700: no one else can put other bytes under the names ORT opens.
    with tempfile.TemporaryDirectory(prefix="deramos-graph-", ignore_cleanup_errors=True) as scratch:
        graph = Path(scratch) / "graph.onnx"
        for name, data in {"graph.onnx": model, **weights}.items():
            target = Path(scratch) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return ort.InferenceSession(str(graph), options, providers=providers)


def _ort_engine_cache(bundle: Bundle) -> Path:
    """ORT-TensorRT engines go beside the bundle's own engines; a read-only bundle (installed
    in site-packages, a shared volume) gets a per-bundle folder in the user cache instead."""
    preferred = bundle.root / TRT_DIR / "onnxruntime"
    try:
        preferred.mkdir(parents=True, exist_ok=True)
        if os.access(preferred, os.W_OK):
            return preferred
    except OSError:
        pass
    tag = hashlib.sha256(str(bundle.root.resolve()).encode()).hexdigest()[:12]
    fallback = paths.cache_home() / "ort-trt" / tag
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


# --- native TensorRT ---------------------------------------------------------------------------


class _Engine:
    """One deserialised engine with its execution context (not thread-safe: used under a lock)."""

    def __init__(self, trt, runtime, path: Path, data: bytes):
        self.engine = runtime.deserialize_cuda_engine(data)   # the verified bytes, not the path
        if self.engine is None:
            raise BackendUnavailable(f"tensorrt: cannot deserialise {path} (corrupt, or built by another TensorRT)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [n for n in names if is_input[n]]
        self.outputs = [n for n in names if not is_input[n]]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.lock = threading.Lock()

    def profile(self, name: str, which: int, axis: int) -> int:
        """One axis of profile 0's shapes for an input; which: 0 min, 1 opt, 2 max."""
        return int(self.engine.get_tensor_profile_shape(name, 0)[which][axis])

    def max_batch(self) -> int:
        return min(self.profile(name, 2, 0) for name in self.inputs)   # axis 0 is the batch everywhere


class TensorRTBackend(Backend):
    name = "tensorrt"
    device = "cuda"

    def __init__(self, bundle: Bundle, precision: str = "fp32", build: bool = False, device_id: int = 0):
        super().__init__()
        trt = _import_tensorrt()
        try:
            self.cuda = cuda_runtime()
            self.cuda.set_device(device_id)
            device = DeviceDescription(self.cuda.device_name(device_id), self.cuda.compute_capability(device_id),
                                       trt.__version__)
        except CudaError as error:
            raise BackendUnavailable(f"tensorrt: {error}") from None
        self.bundle, self.precision, self.device_id, self.device_info = bundle, precision, device_id, device
        engines, self.skipped = find_engine_set(bundle.root, precision, device, bundle.files)
        if engines is None and build:
            _build_engines(bundle, precision)
            bundle = load_bundle(bundle.root)    # the build added its engines to manifest.json
            self.bundle = bundle
            engines, self.skipped = find_engine_set(bundle.root, precision, device, bundle.files)
        if engines is None:
            raise BackendUnavailable(no_engine_message(precision, device, self.skipped, bundle.root))
        self.engine_set = engines
        self.stream = self.cuda.stream_create()
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        self.engines = {graph: _Engine(trt, self._runtime, engines.engine_path(graph),
                                       bundle.read_verified(engines.engine_path(graph).relative_to(bundle.root).as_posix()))
                        for graph in GRAPHS}
        for graph, engine in self.engines.items():
            inputs, outputs = _manifest_order(graph, engine.inputs), _manifest_order(graph, engine.outputs, 1)
            check_graph_io(bundle, graph, precision, inputs, outputs)
        self.max_batch = min(e.max_batch() for e in self.engines.values())
        # Padding a batch wider changes no score (lengths mask it), so clips shorter than the
        # profile's shortest waveform are padded up to it rather than refused.
        waveform = AUDIO_ENCODER.input_names[0]
        self.min_samples = self.engines[AUDIO_ENCODER.name].profile(waveform, 0, 1)

    def _run(self, graph: str, feeds: dict) -> dict[str, np.ndarray]:
        engine, cuda, stream = self.engines[graph], self.cuda, self.stream
        cuda.set_device(self.device_id)     # the current device is per host thread
        with engine.lock, DeviceBuffers(cuda) as buffers:
            staged = []   # host copies stay alive until the stream is synchronised
            for name in engine.inputs:
                value, dtype = feeds[name], engine.dtypes[name]
                if isinstance(value, DeviceArray):
                    if value.dtype != dtype:
                        raise RuntimeError(f"{graph}: input {name} is {value.dtype} in GPU memory, engine wants {dtype}")
                    device_value = value
                else:
                    host = np.ascontiguousarray(value, dtype=dtype)
                    device_value = buffers.alloc(host.shape, dtype, self.device_id)
                    cuda.upload(device_value.ptr, host, stream)
                    staged.append(host)
                if not engine.context.set_input_shape(name, tuple(device_value.shape)):
                    raise RuntimeError(f"{graph}: input {name} shape {tuple(device_value.shape)} is outside "
                                       f"the engine's shape profile (rebuild with deramos-build BUNDLE --trt "
                                       f"--max-batch N)")
                engine.context.set_tensor_address(name, device_value.ptr)
            results = {}
            for name in engine.outputs:
                shape = tuple(engine.context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise RuntimeError(f"{graph}: output {name} has an unresolved shape {shape}")
                results[name] = buffers.alloc(shape, engine.dtypes[name], self.device_id)
                engine.context.set_tensor_address(name, results[name].ptr)
            if not engine.context.execute_async_v3(stream):
                raise RuntimeError(f"{graph}: TensorRT execution failed")
            host_out = {name: cuda.download(d.ptr, d.shape, d.dtype, stream) for name, d in results.items()}
            cuda.stream_synchronize(stream)
        return host_out

    def describe(self) -> str:
        return f"tensorrt ({self.precision}; engines {self.engine_set.directory.name} on {self.device_info})"

    def close(self) -> None:
        if getattr(self, "stream", None):
            self.cuda.stream_destroy(self.stream)
            self.stream = 0


def _import_tensorrt():
    if importlib.util.find_spec("tensorrt") is None:
        raise BackendUnavailable("tensorrt: the tensorrt Python package is not installed (pip install 'deramos[gpu]')")
    try:
        import tensorrt
    except Exception as error:  # a broken install raises anything from ImportError to OSError
        raise BackendUnavailable(f"tensorrt: cannot import tensorrt ({_one_line(error)})") from None
    return tensorrt


def _build_engines(bundle: Bundle, precision: str) -> None:
    try:
        from .engine_build import build_engines
    except ImportError as error:
        raise BackendUnavailable(f"tensorrt: no engine for this GPU and building one needs the export extra "
                                 f"(pip install 'deramos[export]'): {_one_line(error)}") from None
    try:
        build_engines(bundle.root, precision, say=lambda _: None)
    except Exception as error:   # TensorRTUnavailable, a failed build, a read-only bundle
        raise BackendUnavailable(f"tensorrt: building {precision} engines failed ({_one_line(error)})") from None


def no_engine_message(precision: str, device: DeviceDescription, skipped: list[str], bundle_root=None) -> str:
    why = f"; skipped {'; '.join(skipped)}" if skipped else ""
    return (f"tensorrt: no {precision} engine in the bundle for {device}{why} "
            f"(build them on this GPU, no torch needed: deramos-build {bundle_root or 'BUNDLE'} --trt)")


def _manifest_order(graph: str, names: list[str], which: int = 0) -> list[str]:
    """TensorRT lists I/O tensors in its own order; compare them to the manifest in its order."""
    expected = list(GRAPH_IO[graph][which])
    return sorted(names, key=lambda n: expected.index(n) if n in expected else len(expected))


# --- choosing ------------------------------------------------------------------------------------


@dataclass
class BackendReport:
    requested: str
    precision: str
    chosen: str = ""
    description: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (backend, reason)

    def __str__(self) -> str:
        lines = [f"backend: {self.description or self.chosen} (requested {self.requested})"]
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped]
        return "\n".join(lines)


def open_backend(name: str, bundle: Bundle, precision: str, threads: int | None = None,
                 build: bool = False) -> Backend:
    if name == "tensorrt":
        return TensorRTBackend(bundle, precision, build=build)
    if name.startswith("onnxruntime-"):
        return OrtBackend(bundle, precision, name.removeprefix("onnxruntime-"), threads)
    raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")


def check_precision(bundle: Bundle, precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    for graph in GRAPHS:
        bundle.graph_path(graph, precision)   # BundleError naming what the bundle has


def select_backend(bundle: Bundle, backend: str = "auto", precision: str = "fp32",
                   threads: int | None = None, build: bool = False) -> Backend:
    """The requested backend, or with "auto" the first of tensorrt, onnxruntime-tensorrt,
    onnxruntime-cuda, onnxruntime-cpu that loads. `backend.report` says what was skipped and why."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    check_precision(bundle, precision)
    report = BackendReport(backend, precision)
    candidates = AUTO_ORDER if backend == "auto" else (backend,)
    for name in candidates:
        try:
            chosen = open_backend(name, bundle, precision, threads, build)
        except BackendUnavailable as error:
            if backend != "auto":
                raise
            report.skipped.append((name, _reason(name, error)))
            continue
        except BundleError:
            raise
        except Exception as error:   # a GPU stack failing in an unforeseen way must not stop "auto"
            if backend != "auto" or name == "onnxruntime-cpu":
                raise BackendUnavailable(f"{name}: {_one_line(error)}") from None
            report.skipped.append((name, _one_line(error)))
            continue
        report.skipped += [("tensorrt", s) for s in getattr(chosen, "skipped", [])]
        report.chosen, report.description = chosen.name, chosen.describe()
        chosen.report = report
        return chosen
    reasons = "; ".join(f"{name}: {reason}" for name, reason in report.skipped)
    raise BackendUnavailable(f"no backend could load: {reasons}")


def _reason(name: str, error: Exception) -> str:
    return _one_line(error).removeprefix(f"{name}: ")

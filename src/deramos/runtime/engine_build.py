"""TensorRT engines from a bundle's ONNX graphs, built FOR the GPU they run on.

    bundle/trt/<device-tag>/<graph>.<precision>.engine
    bundle/trt/<device-tag>/build.json     TensorRT version, GPU name, compute capability,
                                           precision, optimisation profiles, files
    bundle/trt/<device-tag>/timing.cache   reused by the next build on that device

Precision lives in the ONNX (FP16 graphs, INT8 QDQ graphs), so the network is parsed as
strongly typed where the TensorRT version supports it (10.x: the STRONGLY_TYPED flag; 11.x:
always, the precision builder flags are gone). TensorRT 8.6 takes the FP16/INT8 builder
flags instead. Nothing here runs without `tensorrt` and a CUDA GPU: `available()` says why.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .bundle import GRAPHS, load_bundle
from .contract import SPECS, axis_sizes, seconds_to_samples
from .cuda import CudaError, cuda_runtime
from .engines import BUILD_FILE, TRT_DIR, engine_file_name
from .errors import progress_log


class TensorRTUnavailable(RuntimeError):
    pass


@dataclass
class Profiles:
    """min/opt/max shapes. Defaults suit a reward loop: a handful of candidates per step."""

    batch: tuple[int, int, int] = (1, 4, 8)
    tokens: tuple[int, int, int] = (1, 16, 0)          # 0: the bundle's max tokens
    seconds: tuple[float, float, float] = (0.1, 10.0, 0.0)   # 0: the bundle's window
    extra: dict = field(default_factory=dict)


def available() -> tuple[bool, str]:
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError:
        return False, "TensorRT is not installed (pip install 'deramos[gpu]' on a machine with an NVIDIA GPU)"
    try:
        device_name()
    except TensorRTUnavailable as err:
        return False, str(err)
    return True, ""


def device_name() -> dict:
    """{"name", "compute_capability"} of GPU 0, through the runtime's libcudart binding (runtime/cuda.py)."""
    try:
        cuda = cuda_runtime()
        return {"name": cuda.device_name(0), "compute_capability": cuda.compute_capability(0)}
    except CudaError as error:
        raise TensorRTUnavailable(f"no usable CUDA GPU: {error}") from None


def device_tag(device: dict, trt_version: str) -> str:
    name = re.sub(r"[^A-Za-z0-9]+", "-", device["name"]).strip("-").lower()
    return f"{name}-sm{device['compute_capability'].replace('.', '')}-trt{trt_version}"


def _major(version: str) -> int:
    return int(version.split(".")[0])


def _shapes(graph: str, bundle, profiles: Profiles) -> dict[str, tuple[tuple, tuple, tuple]]:
    """min/opt/max input shapes of one graph, from its GraphSpec's axes (runtime/contract.py)."""
    cfg = bundle.manifest.model_config
    max_tokens = profiles.tokens[2] or bundle.max_tokens
    window = profiles.seconds[2] or bundle.window_seconds
    seconds = (profiles.seconds[0], min(profiles.seconds[1], window), window)
    tokens = (profiles.tokens[0], min(profiles.tokens[1], max_tokens), max_tokens)
    sizes = [axis_sizes(batch=profiles.batch[i], samples=seconds_to_samples(seconds[i], bundle.sample_rate),
                        samples_per_frame=bundle.samples_per_frame, tokens=tokens[i],
                        audio_dim=cfg["audio"]["hidden_size"], text_dim=cfg["text"]["hidden_size"]) for i in range(3)]
    per_size = [SPECS[graph].shapes(s) for s in sizes]
    return {name: tuple(shapes[name] for shapes in per_size) for name in per_size[0]}


def build_engines(bundle_dir: str | Path, precision: str = "fp16", profiles: Profiles | None = None,
                  say=progress_log.info) -> Path:
    """Build one engine per graph for this GPU; returns the engine directory."""
    ok, why = available()
    if not ok:
        raise TensorRTUnavailable(why)
    import tensorrt as trt

    bundle = load_bundle(bundle_dir)
    profiles = profiles or Profiles()
    device = device_name()
    out = Path(bundle_dir) / TRT_DIR / device_tag(device, trt.__version__)
    out.mkdir(parents=True, exist_ok=True)
    logger = trt.Logger(trt.Logger.WARNING)
    record = _existing_record(out / BUILD_FILE) or {
        "tensorrt_version": trt.__version__, "gpu_name": device["name"],
        "compute_capability": device["compute_capability"], "precision": [], "engines": {}, "profiles": {}}
    # One build.json per device directory, listing every precision built there.
    record["precision"] = sorted(set(record["precision"]) | {precision})
    for graph in GRAPHS:
        onnx_path = bundle.graph_path(graph, precision)
        shapes = _shapes(graph, bundle, profiles)
        engine = _build_one(trt, logger, onnx_path, shapes, precision, out / "timing.cache")
        name = engine_file_name(graph, precision)
        (out / name).write_bytes(engine)
        record["engines"][f"{graph}.{precision}"] = name
        record["profiles"][f"{graph}.{precision}"] = {k: [list(s) for s in v] for k, v in shapes.items()}
        say(f"TensorRT {graph} ({precision}) -> {out / name}")
    (out / BUILD_FILE).write_text(json.dumps(record, indent=2))
    _list_in_manifest(Path(bundle_dir), [out / BUILD_FILE, *(out / name for name in record["engines"].values())])
    return out


def _list_in_manifest(bundle_dir: Path, paths: list[Path]) -> None:
    """The runtime opens only files that manifest.json lists with their sha256."""
    bundle = load_bundle(bundle_dir, verify=False)
    bundle.list_files(path.relative_to(bundle_dir).as_posix() for path in paths)
    bundle.save()


def _existing_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    precisions = record.get("precision", [])
    record["precision"] = [precisions] if isinstance(precisions, str) else list(precisions)
    return record


def _build_one(trt, logger, onnx_path: Path, shapes: dict, precision: str, cache_path: Path) -> bytes:
    builder = trt.Builder(logger)
    major = _major(trt.__version__)
    flags = 0
    if major < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if major >= 10 and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path.name}: TensorRT could not parse the graph: {errors}")
    config = builder.create_builder_config()
    if major < 10:   # 8.x: no strong typing, precision by builder flags
        if precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            config.set_flag(trt.BuilderFlag.FP16)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path.name}: TensorRT engine build failed (see the TensorRT log above)")
    cache_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return bytes(serialized)

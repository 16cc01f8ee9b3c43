"""The build stage: an FP32 bundle -> FP16 and INT8 graphs, each checked against FP32.

No torch: it reads the bundle (manifest, FP32 graphs, tokenizer), writes the new graphs beside
them, and runs every new precision against FP32 through the runtime's own backends on a
held-out set (calibration/drift.py). A precision that misses its tolerance is dropped from
the bundle — its files deleted, its failed report kept in the manifest — and the precisions
that passed stay usable; `BuildResult.failed` names what failed.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..calibration.dataset import ClipSet, load_calibration_set
from ..calibration.drift import MIN_CLIPS, drift_set, measure_drift
from ..calibration.quantize import (
    check_int8_options,
    int8_ops,
    int8_ranges,
    op_flops,
    quantize,
    quantized_share,
    ranges_path,
)
from ..runtime.bundle import GRAPHS, Bundle, graph_file_name, load_bundle, verify_files
from ..runtime.compare import Comparison
from ..runtime.contract import AUDIO_ENCODER, INT8_DEFAULT_GRAPHS, TEXT_ENCODER, TOLERANCES, fp32_kept_prefixes
from ..runtime.targets import INT8_TARGETS, default_int8_target, int8_scheme
from ..runtime.text import PromptTokenizer
from .calibset import SHIPPED_DIR, SHIPPED_INDEX, ship_calibration, shipped_files
from .fp16 import convert_to_fp16
from .onnxio import save_onnx
from .speed import measure_speed


@dataclass
class BuildOptions:
    fp16: bool = False
    int8: bool = False
    calib: str | None = None            # MusicEval dir, JSONL, folder + prompts.txt, "probes", or None: rendered
    calib_method: str = "minmax"
    calib_clips: int = 64
    check_clips: int = MIN_CLIPS         # held-out clips every new precision is compared on (>= MIN_CLIPS)
    int8_graphs: tuple[str, ...] = INT8_DEFAULT_GRAPHS
    int8_target: str = field(default_factory=default_int8_target)
    int8_ops: tuple[str, ...] = ()       # of calibration/quantize.py's INT8_OPS; empty: the target's default
    recalibrate: bool = False
    int8_search: bool = False            # INT8 misses its target: keep the costliest layers FP32 until it meets it
    # The search judges candidates on the clips it calibrated on, which flatters them: it asks for this
    # much more than the held-out check will (measured on the default model: passing on the
    # calibration clips exactly, MI drift 0.296 of the spread on held-out clips, gate 0.2).
    int8_search_margin: float = 0.3
    # A graph is INT8 when this share of its FLOPs (MatMul/Gemm/Conv) runs in integer kernels: the
    # search fails rather than pass with the work in FP32 (it once kept 0.03 % of the default
    # model's FLOPs INT8 and called that int8).
    int8_min_flop_share: float = 0.5
    ship_calib: str | None = None        # a JSONL of real clips to copy into the bundle (build/calibset.py)
    seed: int = 0
    threads: int | None = None
    check: bool = True                   # False: skip the comparison with FP32 (benchmark bundles only)
    speed: bool = True                   # time each kept precision against FP32 on this machine (builder/speed.py)
    trt: bool = False                    # also TensorRT engines for this GPU, one per precision in the bundle
    trt_max_batch: int = 8

    @property
    def adds_anything(self) -> bool:
        return self.fp16 or self.int8 or self.trt or bool(self.ship_calib)


def engines_only(options: BuildOptions) -> BuildOptions:
    """The TensorRT step of `options` alone (deramos-export runs it once the ONNX bundle is
    complete, so a machine without TensorRT keeps that bundle)."""
    return replace(options, fp16=False, int8=False, ship_calib=None, trt=True)


def bundle_calibration(bundle: Bundle) -> str | None:
    """What INT8 calibrates on when no calibration data is named: the clips the bundle ships —
    a shipped calibration set (build/calibset.py: real clips, `--ship-calib`), else "probes" (its
    probe clips, rendered music written at export; no torch, no rendering) — or None (rendered
    synthetic music) for a bundle without either."""
    from ..runtime.probes import PROBE_INDEX

    if SHIPPED_INDEX in bundle.files:
        return str(bundle.root / SHIPPED_INDEX)
    return "probes" if PROBE_INDEX in bundle.files else None


@dataclass
class BuildResult:
    checks: dict[str, Comparison]

    @property
    def failed(self) -> list[str]:
        return [p for p, c in self.checks.items() if not c.passed]


def build_bundle(root: str | Path, options: BuildOptions, say: Callable[[str], None] = lambda _: None) -> BuildResult:
    """Add the asked-for precisions to the bundle at `root`, check them, keep those that pass."""
    bundle = load_bundle(root, verify=False)
    # The calibration cache is checked by its own key (graph hash, method, data) and rebuilt
    # when stale; every other file must be what the manifest says.
    verify_files(bundle.root, {n: h for n, h in bundle.files.items()
                               if not n.startswith("calibration/") or n.startswith(SHIPPED_DIR + "/")})
    if options.ship_calib:
        _ship_calibration(bundle, options, say)
    if options.int8:
        check_int8_options(options)
    added = {}
    if options.fp16:
        added["fp16"] = _add_fp16(bundle)
    if options.int8:
        added["int8"] = _add_int8(bundle, options, say)
    bundle.save()
    checks = {}
    if not (options.check and added) and not options.trt:
        return BuildResult(checks)
    held = drift_set(options.calib if options.calib != "probes" else None, bundle, options.check_clips,
                     seed=options.seed + 4242)
    for precision, files in (added.items() if options.check else ()):
        checks[precision] = measure_drift(bundle, precision, held, options.threads)
        if precision == "int8" and options.int8_search and not checks[precision].passed:
            say(checks[precision].format())
            checks[precision] = _search_int8(bundle, options, held, say)
        say(checks[precision].format())
        if not checks[precision].passed:
            bundle.drop_precision(precision, files)
    kept = [p for p in added if p in checks and checks[p].passed]
    if options.speed and kept:
        speed = measure_speed(bundle, kept, held, options.threads)
        say(speed.format())
        bundle.record_speed(speed.to_dict())
    if options.trt:
        bundle, engine_checks = _add_engines(bundle, options, held, say)
        checks.update(engine_checks)
    bundle.record_checks({p: c.to_dict() for p, c in checks.items()})
    bundle.save()
    return BuildResult(checks)


def _ship_calibration(bundle: Bundle, options: BuildOptions, say) -> None:
    """Copy the clips of options.ship_calib into the bundle, listed in place of any shipped before;
    INT8 calibrates on them unless other data is named."""
    say(f"shipping {ship_calibration(bundle.root, options.ship_calib)} calibration clips from "
        f"{options.ship_calib} in {SHIPPED_DIR}/")
    bundle.unlist_files([n for n in bundle.files if n.startswith(SHIPPED_DIR + "/")])
    bundle.list_files(shipped_files(bundle.root))
    bundle.save()
    if options.calib is None:
        options.calib = bundle_calibration(bundle)


def _add_engines(bundle: Bundle, options: BuildOptions, held: ClipSet, say) -> tuple[Bundle, dict[str, Comparison]]:
    """TensorRT engines for this GPU, each set compared with ONNX Runtime FP32 like any other
    artefact; a set that misses is unlisted from the manifest (the runtime opens listed files only).
    build_engines lists what it writes in manifest.json itself: the bundle returned is read again."""
    from ..runtime.engine_build import Profiles, TensorRTUnavailable, build_engines

    bundle.save()
    batch = (1, min(4, options.trt_max_batch), options.trt_max_batch)
    checks = {}
    for precision in bundle.precisions():
        try:
            out = build_engines(bundle.root, precision, Profiles(batch=batch), say=say)
        except TensorRTUnavailable as error:
            raise ValueError(f"--trt: {error}") from None
        bundle = load_bundle(bundle.root, verify=False)
        checks[f"tensorrt-{precision}"] = check = measure_drift(bundle, precision, held, options.threads,
                                                               backend="tensorrt")
        say(check.format())
        if not check.passed:
            folder = out.relative_to(bundle.root).as_posix()
            bundle.unlist_files([n for n in bundle.files
                                 if n.startswith(folder + "/") and n.endswith(f".{precision}.engine")])
            bundle.save()
    return bundle, checks


def _search_int8(bundle: Bundle, options: BuildOptions, held: ClipSet, say) -> Comparison:
    """Per-layer sensitivity on the calibration clips, the costliest layers kept FP32 until INT8
    meets its tolerance, tightened by the search margin, there (builder/search.py); then the
    held-out check again, at the plain tolerance."""
    from .search import search_exclusions

    clips = _calibration_clips(bundle, options, say)
    for graph in options.int8_graphs:
        ranges, _ = int8_ranges(bundle, graph, options, lambda: clips, say)
        flops = _graph_flops(bundle, graph)
        result = search_exclusions(bundle, graph, ranges, options.calib_method, options.int8_target, clips,
                                   TOLERANCES["int8"].tightened(options.int8_search_margin), say,
                                   flops=flops, min_flop_share=options.int8_min_flop_share, ops=options.int8_ops)
        if not result.comparison.passed:            # no INT8 graph of `graph` passed: INT8 is dropped
            bundle.record_int8_search(graph, result.to_dict())
            bundle.save()
            return result.comparison
        bundle.record_int8_search(graph, result.to_dict(), _quantized(bundle, graph, flops))
        timing = result.seconds_per_batch
        say(f"{graph}: kept FP32 {result.kept_fp32 or 'nothing'}; seconds per batch: FP32 {timing['fp32']:.4f}, "
            f"INT8 everywhere {timing['int8_all_layers']:.4f}, INT8 as searched {timing['int8_searched']:.4f}")
    bundle.save()
    return measure_drift(bundle, "int8", held, options.threads)


def _graph_flops(bundle: Bundle, graph: str) -> dict[str, float]:
    """FLOPs per MatMul/Gemm/Conv of the FP32 `graph` on one window (audio) or prompt (text)."""
    if graph == "audio_encoder":
        feeds = AUDIO_ENCODER.feeds(np.zeros((1, bundle.window_samples), np.float32),
                                    np.array([bundle.window_samples], np.int64))
    else:
        ids, mask = PromptTokenizer(bundle.tokenizer_file, bundle.max_tokens).encode(
            ["a calm solo piano piece with soft strings, slow and sad"])
        feeds = TEXT_ENCODER.feeds(ids, mask)
    return op_flops(bundle.graph_path(graph, "fp32"), feeds)


def _quantized(bundle: Bundle, graph: str, flops: dict[str, float]) -> dict:
    """What of `graph`'s INT8 file is INT8 (calibration/quantize.py); none at all is an error."""
    share = quantized_share(bundle.root / graph_file_name(graph, "int8"), flops)
    if not share["quantized_ops"]:
        raise ValueError(f"{graph}: the INT8 graph has no quantised op ({share['quantizable_ops']} quantisable); "
                         "it would be FP32 under the name int8")
    return share


def _add_fp16(bundle: Bundle) -> list[str]:
    written = []
    for graph in GRAPHS:
        paths = convert_to_fp16(bundle.graph_path(graph, "fp32"), bundle.root / graph_file_name(graph, "fp16"))
        bundle.set_graph_files(graph, "fp16", [p.name for p in paths])
        written += [p.name for p in paths]
    return written


def _add_int8(bundle: Bundle, options: BuildOptions, say) -> list[str]:
    clips = functools.cache(lambda: _calibration_clips(bundle, options, say))
    written, reused, quantized = [], {}, {}
    for graph in options.int8_graphs:
        ranges, reused[graph] = int8_ranges(bundle, graph, options, clips, say)
        flops = _graph_flops(bundle, graph)
        paths = save_onnx(quantize(bundle.graph_path(graph, "fp32"), ranges, options.calib_method, options.int8_target,
                                   ops=options.int8_ops, flops=flops),
                          bundle.root / graph_file_name(graph, "int8"))
        bundle.set_graph_files(graph, "int8", [p.name for p in paths])
        quantized[graph] = _quantized(bundle, graph, flops)
        bundle.list_files([ranges_path(bundle.root, graph).relative_to(bundle.root).as_posix()])
        written += [p.name for p in paths]
    for graph in GRAPHS:
        if graph not in options.int8_graphs:      # kept FP32: the INT8 entry points at the FP32 file
            bundle.set_graph_files(graph, "int8", bundle.graph_names(graph, "fp32"))
    bundle.set_int8({
        "target": options.int8_target, "target_means": INT8_TARGETS[options.int8_target][1],
        "scheme": int8_scheme(options.int8_target).to_dict(), "method": options.calib_method,
        "quantized_graphs": list(options.int8_graphs), "quantized": quantized,
        "quantized_ops": list(int8_ops(options.int8_target, options.int8_ops)),
        "fp32_kept": [f"nodes under {p}" for p in fp32_kept_prefixes()] + [g for g in GRAPHS if g not in options.int8_graphs],
        "calibration_set": _describe_clips(clips()) if not all(reused.values()) else "cached ranges",
        "reused_cache": reused,
    })
    return written


def _calibration_clips(bundle: Bundle, options: BuildOptions, say) -> ClipSet:
    window = bundle.window_seconds
    if options.calib == "probes":
        from ..runtime.audio import load_audio
        from ..runtime.probes import load_probes

        probes = load_probes(bundle)
        files, prompts = probes.files[:options.calib_clips], probes.prompts[:options.calib_clips]
        clips = ClipSet([load_audio(f, bundle.sample_rate) for f in files], prompts,
                        source="the bundle's probe clips")
    else:
        clips = load_calibration_set(options.calib, bundle.sample_rate, window, options.calib_clips, seed=options.seed)
    if not clips.waves:
        why = "; ".join(clips.problems[:3]) or "it lists no clips"
        raise ValueError(f"calibration set {clips.source}: no usable clips ({why})")
    short = f" (asked for {options.calib_clips}; that is all it has)" if len(clips.waves) < options.calib_clips else ""
    say(f"calibrating on {len(clips.waves)} clips from {clips.source}{short} ({options.calib_method}, "
        f"INT8 target {options.int8_target})")
    for problem in clips.problems:
        say(f"calibration: skipped {problem}")
    return clips


def _describe_clips(loaded: ClipSet) -> dict:
    return {"source": loaded.source, "clips": len(loaded.waves), "skipped": loaded.problems}

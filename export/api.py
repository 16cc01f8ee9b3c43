"""`export_bundle`: a trained model -> a validated bundle directory (runtime/bundle.py)."""
from __future__ import annotations

import contextlib
import functools
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..runtime.bundle import FORMAT, FORMAT_VERSION, GRAPH_IO, GRAPHS, graph_file_name, sha256_file
from .graphs import DEFAULT_OPSET, example_inputs, export_graph, export_mode, graph_modules


@dataclass
class ExportOptions:
    fp16: bool = False
    int8: bool = False
    calib: str | None = None
    calib_method: str = "minmax"
    recalibrate: bool = False
    opset: int = DEFAULT_OPSET
    validate: bool = True
    validate_clips: int = 64
    calib_clips: int = 64
    int8_graphs: tuple[str, ...] = ("audio_encoder",)   # the others stay FP32 (calibration/quantize.py)
    seed: int = 0
    progress: bool = True
    timings: dict = field(default_factory=dict)


class ExportFailed(RuntimeError):
    """Validation or calibration failed; the message is the report."""


def export_bundle(model, out: str | Path, options: ExportOptions | None = None,
                  say: Callable[[str], None] = print) -> dict:
    """Write graphs, tokenizer and manifest; validate each precision against PyTorch.
    On a failed validation nothing is marked usable: manifest.json is not written."""
    from .validate import format_report

    options = options or ExportOptions()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)     # a half-written bundle is never loadable
    files: dict[str, dict[str, list[str]]] = {g: {} for g in GRAPHS}
    timer = functools.partial(_timed, options.timings)

    with timer("export fp32"):
        _export_fp32(model, out, options, files)
    tokenizer = _copy_tokenizer(model, out)
    if options.fp16:
        from .fp16 import convert_to_fp16

        with timer("convert fp16"):
            for graph in GRAPHS:
                written = convert_to_fp16(out / files[graph]["fp32"][0], out / graph_file_name(graph, "fp16"))
                files[graph]["fp16"] = [p.name for p in written]
    parity: dict[str, dict] = {}
    calibration: dict = {}
    if options.int8:
        from ..calibration.quantize import build_int8_graphs

        with timer("calibrate int8"):
            calibration = build_int8_graphs(model, out, files, options, say)
        used = calibration.get("calibration_set", {}).get("clips")
        if used is not None and used < options.calib_clips:
            say(f"calibration: --calib-clips {options.calib_clips} asked for, but only {used} usable clips "
                f"in {calibration['calibration_set']['source']}: calibrated on {used}")
    if options.validate:
        with timer("validate"):
            parity = _validate(model, out, files, options, tokenizer)
        for precision, report in parity.items():
            say(format_report(precision, report))
        failed = [p for p, r in parity.items() if not r["passed"]]
        if options.int8 and calibration.get("drift") and not calibration["drift"]["passed"]:
            failed.append("int8")
        if failed:
            (out / "validation_report.json").write_text(json.dumps({"parity": parity, "calibration": calibration}, indent=2))
            reasons = [f"{p}: {f}" for p in failed for f in (parity.get(p) or calibration.get("drift", {})).get("failures", [])]
            raise ExportFailed(f"validation failed for {', '.join(failed)} ({'; '.join(reasons)}); report in {out / 'validation_report.json'}; "
                               "manifest.json not written (use --no-validate to skip)")
    manifest = build_manifest(model, out, files, tokenizer, parity, calibration, options)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _export_fp32(model, out: Path, options: ExportOptions, files: dict) -> None:
    modules = graph_modules(model)
    with export_mode(model):
        inputs = example_inputs(model)
        for graph in GRAPHS:
            written = export_graph(graph, modules[graph], inputs[graph], out / graph_file_name(graph, "fp32"), options.opset)
            files[graph]["fp32"] = [p.name for p in written]


def _copy_tokenizer(model, out: Path) -> Path:
    from ..text_encoder import tokenizer_file

    source = getattr(model, "checkpoint_dir", None)
    src = Path(source) / "tokenizer.json" if source and (Path(source) / "tokenizer.json").is_file() \
        else tokenizer_file(model.cfg.text)
    shutil.copyfile(src, out / "tokenizer.json")
    return out / "tokenizer.json"


def _validate(model, out: Path, files: dict, options: ExportOptions, tokenizer: Path) -> dict:
    from ..runtime.text import PromptTokenizer
    from .samples import sample_set
    from .validate import compare, onnx_outputs, ort_sessions, torch_outputs

    cfg = model.cfg
    samples = sample_set(options.validate_clips, cfg.audio.sample_rate, cfg.audio.window_seconds, seed=options.seed + 1)
    tok = PromptTokenizer(tokenizer, cfg.text.max_tokens)
    reference = torch_outputs(model, samples, tok)
    reports = {}
    for precision in ("fp32", "fp16"):
        if precision in files["heads"]:
            sessions = ort_sessions({g: out / files[g][precision][0] for g in GRAPHS})
            reports[precision] = compare(reference, onnx_outputs(sessions, samples, tok), precision)
    return reports


def build_manifest(model, out: Path, files: dict, tokenizer: Path, parity: dict, calibration: dict,
                   options: ExportOptions) -> dict:
    import onnx
    import onnxruntime
    import torch

    from .. import __version__
    from ..features import min_tail_samples

    cfg = model.cfg
    graphs = {}
    for graph in GRAPHS:
        inputs, outputs = _io_spec(out / files[graph]["fp32"][0])
        assert [i["name"] for i in inputs] == list(GRAPH_IO[graph][0])
        graphs[graph] = {"inputs": inputs, "outputs": outputs, "files": files[graph]}
    listed = sorted({name for g in files.values() for names in g.values() for name in names} | {tokenizer.name}
                    | set(calibration.get("files", [])))
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model": {"name": cfg.name, "config": cfg.to_dict()},
        "sample_rate": cfg.audio.sample_rate, "window_seconds": cfg.audio.window_seconds,
        "samples_per_frame": cfg.audio.samples_per_frame, "min_tail_samples": min_tail_samples(cfg),
        "score": {"min": cfg.heads.score_min, "max": cfg.heads.score_max, "bins": cfg.heads.num_bins},
        "tokenizer": {"file": tokenizer.name, "max_tokens": cfg.text.max_tokens},
        "graphs": graphs,
        "files": {name: sha256_file(out / name) for name in listed},
        "versions": {"deramos": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__, "opset": options.opset},
        "parity": parity,
        "calibration": {k: v for k, v in calibration.items() if k != "files"},
        "export_seconds": options.timings,
    }


def _io_spec(path: Path) -> tuple[list[dict], list[dict]]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)

    def describe(value) -> dict:
        tensor = value.type.tensor_type
        dims = [d.dim_param if d.dim_param else int(d.dim_value) for d in tensor.shape.dim]
        return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name, "shape": dims}

    return [describe(v) for v in proto.graph.input], [describe(v) for v in proto.graph.output]


@contextlib.contextmanager
def _timed(store: dict, name: str):
    start = time.perf_counter()
    yield
    store[name] = round(time.perf_counter() - start, 2)

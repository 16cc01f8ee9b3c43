"""`export_bundle`: a trained model -> a validated bundle directory (runtime/bundle.py)."""
from __future__ import annotations

import contextlib
import functools
import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from ..build.stage import BuildOptions, build_bundle
from ..calibration.samples import sample_set
from ..runtime.backends import OrtBackend
from ..runtime.bundle import (
    FORMAT,
    FORMAT_VERSION,
    GRAPH_IO,
    GRAPHS,
    Bundle,
    graph_file_name,
    load_bundle,
    sha256_file,
)
from ..runtime.errors import progress_log
from ..runtime.probes import record_probes, write_probe_clips
from ..runtime.scorer import Scorer
from .graphs import DEFAULT_OPSET, example_inputs, export_graph, export_mode, graph_modules
from .validate import format_report

PROBE_CLIPS = 32


@dataclass
class ExportOptions:
    """The export's own options; `build` is what the build stage adds to the FP32 bundle (FP16,
    INT8, shipped clips), handed to it as it is. Its TensorRT engines (build.trt) are not built
    here: deramos-export builds them once the ONNX bundle is complete (build.stage.engines_only)."""

    build: BuildOptions = field(default_factory=BuildOptions)
    opset: int = DEFAULT_OPSET
    validate: bool = True               # False: no check against PyTorch, and none against FP32 either
    validate_clips: int = 64            # clips the FP32 graphs are compared with PyTorch on
    probe_clips: int = PROBE_CLIPS
    progress: bool = True
    timings: dict = field(default_factory=dict)

    @property
    def seed(self) -> int:
        """One seed for the export's clips and the build stage's (build.seed)."""
        return self.build.seed


class ExportFailed(RuntimeError):
    """Validation or a precision's check failed; the message is the report."""


def export_bundle(model, out: str | Path, options: ExportOptions | None = None,
                  say: Callable[[str], None] = progress_log.info) -> dict:
    """Write the FP32 graphs, tokenizer, probe clips and manifest, FP32 checked against PyTorch;
    then (torch-free, deramos.build) any FP16/INT8 graphs, each checked against FP32.
    Returns manifest.json as written (JSON data).
    A failed FP32 validation leaves no manifest.json (nothing loadable); a failed FP16/INT8 check
    leaves a bundle with the precisions that passed, and raises ExportFailed naming the others."""
    options = options or ExportOptions()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)     # a half-written bundle is never loadable
    files: dict[str, dict[str, list[str]]] = {g: {} for g in GRAPHS}
    timer = functools.partial(_timed, options.timings)
    with timer("export fp32"):
        _export_fp32(model, out, options, files)
    tokenizer = _copy_tokenizer(model, out)
    bundle = Bundle(out, build_manifest(model, out, files, tokenizer, {}, options))
    if options.validate:
        with timer("validate fp32"):
            report = _validate(model, bundle, options)
        bundle.record_parity("fp32", report)
        say(format_report("fp32", report))
        if not report["passed"]:
            (out / "validation_report.json").write_text(json.dumps({"parity": bundle.as_json()["parity"]}, indent=2))
            raise ExportFailed(f"validation failed for fp32 ({'; '.join(report['failures'])}); report in "
                               f"{out / 'validation_report.json'}; manifest.json not written (use --no-validate to skip)")
    bundle.save()
    with timer("probes"):
        _add_probes(out, model.cfg, options)
    build = replace(options.build, trt=False, check=options.build.check and options.validate)
    if build.adds_anything:
        _build_precisions(out, build, timer, say)
    return load_bundle(out).as_json()


def _build_precisions(out: Path, build: BuildOptions, timer, say) -> None:
    with timer("build " + "+".join(p for p in ("fp16", "int8") if getattr(build, p))):
        result = build_bundle(out, build, say)
    if result.failed:
        kept = ", ".join(load_bundle(out).precisions())
        raise ExportFailed(f"{', '.join(result.failed)} missed its check against FP32 and was left out of the bundle "
                           f"({'; '.join(f for p in result.failed for f in result.checks[p].failures)}); "
                           f"{out} keeps {kept}")


def _add_probes(out: Path, cfg, options: ExportOptions) -> None:
    """Probe clips + their FP32 scores (what `deramos-run --self-check` compares with); none
    when options.probe_clips is 0."""
    if options.probe_clips <= 0:
        return
    bundle = load_bundle(out)
    # Long enough for the model's shortest input (musicnn needs 1.5 s), at most 3 s (a small bundle).
    shortest = max(1.0, 1.1 * bundle.samples_per_frame / bundle.sample_rate)
    samples = sample_set(options.probe_clips, cfg.audio.sample_rate, min(max(3.0, 2 * shortest), cfg.audio.window_seconds),
                         seed=options.seed + 77, min_seconds=shortest)
    files = write_probe_clips(out, samples.waves, samples.prompts, cfg.audio.sample_rate)
    with Scorer(bundle, OrtBackend(bundle, "fp32")) as scorer:
        index = record_probes(scorer, files, samples.prompts)
    bundle.list_files(path.relative_to(out).as_posix() for path in files + [index])
    bundle.save()


def _export_fp32(model, out: Path, options: ExportOptions, files: dict) -> None:
    modules = graph_modules(model)
    with export_mode(model):
        inputs = example_inputs(model)
        for graph in GRAPHS:
            written = export_graph(graph, modules[graph], inputs[graph], out / graph_file_name(graph, "fp32"), options.opset)
            files[graph]["fp32"] = [p.name for p in written]


def _copy_tokenizer(model, out: Path) -> Path:
    from ..model.text_encoder import tokenizer_file

    source = getattr(model, "checkpoint_dir", None)
    src = Path(source) / "tokenizer.json" if source and (Path(source) / "tokenizer.json").is_file() \
        else tokenizer_file(model.cfg.text)
    shutil.copyfile(src, out / "tokenizer.json")
    return out / "tokenizer.json"


def _validate(model, bundle: Bundle, options: ExportOptions) -> dict:
    """The FP32 graphs, run by the runtime's ONNX Runtime backend, against the PyTorch model
    (export/validate.py): the parity record."""
    from .validate import fp32_parity

    return fp32_parity(model, bundle, options.validate_clips, seed=options.seed + 1)


def build_manifest(model, out: Path, files: dict, tokenizer: Path, parity: dict, options: ExportOptions) -> dict:
    import onnx
    import onnxruntime
    import torch

    from .. import __version__
    from ..model.config import min_tail_samples

    cfg = model.cfg
    graphs = {}
    for graph in GRAPHS:
        inputs, outputs = _io_spec(out / files[graph]["fp32"][0])
        assert [i["name"] for i in inputs] == list(GRAPH_IO[graph][0])
        graphs[graph] = {"inputs": inputs, "outputs": outputs, "files": files[graph]}
    listed = sorted({name for g in files.values() for names in g.values() for name in names} | {tokenizer.name})
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

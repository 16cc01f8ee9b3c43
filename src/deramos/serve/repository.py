"""A native Triton model repository from a bundle, for Triton's own onnxruntime backend.

    deramos-triton-repo bundle/ --out repo/ [--device cpu|gpu] [--instances N]
    python -m deramos.serve.repository bundle/ --out repo/

For each precision the bundle has (suffix "" for fp32, "_fp16", "_int8"):

    deramos_text_encoder{sfx}/   config.pbtxt + 1/model.onnx   input_ids, attention_mask -> tokens
    deramos_audio_encoder{sfx}/  config.pbtxt + 1/model.onnx   waveform, lengths -> frames, frame_mask
    deramos_heads{sfx}/          config.pbtxt + 1/model.onnx   frames, frame_mask, tokens, token_mask -> scores
    deramos_window{sfx}/         an ensemble wiring the three: prompt tokens -> text encoder,
                                 audio -> audio encoder -> heads (token_mask = attention_mask)

The ensemble scores one window per row: a client tokenises the prompt with tokenizer.json
(copied into deramos_window{sfx}/), cuts clips longer than the window into windows and
averages their scores weighted by length, as the Scorer does. --device gpu adds ONNX Runtime's
TensorRT execution accelerator with the variant's precision (FP16 / INT8). Only numpy-free
text is written here: no torch, no onnx.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import click

from ..runtime.bundle import GRAPHS, Bundle, BundleError, GraphEntry, load_bundle
from ..runtime.cli_common import Command, fail
from ..runtime.contract import PIPELINE_RENAMES

PREFIX = "deramos"
ENSEMBLE = "window"
MAX_BATCH = 64
QUEUE_DELAY_US = 2000
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
                "bool": "TYPE_BOOL"}
TENSORRT_PRECISION = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}


@dataclass(frozen=True)
class RepositoryOptions:
    device: str = "cpu"             # cpu: KIND_CPU instances; gpu: KIND_GPU + TensorRT accelerator
    instances: int = 1              # instances of each graph model
    max_batch: int = MAX_BATCH
    queue_delay_us: int = QUEUE_DELAY_US


def model_name(graph: str, precision: str) -> str:
    return f"{PREFIX}_{graph}" + ("" if precision == "fp32" else f"_{precision}")


def write_repository(bundle: Bundle, out: Path, options: RepositoryOptions = RepositoryOptions()) -> list[str]:
    """Write every precision's three graph models and its ensemble; returns the model names."""
    if options.device not in ("cpu", "gpu"):
        raise ValueError(f"device must be cpu or gpu, got {options.device!r}")
    if options.instances < 1 or options.max_batch < 1:
        raise ValueError("instances and max_batch must be >= 1")
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for precision in bundle.precisions():
        for graph in GRAPHS:
            folder = _model_folder(out, model_name(graph, precision))
            graph_file, *side_files = bundle.graph_files(graph, precision)
            shutil.copyfile(graph_file, folder / "1" / "model.onnx")
            for side in side_files:   # external weights keep their name: the graph refers to it
                shutil.copyfile(side, folder / "1" / side.name)
            (folder / "config.pbtxt").write_text(graph_config(bundle, graph, precision, options))
            names.append(folder.name)
        folder = _model_folder(out, model_name(ENSEMBLE, precision))
        shutil.copyfile(bundle.tokenizer_file, folder / "tokenizer.json")
        (folder / "config.pbtxt").write_text(ensemble_config(bundle, precision, options))
        names.append(folder.name)
    return names


def _model_folder(out: Path, name: str) -> Path:
    folder = out / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    return folder


# --- config.pbtxt text -----------------------------------------------------------------------------


def graph_config(bundle: Bundle, graph: str, precision: str, options: RepositoryOptions) -> str:
    spec = bundle.manifest.graphs[graph]
    lines = [f"# {graph} of the deramos bundle {bundle.manifest.model_name!r} ({precision}); written by "
             f"deramos-triton-repo", f'name: "{model_name(graph, precision)}"', 'backend: "onnxruntime"',
             f"max_batch_size: {options.max_batch}"]
    lines += _tensors("input", spec.input_specs, reshape=True) + _tensors("output", spec.output_specs, reshape=True)
    lines += [f"dynamic_batching {{ max_queue_delay_microseconds: {options.queue_delay_us} }}",
              f"instance_group [ {{ count: {options.instances} kind: KIND_{options.device.upper()} }} ]"]
    if options.device == "gpu":
        lines += _tensorrt_accelerator(precision)
    return "\n".join(lines) + "\n"


def _tensorrt_accelerator(precision: str) -> list[str]:
    return ["optimization { execution_accelerators { gpu_execution_accelerator: [ {",
            '  name: "tensorrt"',
            f'  parameters {{ key: "precision_mode" value: "{TENSORRT_PRECISION[precision]}" }}',
            '  parameters { key: "max_workspace_size_bytes" value: "2147483648" }',
            "} ] } }"]


def ensemble_config(bundle: Bundle, precision: str, options: RepositoryOptions) -> str:
    graphs = bundle.manifest.graphs
    text, audio, heads = graphs["text_encoder"], graphs["audio_encoder"], graphs["heads"]
    lines = [f"# One window per row: prompt tokens -> {model_name('text_encoder', precision)}, audio -> "
             f"{model_name('audio_encoder', precision)} -> {model_name('heads', precision)}. Windows are "
             f"{bundle.window_seconds} s at {bundle.sample_rate} Hz; tokenise with tokenizer.json "
             f"(at most {bundle.max_tokens} tokens).",
             f'name: "{model_name(ENSEMBLE, precision)}"', 'platform: "ensemble"',
             f"max_batch_size: {options.max_batch}"]
    lines += _tensors("input", text.input_specs + audio.input_specs, reshape=False)
    lines += _tensors("output", heads.output_specs, reshape=False)
    steps = [(graph, PIPELINE_RENAMES.get(graph, {})) for graph in ("text_encoder", "audio_encoder", "heads")]
    lines.append("ensemble_scheduling { step [")
    lines.append(",\n".join(_step(model_name(graph, precision), graphs[graph], renamed) for graph, renamed in steps))
    lines.append("] }")
    return "\n".join(lines) + "\n"


def _step(model: str, spec: GraphEntry, renamed: dict[str, str]) -> str:
    inputs = " ".join(f'input_map {{ key: "{io["name"]}" value: "{renamed.get(io["name"], io["name"])}" }}'
                      for io in spec.input_specs)
    outputs = " ".join(f'output_map {{ key: "{io["name"]}" value: "{io["name"]}" }}' for io in spec.output_specs)
    return f'  {{ model_name: "{model}" model_version: -1\n    {inputs}\n    {outputs} }}'


def _tensors(kind: str, ios: list[dict], reshape: bool) -> list[str]:
    """Triton leaves the batch axis out of dims; a tensor that is only [batch] is sent as [batch, 1]
    and, for an ONNX model, reshaped back to [batch]."""
    entries = []
    for io in ios:
        dims = [d if isinstance(d, int) else -1 for d in io["shape"][1:]]
        entry = f'  {{ name: "{io["name"]}" data_type: {_triton_type(io)} dims: [ {", ".join(map(str, dims or [1]))} ]'
        if not dims and reshape:
            entry += " reshape: { shape: [ ] }"
        entries.append(entry + " }")
    return [f"{kind} [", ",\n".join(entries), "]"]


def _triton_type(io: dict) -> str:
    if io["dtype"] not in TRITON_TYPES:
        raise BundleError(f"{io['name']}: dtype {io['dtype']} has no Triton type here")
    return TRITON_TYPES[io["dtype"]]


# --- validation ---------------------------------------------------------------------------------------


def parse_config(path: Path):
    """config.pbtxt -> tritonclient's ModelConfig message (raises text_format.ParseError)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())


def validate_repository(out: Path) -> dict[str, object]:
    """Every config.pbtxt parsed by the ModelConfig protobuf, and each name matches its folder."""
    configs = {}
    for path in sorted(Path(out).glob("*/config.pbtxt")):
        config = parse_config(path)
        if config.name != path.parent.name:
            raise ValueError(f"{path}: name {config.name!r} is not the folder's {path.parent.name!r}")
        configs[config.name] = config
    return configs


HELP = """Write a Triton model repository (onnxruntime backend + an ensemble) from a bundle.

\b
Serve it with Triton Inference Server's own container, which has the onnxruntime and
tensorrt backends (PyTriton's server has neither):
  tritonserver --model-repository DIR
"""


@click.command(cls=Command, help=HELP, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("bundle", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The repository folder to write.")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="Instance kind; gpu also turns on the TensorRT accelerator at each variant's precision.")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True, help="Instances per graph model.")
@click.option("--max-batch", type=click.IntRange(min=1), default=MAX_BATCH, show_default=True)
def main(bundle, out, device, instances, max_batch):
    try:
        names = write_repository(load_bundle(bundle), Path(out), RepositoryOptions(device, instances, max_batch))
        checked = _validated(Path(out))
    except (BundleError, ValueError, OSError) as error:
        fail(error)
    print(f"wrote {len(names)} models to {out}{checked}: {', '.join(names)}")


def _validated(out: Path) -> str:
    try:
        validate_repository(out)
    except ImportError:
        return " (configs not parsed: pip install 'deramos[triton-client]' to check them)"
    return " (every config.pbtxt parsed by Triton's ModelConfig)"


if __name__ == "__main__":
    main()

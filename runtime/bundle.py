"""The bundle: the contract between `deramos-export` and the runtime.

    bundle/
      manifest.json                 schema below; every file listed with its sha256
      tokenizer.json                a `tokenizers` fast tokenizer
      audio_encoder.onnx            waveform [B, N] f32, lengths [B] i64 -> frames [B, T, Da] f32, frame_mask [B, T] bool
      text_encoder.onnx             input_ids, attention_mask [B, L] i64 -> tokens [B, L, Dt] f32
      heads.onnx                    frames, frame_mask, tokens, token_mask -> mi, ta [B], mi_dist, ta_dist [B, K]
      *.fp16.onnx, *.int8.onnx      the same graphs in FP16 / INT8 (QDQ); inputs and outputs stay FP32
      calibration/                  INT8 calibration cache and drift report
      trt/<device-tag>/             TensorRT engines + build.json, built for one GPU

manifest.json:
    format: "deramos-bundle", format_version: int
    model: {name, config}            config = deramos ModelConfig as a dict
    sample_rate, window_seconds, samples_per_frame, min_tail_samples
    score: {min, max, bins}
    tokenizer: {file, max_tokens}
    graphs: {<graph>: {inputs: [io], outputs: [io], files: {<precision>: [file, ...]}}}
            io = {name, dtype, shape}; shape entries are ints or axis names (dynamic)
    files: {<relative path>: sha256}
    versions: {deramos, torch, onnx, onnxruntime, opset}
    parity: {<precision>: report}    the export's validation against PyTorch

This module only reads and verifies (numpy + json): the runtime never imports torch.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

FORMAT = "deramos-bundle"
FORMAT_VERSION = 1
GRAPHS = ("audio_encoder", "text_encoder", "heads")
PRECISIONS = ("fp32", "fp16", "int8")
GRAPH_IO = {
    "audio_encoder": (("waveform", "lengths"), ("frames", "frame_mask")),
    "text_encoder": (("input_ids", "attention_mask"), ("tokens",)),
    "heads": (("frames", "frame_mask", "tokens", "token_mask"), ("mi", "ta", "mi_dist", "ta_dist")),
}


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the file and the cause."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def graph_file_name(graph: str, precision: str) -> str:
    return f"{graph}.onnx" if precision == "fp32" else f"{graph}.{precision}.onnx"


@dataclass
class Bundle:
    root: Path
    manifest: dict

    @property
    def sample_rate(self) -> int:
        return int(self.manifest["sample_rate"])

    @property
    def window_samples(self) -> int:
        return int(round(self.manifest["window_seconds"] * self.sample_rate))

    @property
    def min_tail_samples(self) -> int:
        return int(self.manifest["min_tail_samples"])

    @property
    def samples_per_frame(self) -> int:
        return int(self.manifest["samples_per_frame"])

    @property
    def tokenizer_file(self) -> Path:
        return self.root / self.manifest["tokenizer"]["file"]

    @property
    def max_tokens(self) -> int:
        return int(self.manifest["tokenizer"]["max_tokens"])

    def precisions(self) -> list[str]:
        """Precisions for which every graph has a file."""
        graphs = self.manifest["graphs"]
        return [p for p in PRECISIONS if all(p in graphs[g]["files"] for g in GRAPHS)]

    def graph_path(self, graph: str, precision: str) -> Path:
        files = self.manifest["graphs"][graph]["files"]
        if precision not in files:
            have = ", ".join(self.precisions()) or "none"
            raise BundleError(f"{self.root}: no {precision} {graph} graph in this bundle "
                              f"(it has: {have}; export with --{precision} to add it)")
        return self.root / files[precision][0]


def load_bundle(root: str | Path, verify: bool = True) -> Bundle:
    """Read manifest.json and (by default) check every listed file's sha256."""
    root = Path(root)
    manifest_path = root / "manifest.json"
    if not root.is_dir():
        raise BundleError(f"{root}: bundle directory not found")
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: missing (not a deramos bundle; create one with deramos-export)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{manifest_path}: not valid JSON ({err.msg if hasattr(err, 'msg') else err})") from None
    _check_header(manifest, manifest_path)
    if verify:
        verify_files(root, manifest)
    return Bundle(root, manifest)


def _check_header(manifest: dict, path: Path) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not a deramos bundle manifest (format is not {FORMAT!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise BundleError(f"{path}: format_version missing")
    if version > FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format {version} is newer than this runtime supports "
                          f"({FORMAT_VERSION}); upgrade deramos")
    for key in ("graphs", "files", "tokenizer", "sample_rate", "window_seconds"):
        if key not in manifest:
            raise BundleError(f"{path}: manifest has no {key!r} entry")
    for graph in GRAPHS:
        if graph not in manifest["graphs"]:
            raise BundleError(f"{path}: manifest lists no {graph} graph")


def verify_files(root: Path, manifest: dict) -> None:
    for name, expected in sorted(manifest["files"].items()):
        path = root / name
        if not path.is_file():
            raise BundleError(f"{path}: missing from the bundle (listed in manifest.json)")
        if sha256_file(path) != expected:
            raise BundleError(f"{path}: sha256 does not match manifest.json (file modified or corrupt)")


def write_manifest(root: Path, manifest: dict) -> None:
    """Rehash every listed file, then replace manifest.json atomically (readers never see half)."""
    root = Path(root)
    manifest["files"] = {name: sha256_file(root / name) for name in sorted(manifest["files"])}
    scratch = root / "manifest.json.tmp"
    scratch.write_text(json.dumps(manifest, indent=2))
    scratch.replace(root / "manifest.json")


def check_graph_io(bundle: Bundle, graph: str, precision: str, inputs: list[str], outputs: list[str]) -> None:
    """The names a loaded graph declares must be the ones the manifest promises."""
    spec = bundle.manifest["graphs"][graph]
    want_in = [io["name"] for io in spec["inputs"]]
    want_out = [io["name"] for io in spec["outputs"]]
    if list(inputs) != want_in or list(outputs) != want_out:
        path = bundle.graph_path(graph, precision)
        raise BundleError(f"{path}: graph inputs/outputs {list(inputs)} -> {list(outputs)} do not match "
                          f"manifest.json ({want_in} -> {want_out})")

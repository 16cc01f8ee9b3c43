"""manifest.json is validated field by field on load, and every file the runtime opens must be
listed in files{} with its sha256 and lie inside the bundle: one-line BundleErrors, through
load_bundle, Scorer.load and deramos-run."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from runtime_helpers import music, run_cli, set_field, write_wav

from deramos.runtime import BundleError, Scorer
from deramos.runtime.bundle import load_bundle
from deramos.runtime.engines import DeviceDescription, find_engine_set

PROMPT = "calm solo piano"
ORIN = DeviceDescription("Orin", "8.7", "10.3.0")
ORIN_BUILD = {"gpu_name": "Orin", "compute_capability": "8.7", "tensorrt_version": "10.3.0", "precision": ["fp16"]}


@pytest.fixture
def copy(runtime_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(runtime_bundle, tmp_path / "bundle"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_wav(tmp_path_factory.mktemp("clip") / "clip.wav", music(2.0, seed=4))


def edit_manifest(root: Path, change) -> dict:
    manifest = json.loads((root / "manifest.json").read_text())
    change(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refused(root: Path, clip) -> str:
    """The BundleError from the API; deramos-run must print exactly it, on one line, exit 2."""
    with pytest.raises(BundleError) as raised:
        Scorer.load(root, backend="onnxruntime-cpu")
    message = str(raised.value)
    assert "\n" not in message
    result = run_cli(["--bundle", root, clip, PROMPT])
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == f"error: {message}\n"
    return message


def _delete(path: str):
    *parents, last = path.split(".")

    def change(manifest):
        target = manifest
        for key in parents:
            target = target[key]
        del target[last]
    return change


def _rename_file(old: str, new: str):
    def change(manifest):
        manifest["files"][new] = manifest["files"].pop(old)
    return change


FIELD_CASES = {
    "sample_rate 0": (set_field("sample_rate", 0), "field sample_rate must be between 8000 and 192000 Hz, got 0"),
    "sample_rate text": (set_field("sample_rate", "16000"), "field sample_rate must be an integer, got a string '16000'"),
    "sample_rate true": (set_field("sample_rate", True), "field sample_rate must be an integer, got a boolean True"),
    "files null": (set_field("files", None), "field files must be an object, got null"),
    "files list": (set_field("files", []), "field files must be an object, got a list"),
    "window ten": (set_field("window_seconds", "ten"), "field window_seconds must be a number, got a string 'ten'"),
    "window 0": (set_field("window_seconds", 0), "field window_seconds must be between 0.5 and 600 seconds, got 0"),
    "window -6": (set_field("window_seconds", -6.0), "field window_seconds must be between 0.5 and 600 seconds, got -6.0"),
    "no samples_per_frame": (_delete("samples_per_frame"), "field samples_per_frame must be an integer, got missing"),
    "min_tail -1": (set_field("min_tail_samples", -1), "field min_tail_samples must be between 0 and 96000 (one window), got -1"),
    "max_tokens 0": (set_field("tokenizer.max_tokens", 0), "field tokenizer.max_tokens must be between 1 and 8192, got 0"),
    "tokenizer null": (set_field("tokenizer", None), "field tokenizer must be an object, got null"),
    "format_version text": (set_field("format_version", "1"), "field format_version must be a positive integer, got a string '1'"),
    "graphs list": (set_field("graphs", []), "field graphs must be an object, got a list"),
    "heads outputs": (lambda m: m["graphs"]["heads"]["outputs"][0].update(name="music_impression"),
                      "field graphs.heads.outputs must list ['mi', 'ta', 'mi_dist', 'ta_dist'] (name, dtype, shape), "
                      "got ['music_impression', 'ta', 'mi_dist', 'ta_dist']"),
    "precision fp64": (set_field("graphs.heads.files.fp64", ["heads.onnx"]),
                       "field graphs.heads.files.fp64 is not a precision (fp32, fp16, int8)"),
    "empty file list": (set_field("graphs.heads.files.fp32", []),
                        "field graphs.heads.files.fp32 must be a non-empty list of files, got a list"),
    "bad sha256": (lambda m: m["files"].update({"heads.onnx": "abc"}),
                   "field files['heads.onnx'] must be a sha256 (64 hex digits), got a string 'abc'"),
    # Files outside the bundle, by name:
    "files ../..": (_rename_file("heads.onnx", "../../etc/hostname"),
                    "field files['../../etc/hostname'] leaves the bundle ('..'; files must be inside the bundle)"),
    "files absolute": (_rename_file("heads.onnx", "/etc/hostname"),
                       "field files['/etc/hostname'] is an absolute path (files must be inside the bundle)"),
    "graph absolute": (set_field("graphs.heads.files.fp32", ["/etc/hostname"]),
                       "field graphs.heads.files.fp32 names '/etc/hostname', which is not in files{} "
                       "(every file the runtime opens must be listed with its sha256)"),
    "tokenizer unlisted": (set_field("tokenizer.file", "other.json"),
                           "field tokenizer.file names 'other.json', which is not in files{} "
                           "(every file the runtime opens must be listed with its sha256)"),
}


@pytest.mark.parametrize("case", sorted(FIELD_CASES))
def test_manifest_fields_are_validated_on_load(copy, clip, case):
    change, expected = FIELD_CASES[case]
    edit_manifest(copy, change)
    assert refused(copy, clip) == f"{copy / 'manifest.json'}: {expected}"


def test_a_graph_missing_from_files_is_refused_even_when_tampered(copy, clip):
    """Before: heads.onnx named by graphs but absent from files{} loaded unhashed."""
    edit_manifest(copy, lambda m: m["files"].pop("heads.onnx"))
    with open(copy / "heads.onnx", "ab") as handle:
        handle.write(b"\0")
    assert refused(copy, clip) == (f"{copy / 'manifest.json'}: field graphs.heads.files.fp32 names 'heads.onnx', "
                                   f"which is not in files{{}} (every file the runtime opens must be listed with "
                                   f"its sha256)")


def test_a_symlink_out_of_the_bundle_is_refused(copy, clip, tmp_path):
    outside = tmp_path / "elsewhere" / "tokenizer.json"
    outside.parent.mkdir()
    shutil.move(copy / "tokenizer.json", outside)     # same bytes, same hash: only the place is wrong
    (copy / "tokenizer.json").symlink_to(outside)
    assert refused(copy, clip) == (f"{copy / 'tokenizer.json'}: resolves outside the bundle ({outside}); "
                                   f"a bundle's files must be inside it")
    (copy / "tokenizer.json").unlink()
    (copy / "tokenizer.json").symlink_to("tokenizer.json")
    assert refused(copy, clip) == f"{copy / 'tokenizer.json'}: symlink loop"


def test_a_symlink_inside_the_bundle_is_fine(copy):
    shutil.move(copy / "tokenizer.json", copy / "calibration-tokenizer.json")
    (copy / "tokenizer.json").symlink_to("calibration-tokenizer.json")
    with Scorer.load(copy, backend="onnxruntime-cpu") as scorer:
        assert scorer.score(music(1.0, seed=2), PROMPT, sample_rate=16000).ok


def test_a_garbage_tokenizer_names_the_file(copy, clip):
    (copy / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "nonsense"}}')
    edit_manifest(copy, lambda m: m["files"].update({"tokenizer.json": sha256(copy / "tokenizer.json")}))
    message = refused(copy, clip)
    assert message.startswith(f"{copy / 'tokenizer.json'}: not a readable tokenizers file (")


def test_the_good_bundle_loads_and_is_typed(runtime_bundle):
    bundle = load_bundle(runtime_bundle)
    spec = bundle.manifest
    assert (spec.sample_rate, spec.window_seconds, spec.samples_per_frame, spec.max_tokens) == (16000, 6.0, 640, 32)
    assert spec.graphs["heads"].files == {"fp32": ("heads.onnx",), "fp16": ("heads.fp16.onnx",)}
    assert spec.graphs["text_encoder"].inputs == ("input_ids", "attention_mask")
    assert spec.tokenizer_file == "tokenizer.json" and set(spec.files) >= {"tokenizer.json", "heads.onnx"}
    assert spec.model_name == "tiny" and spec.model_config["audio"]["sample_rate"] == 16000


# --- TensorRT engines: only those the manifest lists (and so hashes) are used -------------------


def _fake_engines(root: Path, tag: str) -> list[Path]:
    folder = root / "trt" / tag
    folder.mkdir(parents=True)
    (folder / "build.json").write_text(json.dumps(ORIN_BUILD))
    engines = [folder / f"{graph}.fp16.engine" for graph in ("audio_encoder", "text_encoder", "heads")]
    for engine in engines:
        engine.write_bytes(b"engine bytes " + engine.name.encode())
    return [folder / "build.json", *engines]


def test_unlisted_engines_are_skipped_listed_ones_are_hashed(copy):
    from deramos.runtime.engine_build import _list_in_manifest

    listed = _fake_engines(copy, "orin-listed")
    _fake_engines(copy, "a-orin-dropped-in")          # sorted first: would win if not checked
    _list_in_manifest(copy, listed)
    bundle = load_bundle(copy)                         # verifies the engines' hashes too
    chosen, skipped = find_engine_set(copy, "fp16", ORIN, bundle.files)
    assert chosen is not None and chosen.directory == copy / "trt" / "orin-listed"
    assert skipped == ["trt/a-orin-dropped-in: build.json, audio_encoder.fp16.engine, text_encoder.fp16.engine, "
                       "heads.fp16.engine not listed in manifest.json (not hashed; rebuild with deramos-build BUNDLE --trt)"]
    with open(listed[-1], "ab") as handle:              # a listed engine, modified
        handle.write(b"\0")
    with pytest.raises(BundleError, match=r"heads.fp16.engine: sha256 does not match manifest.json"):
        load_bundle(copy)

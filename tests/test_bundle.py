"""The bundle contract (runtime/bundle.py): manifest schema, hashes, versions, parity, and what
`load_bundle` / `check_graph_io` say about a missing, tampered, newer or mismatching bundle."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from deramos.runtime.bundle import (
    FORMAT,
    FORMAT_VERSION,
    GRAPH_IO,
    GRAPHS,
    Bundle,
    BundleError,
    check_graph_io,
    load_bundle,
    verify_files,
)
from deramos.runtime.contract import TOLERANCES

# What each graph declares: name -> (dtype, shape); ints are fixed sizes of the tiny preset.
EXPECTED_IO = {
    "audio_encoder": ({"waveform": ("float32", ["batch", "samples"]), "lengths": ("int64", ["batch"])},
                      {"frames": ("float32", ["batch", "frames", 32]), "frame_mask": ("bool", ["batch", "frames"])}),
    "text_encoder": ({"input_ids": ("int64", ["batch", "tokens"]), "attention_mask": ("int64", ["batch", "tokens"])},
                     {"tokens": ("float32", ["batch", "tokens", 32])}),
    "heads": ({"frames": ("float32", ["batch", "frames", 32]), "frame_mask": ("bool", ["batch", "frames"]),
               "tokens": ("float32", ["batch", "tokens", 32]), "token_mask": ("int64", ["batch", "tokens"])},
              {"mi": ("float32", ["batch"]), "ta": ("float32", ["batch"]),
               "mi_dist": ("float32", ["batch", 20]), "ta_dist": ("float32", ["batch", 20])}),
}


@pytest.fixture(scope="module")
def bundle(export_bundle_dir):
    root = export_bundle_dir[0]
    return root, json.loads((root / "manifest.json").read_text())


@pytest.fixture
def copy(bundle, tmp_path) -> Path:
    """A private copy of the shared bundle, to tamper with."""
    return Path(shutil.copytree(bundle[0], tmp_path / "bundle"))


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


# -- the manifest ----------------------------------------------------------------------------------


def test_manifest_header(bundle, export_model):
    _, manifest = bundle
    cfg = export_model.cfg
    assert manifest["format"] == FORMAT == "deramos-bundle"
    assert manifest["format_version"] == FORMAT_VERSION == 1
    assert manifest["model"]["name"] == "tiny"
    assert manifest["model"]["config"] == json.loads(json.dumps(cfg.to_dict()))
    assert manifest["sample_rate"] == 16000 and manifest["window_seconds"] == 6.0
    assert manifest["samples_per_frame"] == cfg.audio.samples_per_frame == 640
    assert manifest["score"] == {"min": 1.0, "max": 5.0, "bins": 20}
    assert manifest["tokenizer"] == {"file": "tokenizer.json", "max_tokens": 32}


def test_manifest_graph_io_matches_graph_io(bundle):
    _, manifest = bundle
    assert set(manifest["graphs"]) == set(GRAPHS)
    for graph in GRAPHS:
        spec = manifest["graphs"][graph]
        names_in, names_out = GRAPH_IO[graph]
        assert [io["name"] for io in spec["inputs"]] == list(names_in)
        assert [io["name"] for io in spec["outputs"]] == list(names_out)
        want_in, want_out = EXPECTED_IO[graph]
        assert {io["name"]: (io["dtype"], io["shape"]) for io in spec["inputs"]} == want_in
        assert {io["name"]: (io["dtype"], io["shape"]) for io in spec["outputs"]} == want_out


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_every_graph_file_declares_the_manifest_io(bundle, precision):
    """Inputs and outputs stay FP32 (and keep their dynamic axes) in every precision."""
    import onnx

    root, manifest = bundle
    for graph in GRAPHS:
        spec = manifest["graphs"][graph]
        proto = onnx.load(str(root / spec["files"][precision][0]), load_external_data=False)

        def describe(values):
            out = []
            for v in values:
                t = v.type.tensor_type
                out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                            "shape": [d.dim_param or d.dim_value for d in t.shape.dim]})
            return out

        assert describe(proto.graph.input) == spec["inputs"], (graph, precision)
        assert describe(proto.graph.output) == spec["outputs"], (graph, precision)


def test_manifest_lists_every_file_with_its_sha256(bundle):
    root, manifest = bundle
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    for name, digest in manifest["files"].items():
        assert digest == hashlib.sha256((root / name).read_bytes()).hexdigest(), name
    referenced = {f for g in manifest["graphs"].values() for files in g["files"].values() for f in files}
    assert referenced <= set(manifest["files"])
    assert {"tokenizer.json", "probes/probes.json", "probes/00.flac", "probes/31.flac", "calibration/audio_encoder.ranges.json",
            "calibration/text_encoder.ranges.json"} <= set(manifest["files"])


def test_manifest_versions(bundle):
    import onnx
    import onnxruntime
    import torch

    import deramos

    root, manifest = bundle
    assert manifest["versions"] == {"deramos": deramos.__version__, "torch": torch.__version__,
                                    "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "opset": 17}
    for graph in GRAPHS:
        proto = onnx.load(str(root / f"{graph}.onnx"), load_external_data=False)
        assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {17}


def test_manifest_parity_per_precision(bundle):
    _, manifest = bundle
    assert set(manifest["parity"]) == {"fp32"}          # against PyTorch; FP16/INT8 are checked against FP32
    for precision, report in manifest["parity"].items():
        assert report["passed"] is True and report["failures"] == []
        assert report["tolerance"] == TOLERANCES[precision].to_dict()
        assert report["clips"] == 64
        for key in ("mi_max_abs", "ta_max_abs", "audio_cosine_min", "text_cosine_min", "mi_srcc", "ta_srcc"):
            assert isinstance(report[key], float), key
    assert set(manifest["checks"]) == {"fp16", "int8"}
    for precision, report in manifest["checks"].items():
        assert report["passed"] is True and report["clips"] == 64 and report["precision"] == precision


# -- load_bundle -----------------------------------------------------------------------------------


def test_load_bundle_verifies_and_describes(bundle):
    root, manifest = bundle
    loaded = load_bundle(root)
    assert loaded.as_json() == manifest
    assert loaded.precisions() == ["fp32", "fp16", "int8"]
    assert loaded.graph_path("heads", "int8") == root / "heads.onnx"
    assert loaded.graph_path("text_encoder", "fp16") == root / "text_encoder.fp16.onnx"
    assert (loaded.sample_rate, loaded.window_samples, loaded.samples_per_frame, loaded.max_tokens) == (16000, 96000, 640, 32)


def test_missing_file_names_the_file(copy):
    (copy / "text_encoder.fp16.onnx").unlink()
    with pytest.raises(BundleError) as err:
        load_bundle(copy)
    message = _one_line(err)
    assert "text_encoder.fp16.onnx" in message and "missing" in message


def test_tampered_file_names_the_file_and_sha256(copy):
    with open(copy / "heads.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError) as err:
        load_bundle(copy)
    message = _one_line(err)
    assert "heads.onnx" in message and "sha256" in message
    load_bundle(copy, verify=False)                      # the header alone is still readable


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DERAMOS_VERIFY", raising=False)
    return tmp_path / "cache" / "deramos" / "verified"


def _memo(cache: Path) -> dict:
    (path,) = cache.iterdir()
    return json.loads(path.read_text())["files"]


def test_verified_files_are_remembered_by_identity(copy, private_cache):
    manifest = json.loads((copy / "manifest.json").read_text())
    load_bundle(copy)
    memo = _memo(private_cache)
    assert sorted(memo) == sorted(manifest["files"])
    assert all(entry[5] == manifest["files"][name] for name, entry in memo.items())
    # A warm load trusts an entry only with its signature (runtime/hashmemo.py; forged entries
    # are tested in test_bundle_holes.py): a digest changed by hand is ignored, the file hashed.
    memo["heads.onnx"][5] = "0" * 64
    (path,) = private_cache.iterdir()
    path.write_text(json.dumps({"root": str(copy.resolve()), "files": memo}))
    load_bundle(copy)
    assert _memo(private_cache)["heads.onnx"][5] == manifest["files"]["heads.onnx"]


def test_a_file_changed_after_it_was_remembered_is_hashed_again(copy, private_cache):
    """Same size, mtime put back: the inode's ctime still moves, so the memo does not apply."""
    import os

    load_bundle(copy)
    target = copy / "heads.onnx"
    before = target.stat()
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert target.stat().st_size == before.st_size and target.stat().st_mtime_ns == before.st_mtime_ns
    with pytest.raises(BundleError, match="heads.onnx: sha256 does not match"):
        load_bundle(copy)


def test_full_verification_ignores_the_memo(copy, private_cache, monkeypatch):
    load_bundle(copy)
    (path,) = private_cache.iterdir()
    data = json.loads(path.read_text())
    data["files"]["heads.onnx"][5] = "0" * 64
    path.write_text(json.dumps(data))
    monkeypatch.setenv("DERAMOS_VERIFY", "full")
    load_bundle(copy)
    verify_files(copy, json.loads((copy / "manifest.json").read_text())["files"], memo=False)


def test_tampered_calibration_file_is_caught(copy):
    path = copy / "probes" / "probes.json"
    path.write_text(path.read_text() + " ")
    with pytest.raises(BundleError) as err:
        verify_files(copy, json.loads((copy / "manifest.json").read_text())["files"])
    assert "probes.json" in _one_line(err)


def test_newer_format_version_is_refused(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError) as err:
        load_bundle(copy)
    message = _one_line(err)
    assert "newer" in message and "99" in message and "manifest.json" in message


@pytest.mark.parametrize("breakage, words", [
    (lambda root: (root / "manifest.json").unlink(), "missing"),
    (lambda root: (root / "manifest.json").write_text("{not json"), "not valid JSON"),
    (lambda root: (root / "manifest.json").write_text(json.dumps({"format": "other"})), "not a deramos bundle"),
])
def test_broken_manifest_is_one_line(copy, breakage, words):
    breakage(copy)
    with pytest.raises(BundleError) as err:
        load_bundle(copy)
    message = _one_line(err)
    assert words in message and "manifest.json" in message


def test_graph_io_mismatch_names_the_file(copy):
    import onnxruntime as ort

    # The right graph passes.
    loaded = load_bundle(copy)
    session = ort.InferenceSession(str(loaded.graph_path("audio_encoder", "fp32")), providers=["CPUExecutionProvider"])
    check_graph_io(loaded, "audio_encoder", "fp32", [i.name for i in session.get_inputs()],
                   [o.name for o in session.get_outputs()])
    # A wrong graph in audio_encoder.onnx, with the hash updated so that the file check passes.
    shutil.copyfile(copy / "text_encoder.onnx", copy / "audio_encoder.onnx")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["audio_encoder.onnx"] = hashlib.sha256((copy / "audio_encoder.onnx").read_bytes()).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_bundle(copy)
    session = ort.InferenceSession(str(loaded.graph_path("audio_encoder", "fp32")), providers=["CPUExecutionProvider"])
    with pytest.raises(BundleError) as err:
        check_graph_io(loaded, "audio_encoder", "fp32", [i.name for i in session.get_inputs()],
                       [o.name for o in session.get_outputs()])
    message = _one_line(err)
    assert "audio_encoder.onnx" in message and "input_ids" in message and "waveform" in message


def test_missing_precision_is_a_clear_error(bundle, tmp_path):
    root, _ = bundle
    manifest = load_bundle(root, verify=False).as_json()
    del manifest["graphs"]["heads"]["files"]["int8"]
    loaded = Bundle(root, manifest)
    assert loaded.precisions() == ["fp32", "fp16"]
    with pytest.raises(BundleError) as err:
        loaded.graph_path("heads", "int8")
    assert "--int8" in _one_line(err)

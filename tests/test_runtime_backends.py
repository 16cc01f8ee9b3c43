"""Backend selection and TensorRT engine matching (pure functions; no GPU needed)."""
from __future__ import annotations

import importlib.util
import json

import pytest
from runtime_helpers import music, run_cli, write_wav

from deramos.runtime import BackendUnavailable, BundleError, Scorer
from deramos.runtime.backends import OrtBackend, no_engine_message, select_backend
from deramos.runtime.bundle import load_bundle
from deramos.runtime.engines import (
    DeviceDescription,
    find_engine_set,
    mismatch_reason,
    normalise_capability,
    same_tensorrt_version,
)

ORIN = DeviceDescription("Orin", "8.7", "10.3.0")
H100 = {"gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "tensorrt_version": "10.3.0",
        "precision": "fp16", "profiles": {"audio_encoder": {"waveform": [[1, 1600], [4, 96000], [8, 96000]]}}}
ORIN_FP16 = {**H100, "gpu_name": "Orin", "compute_capability": [8, 7]}
GPU_STACK = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture
def clip(tmp_path):
    return write_wav(tmp_path / "clip.wav", music(2.0, seed=2))


def make_engines(root, tag: str, build: dict | str, graphs=("audio_encoder", "text_encoder", "heads"),
                 precision: str = "fp16"):
    folder = root / "trt" / tag
    folder.mkdir(parents=True)
    (folder / "build.json").write_text(build if isinstance(build, str) else json.dumps(build))
    for graph in graphs:
        (folder / f"{graph}.{precision}.engine").write_bytes(b"not a real engine")
    return folder


# --- engine matching ---------------------------------------------------------------------------


def test_engines_for_another_gpu_are_skipped_with_a_reason(tmp_path):
    make_engines(tmp_path, "h100", H100)
    chosen, skipped = find_engine_set(tmp_path, "fp16", ORIN)
    assert chosen is None
    assert skipped == ["trt/h100: built for NVIDIA H100 80GB HBM3 (compute 9.0, TensorRT 10.3.0), "
                       "this device is Orin (compute 8.7, TensorRT 10.3.0)"]
    message = no_engine_message("fp16", ORIN, skipped)
    assert message.startswith("tensorrt: no fp16 engine in the bundle for Orin (compute 8.7, TensorRT 10.3.0); skipped trt/h100: built for NVIDIA H100")
    assert message.endswith("(build them on this GPU, no torch needed: deramos-build BUNDLE --trt)")
    assert "deramos-export" not in message and "--fp32" not in message and "\n" not in message
    named = no_engine_message("fp32", ORIN, [], tmp_path)
    assert named == (f"tensorrt: no fp32 engine in the bundle for Orin (compute 8.7, TensorRT 10.3.0) "
                     f"(build them on this GPU, no torch needed: deramos-build {tmp_path} --trt)")


def test_the_matching_engine_set_is_chosen_after_skipping_others(tmp_path):
    make_engines(tmp_path, "a-h100", H100)
    make_engines(tmp_path, "b-orin-old-trt", {**ORIN_FP16, "tensorrt_version": "8.6.1"})
    make_engines(tmp_path, "c-broken", "{not json")
    make_engines(tmp_path, "d-orin-incomplete", ORIN_FP16, graphs=("audio_encoder", "heads"))
    make_engines(tmp_path, "e-orin-int8", {**ORIN_FP16, "precision": "int8"}, precision="int8")
    expected = make_engines(tmp_path, "f-orin", ORIN_FP16)
    chosen, skipped = find_engine_set(tmp_path, "fp16", ORIN)
    assert chosen is not None and chosen.directory == expected
    assert chosen.engine_path("heads") == expected / "heads.fp16.engine"
    assert [reason.split(":")[0] for reason in skipped] == ["trt/a-h100", "trt/b-orin-old-trt", "trt/c-broken",
                                                            "trt/d-orin-incomplete", "trt/e-orin-int8"]
    assert "built with TensorRT 8.6.1, this is TensorRT 10.3.0" in skipped[1]
    assert "unreadable build.json" in skipped[2]
    assert skipped[3].endswith("text_encoder.fp16.engine missing")
    assert skipped[4].endswith("built for int8, not fp16")


def test_compute_capability_mismatch_on_the_same_name(tmp_path):
    reason = mismatch_reason({**ORIN_FP16, "compute_capability": "8.6"}, "fp16", ORIN)
    assert reason == "built for Orin (compute 8.6, TensorRT 10.3.0), this device is Orin (compute 8.7, TensorRT 10.3.0)"
    assert mismatch_reason(ORIN_FP16, "fp16", ORIN) is None
    assert mismatch_reason({**ORIN_FP16, "precision": ["fp16", "int8"]}, "int8", ORIN) is None


@pytest.mark.parametrize("value, expected", [("8.7", "8.7"), (8.7, "8.7"), ([9, 0], "9.0"), ("sm_87", "8.7"),
                                             ("120", "12.0"), ("sm90", "9.0"), ("garbage", None)])
def test_normalise_capability(value, expected):
    assert normalise_capability(value) == expected


def test_tensorrt_versions_match_on_major_minor_patch():
    assert same_tensorrt_version("10.3.0.26", "10.3.0")
    assert not same_tensorrt_version("10.3.0", "10.4.0")
    assert not same_tensorrt_version("", "10.3.0")


# --- choosing a backend --------------------------------------------------------------------------


@pytest.mark.skipif(GPU_STACK, reason="this machine has a GPU stack")
def test_auto_picks_onnxruntime_cpu_and_says_why(runtime_bundle):
    scorer = Scorer.load(runtime_bundle)
    report = scorer.backend_report
    assert report.chosen == "onnxruntime-cpu" and report.requested == "auto"
    assert [name for name, _ in report.skipped] == ["tensorrt", "onnxruntime-tensorrt", "onnxruntime-cuda"]
    assert "tensorrt Python package is not installed" in dict(report.skipped)["tensorrt"]
    assert "has no CUDAExecutionProvider" in dict(report.skipped)["onnxruntime-cuda"]
    assert str(report).splitlines()[0].startswith("backend: onnxruntime-cpu (fp32")
    assert scorer.backend.describe().startswith("onnxruntime-cpu (fp32")


def test_ort_sessions_do_not_busy_wait_between_graphs(runtime_bundle):
    """Three sessions run back to back per batch: an idle pool spinning on the cores the next
    graph needs made ONNX Runtime 2.4x slower than it is (bench: deramos-bench --batch-sizes 1)."""
    backend = OrtBackend(load_bundle(runtime_bundle), threads=2)
    for graph, session in backend.sessions.items():
        options = session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0", graph
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1), graph


@pytest.mark.skipif(GPU_STACK, reason="this machine has a GPU stack")
@pytest.mark.parametrize("backend, message", [
    ("onnxruntime-cuda", "onnxruntime-cuda: this onnxruntime"),
    ("onnxruntime-tensorrt", "onnxruntime-tensorrt: this onnxruntime"),
    ("tensorrt", "tensorrt: the tensorrt Python package is not installed"),
])
def test_forcing_an_unavailable_backend_is_a_one_line_error(runtime_bundle, clip, backend, message):
    with pytest.raises(BackendUnavailable) as raised:
        select_backend(load_bundle(runtime_bundle), backend)
    assert str(raised.value).startswith(message)
    result = run_cli(["--bundle", runtime_bundle, "--backend", backend, clip, "a prompt"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == f"error: {raised.value}\n"


def test_auto_with_verbose_reports_the_backend(runtime_bundle, clip):
    result = run_cli(["--bundle", runtime_bundle, "-v", clip, "a prompt"])
    assert result.exit_code == 0
    assert result.stderr.splitlines()[0].startswith("backend: onnxruntime-")


def test_missing_precision_names_what_the_bundle_has(runtime_bundle, clip):
    with pytest.raises(BundleError, match=r"no int8 audio_encoder graph in this bundle \(it has: fp32, fp16;"):
        Scorer.load(runtime_bundle, precision="int8")
    result = run_cli(["--bundle", runtime_bundle, "--precision", "int8", clip, "a prompt"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "(it has: fp32, fp16; export with --int8 to add it)" in result.stderr


def test_graph_io_is_checked_against_the_manifest(runtime_bundle, tmp_path):
    import hashlib
    import shutil

    copy = shutil.copytree(runtime_bundle, tmp_path / "bundle")
    shutil.copyfile(copy / "audio_encoder.onnx", copy / "heads.onnx")    # another graph, hash updated
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["heads.onnx"] = hashlib.sha256((copy / "heads.onnx").read_bytes()).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"heads.onnx: graph inputs/outputs \['waveform', 'lengths'\] .* "
                                          r"do not match manifest.json"):
        OrtBackend(load_bundle(copy), "fp32", "cpu")


def test_unknown_backend_and_precision_are_rejected(runtime_bundle, clip):
    bundle = load_bundle(runtime_bundle)
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        select_backend(bundle, "cuda")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        select_backend(bundle, "auto", "fp8")
    result = run_cli(["--bundle", runtime_bundle, "--backend", "cuda", clip, "p"])
    assert result.exit_code == 2 and "Invalid value for '--backend'" in result.stderr

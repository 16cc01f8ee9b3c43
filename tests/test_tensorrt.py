"""runtime/engine_build.py: the logic that runs anywhere (device tag, shape profiles, availability),
and engine builds that need TensorRT and a CUDA GPU (skipped elsewhere, with the reason)."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from deramos.runtime import engine_build as trt_export
from deramos.runtime.bundle import GRAPH_IO, GRAPHS, load_bundle
from deramos.runtime.engine_build import Profiles, TensorRTUnavailable, _shapes, available, build_engines, device_tag

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def bundle(export_bundle_dir):
    return load_bundle(export_bundle_dir[0])


# -- pure logic ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, cc, version, tag", [
    ("NVIDIA H100 80GB HBM3", "9.0", "10.3.0", "nvidia-h100-80gb-hbm3-sm90-trt10.3.0"),
    ("NVIDIA GeForce RTX 4090", "8.9", "10.1.0.27", "nvidia-geforce-rtx-4090-sm89-trt10.1.0.27"),
    ("  Orin (nvgpu) ", "8.7", "8.6.2", "orin-nvgpu-sm87-trt8.6.2"),
])
def test_device_tag(name, cc, version, tag):
    assert device_tag({"name": name, "compute_capability": cc}, version) == tag


def test_device_tags_differ_per_gpu_and_version():
    h100 = {"name": "NVIDIA H100", "compute_capability": "9.0"}
    a100 = {"name": "NVIDIA A100", "compute_capability": "8.0"}
    tags = {device_tag(h100, "10.3.0"), device_tag(h100, "10.4.0"), device_tag(a100, "10.3.0")}
    assert len(tags) == 3
    assert all("/" not in t and " " not in t for t in tags)


def test_default_profiles_come_from_the_bundle(bundle, export_model):
    cfg = export_model.cfg
    spf = bundle.samples_per_frame
    window = bundle.window_samples                               # 6 s at 16 kHz
    shortest = Profiles().seconds[0]
    assert 0 < shortest < 1
    samples = (int(shortest * bundle.sample_rate), window, window)    # opt: min(10 s, window)
    frames = tuple(max(1, s // spf) for s in samples)
    tokens = (1, 16, bundle.max_tokens)
    shapes = {g: _shapes(g, bundle, Profiles()) for g in GRAPHS}
    for graph in GRAPHS:
        assert list(shapes[graph]) == list(GRAPH_IO[graph][0]), graph
    assert shapes["audio_encoder"] == {"waveform": ((1, samples[0]), (4, samples[1]), (8, samples[2])),
                                       "lengths": ((1,), (4,), (8,))}
    assert shapes["text_encoder"]["input_ids"] == ((1, 1), (4, 16), (8, 32))
    assert shapes["text_encoder"]["attention_mask"] == shapes["text_encoder"]["input_ids"]
    da, dt = cfg.audio.hidden_size, cfg.text.hidden_size
    heads = shapes["heads"]
    assert heads["frames"] == tuple((b, f, da) for b, f in zip((1, 4, 8), frames))
    assert heads["frame_mask"] == tuple((b, f) for b, f in zip((1, 4, 8), frames))
    assert heads["tokens"] == tuple((b, t, dt) for b, t in zip((1, 4, 8), tokens))
    assert heads["token_mask"] == tuple((b, t) for b, t in zip((1, 4, 8), tokens))
    assert frames[1:] == (150, 150)


def test_custom_profiles(bundle):
    profiles = Profiles(batch=(2, 3, 5), tokens=(4, 64, 20), seconds=(1.0, 2.0, 4.0))
    shapes = _shapes("heads", bundle, profiles)
    assert shapes["tokens"] == ((2, 4, 32), (3, 20, 32), (5, 20, 32))     # opt capped by max
    assert shapes["frames"] == ((2, 16000 // 640, 32), (3, 32000 // 640, 32), (5, 64000 // 640, 32))
    audio = _shapes("audio_encoder", bundle, profiles)
    assert audio["waveform"] == ((2, 16000), (3, 32000), (5, 64000))
    # min <= opt <= max in every dimension of every input
    for graph in GRAPHS:
        for low, opt, high in _shapes(graph, bundle, profiles).values():
            assert all(a <= b <= c for a, b, c in zip(low, opt, high)), graph


def test_heads_profile_admits_what_the_audio_encoder_produces(bundle):
    """The heads' frame range must cover the frames the audio graph gives at the profile's
    shortest and longest waveform."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle.graph_path("audio_encoder", "fp32")), providers=["CPUExecutionProvider"])
    audio = _shapes("audio_encoder", bundle, Profiles())["waveform"]
    heads = _shapes("heads", bundle, Profiles())["frame_mask"]
    for (_, n), low_high in ((audio[0], "min"), (audio[2], "max")):
        wave = np.zeros((1, n), np.float32)
        frames, _ = session.run(None, {"waveform": wave, "lengths": np.array([n], np.int64)})
        t = frames.shape[1]
        if low_high == "min":
            assert heads[0][1] <= t, (heads[0], t)
        else:
            assert heads[2][1] >= t, (heads[2], t)


@pytest.mark.skipif(HAVE_TENSORRT, reason="tensorrt is installed here; this checks the message when it is not")
def test_available_says_why_not_here():
    ok, why = available()
    assert ok is False
    assert "TensorRT is not installed" in why and "\n" not in why


@pytest.mark.skipif(HAVE_TENSORRT, reason="tensorrt is installed here; this checks the message when it is not")
def test_build_engines_refuses_without_tensorrt(export_bundle_dir):
    root = export_bundle_dir[0]
    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed"):
        build_engines(root, "fp32")
    assert not (root / "trt").exists()


def test_device_tag_names_gpu_capability_and_version():
    assert device_tag({"name": "NVIDIA L4", "compute_capability": "8.9"}, "10.3.0") == "nvidia-l4-sm89-trt10.3.0"
    assert device_tag({"name": "Orin (nvgpu)", "compute_capability": "8.7"}, "10.3.0") == "orin-nvgpu-sm87-trt10.3.0"


def test_no_gpu_here_is_a_clear_reason():
    """The real CUDA probe (runtime/cuda.py) on this machine: one line saying why, never a crash."""
    from deramos.runtime.cuda import CudaError, cuda_runtime

    try:
        cuda_runtime()
    except CudaError:
        with pytest.raises(TensorRTUnavailable, match=r"^no usable CUDA GPU: ") as err:
            trt_export.device_name()
        assert "\n" not in str(err.value)
    else:
        pytest.skip("a CUDA GPU is visible here: nothing to refuse")


# -- needs TensorRT and a CUDA GPU -----------------------------------------------------------------


@pytest.fixture(scope="session")
def tensorrt_gpu():
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'deramos[gpu]' on a GPU machine)")
    ok, why = available()
    if not ok:
        pytest.skip(f"no usable CUDA GPU for TensorRT: {why}")
    return trt


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_engines_for_this_gpu(tensorrt_gpu, export_bundle_dir, tmp_path, precision):
    import shutil

    root = shutil.copytree(export_bundle_dir[0], tmp_path / "bundle")
    out = build_engines(root, precision, Profiles(batch=(1, 2, 4)), say=lambda _: None)
    device = trt_export.device_name()
    assert out == root / "trt" / device_tag(device, tensorrt_gpu.__version__)
    record = json.loads((out / "build.json").read_text())
    assert record["tensorrt_version"] == tensorrt_gpu.__version__
    assert record["gpu_name"] == device["name"] and record["compute_capability"] == device["compute_capability"]
    assert precision in record["precision"]
    for graph in GRAPHS:
        engine = out / record["engines"][f"{graph}.{precision}"]
        assert engine.name == f"{graph}.{precision}.engine" and engine.stat().st_size > 0
        assert set(record["profiles"][f"{graph}.{precision}"]) == set(GRAPH_IO[graph][0])
    assert (out / "timing.cache").stat().st_size > 0
    load_bundle(root)                                    # engines beside the bundle do not break it
    # What an engine computes is compared with FP32, like every other artefact: the bundle's
    # probes against their stored FP32 scores, and held-out clips against ONNX Runtime FP32.
    from deramos.calibration.drift import drift_set
    from deramos.runtime.backends import OrtBackend
    from deramos.runtime.compare import compare_scorers
    from deramos.runtime.scorer import Scorer

    with Scorer.load(root, backend="tensorrt", precision=precision) as engine:
        probe_check = engine.run_self_check()
        assert probe_check.passed, probe_check.format()
        bundle = load_bundle(root)
        held = drift_set(None, bundle)
        with Scorer(bundle, OrtBackend(bundle, "fp32")) as fp32:
            comparison = compare_scorers(fp32, engine, held.waves, held.prompts, precision=precision,
                                         source=held.source, systems=held.systems)
    print("\n" + comparison.format())
    assert comparison.passed and comparison.clips == 64

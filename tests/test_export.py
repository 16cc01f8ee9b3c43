"""deramos-export: FP32 parity with PyTorch, dynamic axes, a TensorRT-compatible front-end,
FP16 graphs with an FP32 front-end, validation failures, large-graph external data, the CLI.

The shared bundle (`export_bundle_dir`, tests/conftest.py) is FP32 + FP16 + INT8 of a tiny model
trained for 3 epochs: a random-init model's scores are nearly constant, which would make the
ranking (SRCC) checks meaningless.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from deramos.build import onnxio
from deramos.build.stage import BuildOptions
from deramos.calibration.samples import sample_set
from deramos.export.api import ExportFailed, ExportOptions, export_bundle
from deramos.export.graphs import example_inputs
from deramos.model.frontend import dft_basis
from deramos.runtime.bundle import GRAPHS, load_bundle
from deramos.runtime.contract import TOLERANCES
from deramos.runtime.metrics import spearman
from deramos.runtime.text import PromptTokenizer

pytestmark = pytest.mark.usefixtures("torch_single_thread")

BIN = Path(sys.executable).parent
# Batch sizes of the independent parity check: 11 x (5 + 1) = 66 clips (>= 64 for the FP16 SRCC).
PARITY_BATCHES = (5, 1) * 11
NO_SCORE_DIFFERENCE = replace(TOLERANCES["fp32"], max_abs=0.0)   # an FP32 tolerance no export meets


# -- helpers ---------------------------------------------------------------------------------------


def _ort(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _sessions(root: Path, manifest: dict, precision: str) -> dict:
    return {g: _ort(root / manifest["graphs"][g]["files"][precision][0]) for g in GRAPHS}


def _pad(waves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    wave = np.zeros((len(waves), max(len(w) for w in waves)), np.float32)
    for row, w in enumerate(waves):
        wave[row, : len(w)] = w
    return wave, np.array([len(w) for w in waves], np.int64)


def _torch_batch(model, waves, prompts, tok) -> dict:
    wave, lengths = _pad(waves)
    ids, mask = tok.encode(prompts)
    with torch.no_grad():
        frames, frame_mask = model.audio_encoder(torch.from_numpy(wave), torch.from_numpy(lengths))
        tokens = model.text_encoder(torch.from_numpy(ids), torch.from_numpy(mask))
        out = model(torch.from_numpy(wave), torch.from_numpy(lengths), torch.from_numpy(ids), torch.from_numpy(mask))
    return {"mi": out["mi"].numpy(), "ta": out["ta"].numpy(), "frames": frames.numpy(),
            "frame_mask": frame_mask.numpy().astype(bool), "tokens": tokens.numpy(), "token_mask": mask.astype(bool)}


def _onnx_batch(sessions, waves, prompts, tok) -> dict:
    wave, lengths = _pad(waves)
    ids, mask = tok.encode(prompts)
    frames, frame_mask = sessions["audio_encoder"].run(None, {"waveform": wave, "lengths": lengths})
    (tokens,) = sessions["text_encoder"].run(None, {"input_ids": ids, "attention_mask": mask})
    mi, ta, mi_dist, ta_dist = sessions["heads"].run(
        None, {"frames": frames, "frame_mask": frame_mask, "tokens": tokens, "token_mask": mask})
    return {"mi": mi, "ta": ta, "mi_dist": mi_dist, "ta_dist": ta_dist, "frames": frames,
            "frame_mask": frame_mask.astype(bool), "tokens": tokens, "token_mask": mask.astype(bool)}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _ceil_half(x: int) -> int:
    return -(-x // 2)


def _run_batched(fn, samples, batches) -> list[dict]:
    out, start = [], 0
    for size in batches:
        index = list(range(start, start + size))
        out.append(fn([samples.waves[i] for i in index], [samples.prompts[i] for i in index]))
        start += size
    return out


def _per_clip(parts: list[dict]) -> dict:
    """Per clip: scores, valid frames, real tokens."""
    clips = {"mi": [], "ta": [], "frames": [], "tokens": [], "n_frames": []}
    for part in parts:
        for row in range(len(part["mi"])):
            clips["mi"].append(float(part["mi"][row]))
            clips["ta"].append(float(part["ta"][row]))
            clips["frames"].append(part["frames"][row][part["frame_mask"][row]])
            clips["tokens"].append(part["tokens"][row][part["token_mask"][row]])
            clips["n_frames"].append(int(part["frame_mask"][row].sum()))
    clips["mi"], clips["ta"] = np.array(clips["mi"]), np.array(clips["ta"])
    return clips


def _initializer_or_constant(proto, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for init in proto.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            value = next(a for a in node.attribute if a.name == "value")
            return numpy_helper.to_array(value.t)
    return None


def _value_types(proto) -> dict[str, int]:
    """Element type of every tensor of a graph (ONNX shape inference + initializers)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({i.name: i.data_type for i in proto.graph.initializer})
    for node in proto.graph.node:
        if node.op_type == "Constant":
            value = next((a for a in node.attribute if a.name == "value"), None)
            if value is not None:
                types[node.output[0]] = value.t.data_type
    return types


# -- shared data -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(export_bundle_dir):
    root, manifest, _ = export_bundle_dir
    return root, manifest


@pytest.fixture(scope="module")
def tok(bundle, export_model):
    root, manifest = bundle
    return PromptTokenizer(root / manifest["tokenizer"]["file"], export_model.cfg.text.max_tokens)


@pytest.fixture(scope="module")
def parity_samples(export_model):
    """New rendered clips (another seed than the export's validation set): short, in-between and
    exactly window-length clips; matching and mismatching prompts."""
    cfg = export_model.cfg
    return sample_set(sum(PARITY_BATCHES), cfg.audio.sample_rate, cfg.audio.window_seconds, seed=2024)


@pytest.fixture(scope="module")
def torch_reference(export_model, parity_samples, tok):
    assert export_model.training is False
    assert export_model.audio_encoder.frontend.use_dft_conv is False, "the reference must be the torch.stft path"
    return _per_clip(_run_batched(lambda w, p: _torch_batch(export_model, w, p, tok), parity_samples, PARITY_BATCHES))


def _onnx_reference(bundle, precision, parity_samples, tok) -> dict:
    root, manifest = bundle
    sessions = _sessions(root, manifest, precision)
    return _per_clip(_run_batched(lambda w, p: _onnx_batch(sessions, w, p, tok), parity_samples, PARITY_BATCHES))


# -- FP32 parity -----------------------------------------------------------------------------------


def test_stored_fp32_parity_report_passes(export_bundle_dir):
    _, manifest, said = export_bundle_dir
    report = manifest["parity"]["fp32"]
    assert report["passed"] is True and report["failures"] == []
    assert report["clips"] == 64
    assert report["tolerance"] == {"max_abs": 1e-3, "min_cosine": 0.9999}
    assert report["mi_max_abs"] <= 1e-3 and report["ta_max_abs"] <= 1e-3
    assert report["audio_cosine_min"] >= 0.9999 and report["text_cosine_min"] >= 0.9999
    assert any(line.startswith("fp32  PASS  clips 64") for line in said), said


def test_parity_batches_mix_short_and_window_length_clips(parity_samples, export_model):
    window = export_model.cfg.audio.window_samples
    sr = export_model.cfg.audio.sample_rate
    start = 0
    for size in PARITY_BATCHES:
        lengths = [len(parity_samples.waves[i]) for i in range(start, start + size)]
        if size == 5:
            assert min(lengths) <= 3 * sr and max(lengths) == window, lengths
        start += size
    assert sorted({len(w) == window for w in parity_samples.waves}) == [False, True]


def test_fp32_onnx_matches_pytorch_on_new_clips(bundle, parity_samples, tok, torch_reference):
    ref = torch_reference
    got = _onnx_reference(bundle, "fp32", parity_samples, tok)
    assert got["n_frames"] == ref["n_frames"], "frame masks differ"
    mi_err, ta_err = np.abs(got["mi"] - ref["mi"]), np.abs(got["ta"] - ref["ta"])
    print(f"\nfp32 vs torch on {len(ref['mi'])} clips: max|dMI| {mi_err.max():.2e} max|dTA| {ta_err.max():.2e}")
    assert mi_err.max() <= 1e-3, f"clip {mi_err.argmax()}: |dMI| {mi_err.max()}"
    assert ta_err.max() <= 1e-3, f"clip {ta_err.argmax()}: |dTA| {ta_err.max()}"
    audio_cos = [_cosine(a, b) for a, b in zip(got["frames"], ref["frames"])]
    text_cos = [_cosine(a, b) for a, b in zip(got["tokens"], ref["tokens"])]
    print(f"fp32 cosine min: audio {min(audio_cos):.7f} text {min(text_cos):.7f}")
    assert min(audio_cos) >= 0.9999 and min(text_cos) >= 0.9999
    # Scores that differ from clip to clip (the trained tiny model spreads them by ~0.01-0.03):
    # the parity above compares different values, not one constant.
    print(f"torch score spread: std MI {np.std(ref['mi']):.4f} TA {np.std(ref['ta']):.4f}")
    assert np.std(ref["mi"]) > 1e-3 and np.std(ref["ta"]) > 1e-3


def test_graphs_run_for_any_batch_sample_and_token_count(bundle, export_model, tok):
    root, manifest = bundle
    sessions = _sessions(root, manifest, "fp32")
    cfg = export_model.cfg.audio
    rng = np.random.default_rng(7)
    words = ("bright piano melody with soft drums warm bass slow groove and airy strings under a calm "
             "female voice singing in a large hall with echoes").split()
    widths, token_counts = set(), set()
    for batch in range(1, 9):
        longest = int(cfg.sample_rate * (0.5 + 0.7 * (batch - 1)))         # 0.5 s .. 5.4 s
        lengths = [longest] + list(rng.integers(cfg.sample_rate // 4, longest + 1, batch - 1))
        waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
        prompts = [" ".join(words[: 1 + (3 * batch + 5 * row) % len(words)]) for row in range(batch)]
        if batch == 8:
            prompts[-1] = " ".join(words * 2)                                # truncated to max_tokens
        got = _onnx_batch(sessions, waves, prompts, tok)
        ref = _torch_batch(export_model, waves, prompts, tok)
        mel = longest // cfg.hop_length
        assert got["frames"].shape == (batch, _ceil_half(_ceil_half(mel)), cfg.hidden_size)
        assert got["frame_mask"].sum(1).tolist() == [_ceil_half(_ceil_half(n // cfg.hop_length)) for n in lengths]
        assert got["tokens"].shape == (batch, got["token_mask"].shape[1], export_model.cfg.text.hidden_size)
        for key in ("mi", "ta"):
            assert got[key].shape == (batch,)
        assert got["mi_dist"].shape == (batch, export_model.cfg.heads.num_bins)
        np.testing.assert_allclose(got["mi"], ref["mi"], atol=1e-3)
        np.testing.assert_allclose(got["ta"], ref["ta"], atol=1e-3)
        widths.add(longest)
        token_counts.add(got["token_mask"].shape[1])
    assert len(widths) == 8 and len(token_counts) >= 4 and export_model.cfg.text.max_tokens in token_counts


def test_batch_composition_does_not_change_a_clip(bundle, parity_samples, tok):
    """Per-clip reflect padding: a clip scores the same alone and padded inside a batch."""
    root, manifest = bundle
    sessions = _sessions(root, manifest, "fp32")
    waves, prompts = parity_samples.waves[:6], parity_samples.prompts[:6]
    together = _onnx_batch(sessions, waves, prompts, tok)
    for i in range(6):
        alone = _onnx_batch(sessions, [waves[i]], [prompts[i]], tok)
        assert abs(float(alone["mi"][0]) - float(together["mi"][i])) <= 1e-4
        assert abs(float(alone["ta"][0]) - float(together["ta"][i])) <= 1e-4


# -- the front-end inside the graph ----------------------------------------------------------------


FORBIDDEN_OPS = {"STFT", "DFT", "Loop", "If", "SequenceConstruct"}


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_frontend_uses_tensorrt_compatible_ops(bundle, export_model, precision):
    import onnx

    root, manifest = bundle
    path = root / manifest["graphs"]["audio_encoder"]["files"][precision][0]
    proto = onnx.load(str(path))
    ops = {node.op_type for node in proto.graph.node}
    assert not ops & FORBIDDEN_OPS, f"{path.name}: {sorted(ops & FORBIDDEN_OPS)}"
    n_fft = export_model.cfg.audio.n_fft
    want = (2 * (n_fft // 2 + 1), 1, n_fft)
    convs = [n for n in proto.graph.node if n.op_type == "Conv" and n.name.startswith("/encoder/frontend/")]
    weights = [_initializer_or_constant(proto, n.input[1]) for n in convs]
    basis = [w for w in weights if w is not None and w.shape == want]
    assert len(basis) == 1, f"{path.name}: no Conv with a {list(want)} weight ({[getattr(w, 'shape', None) for w in weights]})"
    assert basis[0].dtype == np.float32
    np.testing.assert_allclose(basis[0], dft_basis(n_fft), atol=1e-6)


# -- FP16 ------------------------------------------------------------------------------------------


def test_fp16_graphs_hold_float16_weights_and_fp32_io(bundle):
    import onnx
    from onnx import TensorProto

    root, manifest = bundle
    for graph in GRAPHS:
        assert manifest["graphs"][graph]["files"]["fp16"] == [f"{graph}.fp16.onnx"]
        fp16 = onnx.load(str(root / f"{graph}.fp16.onnx"))
        fp32 = onnx.load(str(root / f"{graph}.onnx"))
        kinds = {i.name: i.data_type for i in fp16.graph.initializer}
        assert list(kinds.values()).count(TensorProto.FLOAT16) > 0, graph
        # Every weight of a MatMul / Gemm / Conv outside the front-end is stored in FP16.
        weights = [(n.name, n.input[1]) for n in fp16.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")
                   and not n.name.startswith("/encoder/frontend/") and n.input[1] in kinds]
        assert weights, graph
        for node, weight in weights:
            assert kinds[weight] == TensorProto.FLOAT16, f"{graph}.fp16.onnx: {node} weight {weight} is not FP16"
        for a, b in ((fp16.graph.input, fp32.graph.input), (fp16.graph.output, fp32.graph.output)):
            assert [(v.name, v.type.tensor_type.elem_type) for v in a] == [(v.name, v.type.tensor_type.elem_type) for v in b]


def test_fp16_frontend_computes_in_float32(bundle):
    """Every node of the FP32 graph's front-end (/encoder/frontend/) reads and writes only FP32
    (or integer) tensors in the FP16 graph; the only cast to FP16 is where its output leaves it."""
    import onnx
    from onnx import TensorProto

    root, _ = bundle
    fp32 = onnx.load(str(root / "audio_encoder.onnx"))
    fp16 = onnx.load(str(root / "audio_encoder.fp16.onnx"))
    region = {n.name for n in fp32.graph.node if n.name.startswith("/encoder/frontend/")}
    assert len(region) > 20
    types = _value_types(fp16)
    nodes = {n.name: n for n in fp16.graph.node}
    assert region <= set(nodes), "front-end nodes were renamed or dropped"
    for name in region:
        node = nodes[name]
        for tensor in list(node.input) + list(node.output):
            if tensor:
                assert types.get(tensor) != TensorProto.FLOAT16, f"{name}: {tensor} is float16"
    (log,) = [nodes[n] for n in region if nodes[n].op_type == "Log"]
    assert types[log.input[0]] == TensorProto.FLOAT and types[log.output[0]] == TensorProto.FLOAT
    (conv,) = [nodes[n] for n in region if nodes[n].op_type == "Conv"]
    assert types[conv.input[1]] == TensorProto.FLOAT
    # No cast to FP16 feeds a front-end node.
    consumers: dict[str, list[str]] = {}
    for node in fp16.graph.node:
        for tensor in node.input:
            consumers.setdefault(tensor, []).append(node.name)
    to_fp16 = [n for n in fp16.graph.node if n.op_type == "Cast"
               and any(a.name == "to" and a.i == TensorProto.FLOAT16 for a in n.attribute)]
    assert to_fp16, "no FP16 region at all"
    for cast in to_fp16:
        inside = [c for c in consumers.get(cast.output[0], []) if c in region]
        assert not inside, f"{cast.name} casts to FP16 inside the front-end (feeds {inside})"


def test_fp16_matches_pytorch(bundle, parity_samples, tok, torch_reference, export_bundle_dir):
    stored = export_bundle_dir[1]["checks"]["fp16"]       # the build stage's check against ONNX Runtime FP32
    assert stored["passed"] is True and stored["tolerance"] == {"max_abs": 0.05, "rel_noise": 0.1, "srcc": 0.99}
    ref = torch_reference
    got = _onnx_reference(bundle, "fp16", parity_samples, tok)
    assert len(ref["mi"]) >= 64
    mi_err, ta_err = np.abs(got["mi"] - ref["mi"]), np.abs(got["ta"] - ref["ta"])
    srcc_mi, srcc_ta = spearman(got["mi"], ref["mi"]), spearman(got["ta"], ref["ta"])
    print(f"\nfp16 vs torch on {len(ref['mi'])} clips: max|dMI| {mi_err.max():.2e} max|dTA| {ta_err.max():.2e} "
          f"SRCC MI {srcc_mi:.4f} TA {srcc_ta:.4f}")
    assert mi_err.max() <= 0.05 and ta_err.max() <= 0.05
    assert srcc_mi >= 0.99 and srcc_ta >= 0.99
    assert all(np.isfinite(f).all() for f in got["frames"])


# -- validation failure ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def failed_export(export_model, tmp_path_factory):
    """An export whose FP32 parity cannot pass: the score tolerance is configured to 0."""
    out = tmp_path_factory.mktemp("failed") / "bundle"
    out.mkdir()
    (out / "manifest.json").write_text("{}")          # a stale manifest from an earlier export
    said: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(TOLERANCES, "fp32", NO_SCORE_DIFFERENCE)
        with pytest.raises(ExportFailed) as info:
            export_bundle(export_model, out, ExportOptions(validate_clips=4, progress=False), say=said.append)
    return out, info.value, said


def test_failed_validation_raises_writes_report_and_no_manifest(failed_export):
    out, error, said = failed_export
    assert not (out / "manifest.json").exists()
    report = json.loads((out / "validation_report.json").read_text())
    fp32 = report["parity"]["fp32"]
    assert fp32["passed"] is False
    assert fp32["tolerance"]["max_abs"] == pytest.approx(NO_SCORE_DIFFERENCE.max_abs, abs=1e-12)   # the configured 0
    assert any(f.startswith("MI: max |Δ|") for f in fp32["failures"]), fp32["failures"]
    assert "validation failed for fp32" in str(error) and "validation_report.json" in str(error)
    assert "\n" not in str(error)
    assert any("FAIL" in line and "MI: max |Δ|" in line for line in said)


def test_failed_validation_message_names_output_and_worst_difference(failed_export):
    _, error, _ = failed_export
    worst = json.loads((failed_export[0] / "validation_report.json").read_text())["parity"]["fp32"]["mi_max_abs"]
    message = str(error)
    assert "MI: max |Δ|" in message
    assert f"{worst:.4g}" in message


def test_cli_failed_validation_exits_1(export_run, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from deramos.export.cli import main

    monkeypatch.setitem(TOLERANCES, "fp32", NO_SCORE_DIFFERENCE)
    out = tmp_path / "bundle"
    result = CliRunner().invoke(main, ["--checkpoint", str(export_run), "--out", str(out), "--validate-clips", "2"])
    assert result.exit_code == 1, result.output
    assert "error: validation failed for fp32" in result.output
    assert "Traceback" not in result.output
    assert (out / "validation_report.json").is_file() and not (out / "manifest.json").exists()


# -- --no-validate and large graphs (external data) -----------------------------------------------


@pytest.fixture(scope="module")
def unvalidated_external(export_model, tmp_path_factory):
    """--no-validate with a failing tolerance configured, and a tiny external-data threshold."""
    out = tmp_path_factory.mktemp("external") / "bundle"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(TOLERANCES, "fp32", NO_SCORE_DIFFERENCE)
        mp.setattr(onnxio, "EXTERNAL_DATA_MIN_BYTES", 10_000)
        manifest = export_bundle(export_model, out, ExportOptions(validate=False, progress=False), say=lambda _: None)
    return out, manifest


def test_no_validate_skips_parity(unvalidated_external):
    out, manifest = unvalidated_external
    assert (out / "manifest.json").is_file()
    assert manifest["parity"] == {}
    assert not (out / "validation_report.json").exists()
    assert "validate" not in manifest["export_seconds"]


def test_export_lists_external_data_with_hashes(unvalidated_external, bundle):
    out, manifest = unvalidated_external
    for graph in GRAPHS:
        assert manifest["graphs"][graph]["files"]["fp32"] == [f"{graph}.onnx", f"{graph}.onnx.data"]
        data = out / f"{graph}.onnx.data"
        assert manifest["files"][data.name] == hashlib.sha256(data.read_bytes()).hexdigest()
    loaded = load_bundle(out)
    assert loaded.precisions() == ["fp32"]
    # The graph with external weights gives what the single-file graph of the same model gives.
    wave = (0.1 * np.random.default_rng(0).standard_normal((2, 16000))).astype(np.float32)
    feeds = {"waveform": wave, "lengths": np.array([16000, 9000], np.int64)}
    external = _ort(out / "audio_encoder.onnx").run(None, feeds)
    single = _ort(bundle[0] / "audio_encoder.onnx").run(None, feeds)
    for a, b in zip(external, single):      # same weights, same kernels: equal up to rounding
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def test_save_onnx_moves_weights_to_one_data_file(bundle, tmp_path):
    import onnx

    root, _ = bundle
    proto = onnx.load(str(root / "text_encoder.onnx"))
    target = tmp_path / "text_encoder.onnx"
    written = onnxio.save_onnx(proto, target, external_min_bytes=1000)
    assert written == [target, tmp_path / "text_encoder.onnx.data"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text_encoder.onnx", "text_encoder.onnx.data"]
    assert target.stat().st_size < 0.2 * (tmp_path / "text_encoder.onnx.data").stat().st_size
    assert (tmp_path / "text_encoder.onnx.data").stat().st_mode == target.stat().st_mode   # not onnx's 0600
    ids = np.array([[101, 2023, 2003, 1037, 3231, 102], [101, 7592, 102, 0, 0, 0]], np.int64)
    mask = (ids != 0).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": mask}
    np.testing.assert_allclose(_ort(target).run(None, feeds)[0], _ort(root / "text_encoder.onnx").run(None, feeds)[0],
                               atol=1e-6, rtol=0)
    # Saved again under the threshold: one file, and the stale side file is gone.
    assert onnxio.save_onnx(onnx.load(str(target)), target, external_min_bytes=1 << 40) == [target]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text_encoder.onnx"]


# -- the CLI ---------------------------------------------------------------------------------------


def _cli_env(**extra) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    env.update(extra)
    return env


def test_cli_fp16_export_is_loadable(export_run, tmp_path):
    from click.testing import CliRunner

    from deramos.export.cli import main

    out = tmp_path / "bundle"
    result = CliRunner().invoke(main, ["--checkpoint", str(export_run), "--out", str(out), "--fp16",
                                       "--validate-clips", "4"])
    assert result.exit_code == 0, result.output
    loaded = load_bundle(out)
    assert loaded.precisions() == ["fp32", "fp16"]
    manifest = loaded.as_json()
    assert manifest["checks"]["fp16"]["passed"] and manifest["parity"]["fp32"]["passed"]
    assert manifest["checks"]["fp16"]["clips"] == 64     # the build stage's --check-clips, whatever --validate-clips says
    assert f"bundle written: {out}" in result.output
    assert "tensorrt" not in result.output.replace(str(tmp_path), "<tmp>").lower()


def test_cli_without_checkpoint_and_without_default_model(tmp_path):
    empty = tmp_path / "no-default"
    empty.mkdir()
    proc = subprocess.run([str(BIN / "deramos-export")], cwd=tmp_path, capture_output=True, text=True,
                          env=_cli_env(DERAMOS_DEFAULT_CHECKPOINT=str(empty)), timeout=120)
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode != 0
    assert len(output.splitlines()) == 1, output
    assert "no embedded default model" in output
    assert "Traceback" not in output
    assert not (tmp_path / "deramos-bundle").exists()


def test_cli_trt_without_tensorrt_keeps_the_onnx_bundle(export_run, tmp_path):
    import importlib.util

    from click.testing import CliRunner

    from deramos.export.cli import main

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here: this checks the message when it is not")
    out = tmp_path / "bundle"
    result = CliRunner().invoke(main, ["--checkpoint", str(export_run), "--out", str(out), "--trt",
                                       "--validate-clips", "2"])
    assert result.exit_code not in (0, None), result.output
    assert isinstance(result.exception, SystemExit), result.exception
    output = result.output.replace(str(tmp_path), "<tmp>")
    mentions = [line for line in output.splitlines() if "tensorrt" in line.lower()]
    assert len(mentions) == 1, result.output
    assert "Traceback" not in result.output
    assert (out / "manifest.json").is_file()
    assert load_bundle(out).precisions() == ["fp32"]
    assert not (out / "trt").exists()


def test_cli_unusable_calibration_data_is_one_line_and_keeps_the_fp32_bundle(export_run, tmp_path):
    from click.testing import CliRunner

    from deramos.export.cli import main

    empty = tmp_path / "calib"
    (empty / "sets").mkdir(parents=True)
    (empty / "sets" / "train_mos_list.txt").write_text("")
    (empty / "prompt_info.txt").write_text("")
    out = tmp_path / "bundle"
    result = CliRunner().invoke(main, ["--checkpoint", str(export_run), "--out", str(out), "--int8",
                                       "--calib", str(empty), "--validate-clips", "2"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [f"error: calibration set {empty} (train): no usable clips (it lists no clips); "
                      f"the FP32 bundle in {out} is complete"], result.output
    assert "Traceback" not in result.output
    assert load_bundle(out).precisions() == ["fp32"]


def test_cli_help_lists_every_option():
    from deramos.export.cli import main

    proc = subprocess.run([str(BIN / "deramos-export"), "--help"], capture_output=True, text=True,
                          env=_cli_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    import click

    params = main.get_params(click.Context(main, **main.context_settings))   # -h comes from there
    options = [opt for param in params for opt in param.opts + param.secondary_opts if opt.startswith("-")]
    assert len(options) >= 17 and "--help" in options and "-h" in options
    for opt in options:
        assert opt in proc.stdout, opt
    for expected in ("--checkpoint", "--out", "--fp16", "--int8", "--calib", "--calib-method", "--recalibrate",
                     "--trt", "--no-validate", "--opset", "--max-batch"):
        assert expected in options


def test_a_text_vocabulary_smaller_than_1000_exports(tmp_path, torch_single_thread):
    """The tracing inputs once used ids up to 1000 whatever the vocabulary (IndexError)."""
    import onnxruntime as ort

    from deramos.model.config import preset
    from deramos.model.network import DeRAMOS

    cfg = preset("tiny")
    cfg.text.vocab_size = 300
    model = DeRAMOS(cfg).eval()
    ids, mask = example_inputs(model)["text_encoder"]
    assert int(ids.max()) < 300
    # No probe clips: this tokenizer's ids (MiniLM's 30k vocabulary) overflow a 300-word model,
    # so real prompts cannot be scored with it; the test is about tracing inputs only.
    manifest = export_bundle(model, tmp_path / "bundle", ExportOptions(validate=False, progress=False, probe_clips=0),
                             say=lambda _: None)
    assert "text_encoder.onnx" in manifest["files"] and not any(f.startswith("probes/") for f in manifest["files"])
    ids = torch.tensor([[5, 299, 17, 2]], dtype=torch.int64)
    mask = torch.ones_like(ids)
    session = ort.InferenceSession(str(tmp_path / "bundle" / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    (tokens,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    with torch.no_grad():
        expected = model.text_encoder(ids, mask).numpy()
    np.testing.assert_allclose(tokens, expected, atol=1e-4)


def test_fewer_calibration_clips_than_asked_for_is_said(tmp_path, torch_single_thread, runtime_model):
    """--calib-clips 16 on a folder of 3 clips: the export says it calibrated on 3."""
    import soundfile as sf

    from deramos.data.synth.music import SAMPLE_RATE, random_attributes, render_clip
    from deramos.runtime.audio import resample

    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(3):
        rng = np.random.default_rng(i)
        wave = resample(render_clip(random_attributes(rng), rng, SAMPLE_RATE, 2.0).astype(np.float32), SAMPLE_RATE, 16000)
        sf.write(str(folder / f"clip{i}.wav"), wave, 16000)
    (folder / "prompts.txt").write_text("calm piano\n")
    said: list[str] = []
    options = ExportOptions(build=BuildOptions(int8=True, calib=str(folder), calib_clips=16), validate=False,
                            progress=False)
    export_bundle(runtime_model, tmp_path / "bundle", options, say=said.append)
    assert f"calibrating on 3 clips from {folder} (asked for 16; that is all it has) (minmax, INT8 target x86-avx2)" in said

"""The export's check against PyTorch (export/validate.py) goes through the one comparator
(runtime/compare.py): the PyTorch runner (export/torch_runner.py) is a runtime backend, the
reference, and the bundle's FP32 graphs on ONNX Runtime the candidate, gated by the contract's
FP32 tolerance. Uses the tiny model and bundle of tests/conftest.py (runtime_model, runtime_bundle)."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from deramos.export.torch_runner import TorchBackend
from deramos.export.validate import check_against_pytorch, format_report, parity_record
from deramos.runtime.backends import OrtBackend
from deramos.runtime.bundle import load_bundle, write_manifest
from deramos.runtime.contract import GRAPHS, SPECS, TOLERANCES, axis_sizes

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _sizes(model, bundle) -> dict[str, int]:
    return axis_sizes(samples=2 * bundle.sample_rate, samples_per_frame=bundle.samples_per_frame, tokens=9,
                      audio_dim=model.cfg.audio.hidden_size, text_dim=model.cfg.text.hidden_size)


def test_the_pytorch_runner_runs_every_graph_as_onnx_runtime_does(runtime_model, runtime_bundle):
    bundle = load_bundle(runtime_bundle)
    vocab = int(runtime_model.text_encoder.model.config.vocab_size)
    pytorch, onnx = TorchBackend(runtime_model), OrtBackend(bundle, "fp32")
    try:
        for graph in GRAPHS:
            spec = SPECS[graph]
            feeds = spec.example_feeds(3, _sizes(runtime_model, bundle), seed=5, vocab=vocab)
            ours, theirs = pytorch.run(graph, feeds), onnx.run(graph, feeds)
            assert list(ours) == list(theirs) == list(spec.output_names), graph
            for name in spec.output_names:
                assert ours[name].shape == theirs[name].shape and ours[name].dtype == theirs[name].dtype, name
                assert np.allclose(ours[name], theirs[name], atol=1e-3), (graph, name)
    finally:
        pytorch.close()
        onnx.close()
    assert dict(pytorch.calls) == dict.fromkeys(GRAPHS, 1)


def test_the_pytorch_runner_puts_the_front_end_back(runtime_model):
    frontend = runtime_model.audio_encoder.frontend
    before = (frontend.float64, frontend.use_dft_conv)
    runner = TorchBackend(runtime_model)
    assert (frontend.float64, frontend.use_dft_conv) == (True, False)     # the exact STFT, in float64
    runner.close()
    assert (frontend.float64, frontend.use_dft_conv) == before


def test_pytorch_and_onnx_runtime_agree_within_the_contracts_fp32_tolerance(runtime_model, runtime_bundle):
    comparison = check_against_pytorch(runtime_model, load_bundle(runtime_bundle), clips=8, seed=3)
    assert comparison.passed, comparison.format()
    assert comparison.tolerance == TOLERANCES["fp32"] and comparison.clips == 8
    assert comparison.reference.startswith("pytorch eager") and comparison.candidate.startswith("onnxruntime-cpu")
    assert all(comparison.scores[k].max_abs <= 1e-3 for k in ("MI", "TA"))
    assert all(comparison.graphs[g]["min_cosine"] >= 0.9999 for g in ("audio_encoder", "text_encoder"))
    # the scores differ from clip to clip: the check compares values, not one constant
    assert comparison.scores["MI"].spread > 0.05
    record = parity_record(comparison)
    assert set(record) == {"clips", "tolerance", "mi_max_abs", "ta_max_abs", "audio_cosine_min", "text_cosine_min",
                           "mi_srcc", "ta_srcc", "failures", "passed"}
    assert record["tolerance"] == {"max_abs": 1e-3, "min_cosine": 0.9999} and record["passed"] is True
    assert format_report("fp32", record).startswith("fp32  PASS  clips 8  max|ΔMI| ")


@pytest.fixture(scope="module")
def tampered_bundle(runtime_bundle, tmp_path_factory):
    """runtime_bundle with one audio-encoder weight perturbed (and the manifest rehashed, so the
    bundle loads: only the check against PyTorch can tell)."""
    import onnx
    from onnx import numpy_helper

    root = shutil.copytree(runtime_bundle, tmp_path_factory.mktemp("tampered") / "bundle")
    proto = onnx.load(str(root / "audio_encoder.onnx"))
    weight = max((t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2),
                 key=lambda t: int(np.prod(t.dims)))
    values = numpy_helper.to_array(weight)
    noise = np.random.default_rng(0).normal(0, 0.2 * float(values.std()), values.shape).astype(values.dtype)
    weight.CopyFrom(numpy_helper.from_array(values + noise, weight.name))
    onnx.save(proto, str(root / "audio_encoder.onnx"))
    write_manifest(root, json.loads((root / "manifest.json").read_text()))
    return root


def test_a_tampered_graph_fails_the_check_naming_graph_and_measure(runtime_model, tampered_bundle):
    comparison = check_against_pytorch(runtime_model, load_bundle(tampered_bundle), clips=8, seed=3)
    assert not comparison.passed
    assert any(re.fullmatch(r"audio_encoder output frames: min cosine 0\.\d{6} < 0\.9999", f)
               for f in comparison.failures), comparison.failures
    assert not any(f.startswith("text_encoder") for f in comparison.failures)     # not tampered
    report = format_report("fp32", parity_record(comparison))
    assert report.startswith("fp32  FAIL  clips 8") and "audio_encoder output frames: min cosine" in report

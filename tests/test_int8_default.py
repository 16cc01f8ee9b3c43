"""INT8 of the embedded default model, built the way a user builds it (`deramos-build B --int8`):
musicnn's front-end filters as integer GEMMs, the drift check passed, the work counted honestly."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from deramos.calibration.conv_gemm import GEMM_OP

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
def test_default_model_int8_is_integer_where_the_work_is_and_passes(tmp_path, monkeypatch):
    import onnx

    from deramos.build.stage import BuildOptions, build_bundle
    from deramos.runtime.bundle import load_bundle
    from deramos.runtime.default import default_bundle
    from deramos.runtime.scorer import Scorer

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))     # a first use: the default model exported
    bundle = tmp_path / "bundle"
    shutil.copytree(default_bundle(), bundle)
    said = []
    result = build_bundle(bundle, BuildOptions(int8=True, speed=False), say=said.append)
    assert result.failed == [], "\n".join(said)
    check = result.checks["int8"]
    assert check.clips >= 64 and check.scores["MI"].spread > 0.5          # a check on scores that vary
    assert check.scores["MI"].srcc >= 0.97 and check.scores["TA"].srcc >= 0.97

    manifest = load_bundle(bundle).manifest
    share = manifest.int8["quantized"]["audio_encoder"]
    # 2 backbones x (2 timbral filters over the clip + 3 temporal filters); the timbral filters'
    # patch edges and end padding (< 1 % of the FLOPs each) stay FP32 (quantize.MIN_GEMM_FLOP_SHARE)
    assert share["integer_gemms"] == 10
    assert share["quantized_flop_share"] >= 0.7          # issue 20: >= 70 % of the FLOPs in integer kernels
    graph = onnx.load(str(bundle / "audio_encoder.int8.onnx"), load_external_data=False).graph
    gemms = [n.name for n in graph.node if n.op_type == GEMM_OP]
    assert len(gemms) == 10 and not any(n.op_type == "Conv" and n.name in gemms for n in graph.node)

    clips = sorted(EXAMPLES.glob("*.wav"))
    prompts = ["a piece of music"] * len(clips)
    with Scorer.load(bundle, backend="onnxruntime-cpu") as fp32, \
            Scorer.load(bundle, backend="onnxruntime-cpu", precision="int8") as int8:
        reference = fp32.score_batch([str(c) for c in clips], prompts)
        quantised = int8.score_batch([str(c) for c in clips], prompts)
    mi = np.array([[r.mi, q.mi] for r, q in zip(reference, quantised)])
    assert len(clips) >= 6 and np.abs(mi[:, 0] - mi[:, 1]).mean() <= 0.15
    assert np.abs(mi[:, 0] - mi[:, 1]).max() > 1e-4     # INT8, not the FP32 graph under another name

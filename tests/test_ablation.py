"""make ablation, scaled down: every loss and seed trains on one frozen pre-trained encoder and
the report's numbers are the mean and spread of the per-run results."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from deramos.ablation import main

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_ablation_report_matches_its_runs(tmp_path):
    out, report = tmp_path / "ablation", tmp_path / "ablation.md"
    result = CliRunner().invoke(main, ["--out", str(out), "--report", str(report), "--preset", "tiny", "--clips", "60",
                                       "--heldout-clips", "40", "--pretrain-epochs", "1", "--epochs", "1",
                                       "--seeds", "1,2", "--losses", "dera,pointwise", "--counterfactual-prompts", "2"])
    assert result.exit_code == 0, (result.output, result.exception)
    runs = {name: json.loads((out / f"{name}.json").read_text())
            for name in ("dera-seed1", "dera-seed2", "pointwise-seed1", "pointwise-seed2")}
    summary = json.loads((out / "summary.json").read_text())["table"]
    for loss in ("dera", "pointwise"):
        values = [runs[f"{loss}-seed{s}"]["metrics"]["utterance"]["TA"]["SRCC"] for s in (1, 2)]
        mean, std = summary[loss]["utterance TA SRCC"]
        assert mean == pytest.approx(np.mean(values)) and std == pytest.approx(np.std(values))
        assert f"| {loss} | 2 | " in report.read_text()
    encoder = load_file(str(out / "pretrain" / "audio_encoder.safetensors"))
    for name in runs:   # frozen: every run kept the shared pre-trained encoder as it was
        weights = load_file(str(out / "runs" / name / "last" / "model.safetensors"))
        assert all(np.array_equal(weights[f"audio_encoder.{k}"].numpy(), v.numpy()) for k, v in encoder.items())
    assert "pre-trained once" in report.read_text() and "2 counterfactual prompts per clip" in report.read_text()

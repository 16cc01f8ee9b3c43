"""The embedded default model (deramos/default_model/) as shipped: small enough, loadable with no
download, and it hears a prompt: on every example clip the matching prompt scores a clearly
higher TA than the mismatching one, while MI does not depend on the prompt."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deramos.runtime.paths import PACKAGE_DIR

pytestmark = pytest.mark.usefixtures("torch_single_thread")
REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = PACKAGE_DIR / "default_model"


def test_shipped_files_and_size():
    names = {p.name for p in MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "heldout-metrics.json"} <= names
    assert (MODEL_DIR / "model.safetensors").stat().st_size <= 20 * 2**20
    assert json.loads((MODEL_DIR / "config.json").read_text())["model"]["name"] == "small"


def test_matching_prompts_score_higher_ta_on_every_example(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from deramos.checkpoint import load_checkpoint
    from deramos.features import Featurizer, predict
    from deramos.runtime.audio import load_audio

    model = load_checkpoint(MODEL_DIR)
    featurizer = Featurizer(model)
    rows = [json.loads(line) for line in (REPO / "examples" / "prompts.jsonl").read_text().splitlines()]
    waves = [load_audio(REPO / "examples" / r["path"], model.cfg.audio.sample_rate) for r in rows]
    mi_match, ta_match = predict(featurizer, waves, [r["prompt"] for r in rows])
    mi_other, ta_other = predict(featurizer, waves, [r["mismatched_prompt"] for r in rows])
    assert np.all(ta_match - ta_other >= 0.3), (ta_match, ta_other)
    np.testing.assert_allclose(mi_match, mi_other, atol=1e-6)          # MI reads the audio only
    assert np.all((1.0 <= ta_match) & (ta_match <= 5.0)) and np.all((1.0 <= mi_match) & (mi_match <= 5.0))

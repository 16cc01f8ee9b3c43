"""The embedded default model (deramos/default_model/) as shipped: small enough, loadable with no
download, and it hears real music it never saw: clean real clips get a good MI, and a clip's own
description beats a wrong one more often than chance, while MI does not depend on the prompt.

The check set (tests/data/realmusic_clean, written by scripts/realmusic_examples.py) is the 33
clean clips of the real-music held-out corpus: music21 scores of composers, a soundfont and
game-soundtrack recordings that training never saw. Measured on the same 132 prompt pairs:
the shipped model paired wins 0.606, clean MI 3.93; a second run of its recipe (`make
default-model`, bit-for-bit the same data, a slightly different model) 0.568 and 3.53; the
previous default (`small`, synthetic only) 0.515 and 2.56. The gates sit between the recipe's
runs and the previous default, so a model rebuilt by the recipe passes and the old one fails."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deramos.runtime.paths import PACKAGE_DIR

pytestmark = pytest.mark.usefixtures("torch_single_thread")
REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = PACKAGE_DIR / "default_model"
CHECK_SET = REPO / "tests" / "data" / "realmusic_clean"
DRAWS = 4   # prompt pairs per clip: 33 clips x 4 = 132 pairs
MIN_PAIRED_WIN_RATE = 0.55   # shipped 0.606, rebuilt 0.568; chance 0.5 (the previous default: 0.515)
MIN_CLEAN_MI = 3.3           # shipped 3.93, rebuilt 3.53 (issue 10's target: 3.8); the previous default 2.56


def test_shipped_files_and_size():
    names = {p.name for p in MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "heldout-metrics.json",
            "realmusic-heldout.json"} <= names
    assert (MODEL_DIR / "model.safetensors").stat().st_size <= 20 * 2**20
    config = json.loads((MODEL_DIR / "config.json").read_text())["model"]
    assert config["name"] == "musicnn"
    assert config["audio"]["features"] == ["penultimate", "taggram", "rhythm", "tonality"]


@pytest.fixture(scope="module")
def featurizer(tmp_path_factory):
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from deramos.checkpoint import load_checkpoint
    from deramos.features import Featurizer

    # the frozen encoders' outputs are cached by content: each clip is encoded once for all draws
    return Featurizer(load_checkpoint(MODEL_DIR), cache_dir=tmp_path_factory.mktemp("features"))


def _prompt_pairs(rows: list[dict], rng) -> tuple[list[str], list[str]]:
    """Per clip, a prompt naming what it really is and one with 2-3 attributes wrong (as
    scripts/realmusic_report.py draws them)."""
    from deramos.realmusic.attributes import RealAttributes, mismatched, prompt_for

    matched, wrong = [], []
    for row in rows:
        heard = RealAttributes.from_dict(row["attributes"])
        other = mismatched(heard, rng)
        matched.append(prompt_for(heard, rng))
        wrong.append(prompt_for(other, rng))
    return matched, wrong


def test_it_hears_real_music_it_never_saw(featurizer):
    from deramos.features import predict
    from deramos.runtime.audio import load_audio

    rows = [json.loads(line) for line in (CHECK_SET / "clips.jsonl").read_text().splitlines()]
    assert len(rows) == 33
    waves = [load_audio(CHECK_SET / r["path"], 16000) for r in rows]
    rng = np.random.default_rng(7)
    wins, mi_all = [], []
    for _ in range(DRAWS):
        matched, mismatched = _prompt_pairs(rows, rng)
        mi, ta_matched = predict(featurizer, waves, matched)
        mi_other, ta_mismatched = predict(featurizer, waves, mismatched)
        np.testing.assert_allclose(mi, mi_other, atol=1e-5)          # MI reads the audio only
        wins.append(ta_matched > ta_mismatched)
        mi_all.append(mi)
    rate = float(np.concatenate(wins).mean())
    assert rate >= MIN_PAIRED_WIN_RATE, f"paired win rate {rate:.3f} over {len(rows) * DRAWS} prompt pairs"
    assert float(np.mean(mi_all[0])) >= MIN_CLEAN_MI
    assert np.all((1.0 <= np.concatenate(mi_all)) & (np.concatenate(mi_all) <= 5.0))


def test_examples_score_in_range_and_mi_ignores_the_prompt(featurizer):
    from deramos.features import predict
    from deramos.runtime.audio import load_audio

    rows = [json.loads(line) for line in (REPO / "examples" / "prompts.jsonl").read_text().splitlines()]
    waves = [load_audio(REPO / "examples" / r["path"], 16000) for r in rows]
    mi_match, ta_match = predict(featurizer, waves, [r["prompt"] for r in rows])
    mi_other, ta_other = predict(featurizer, waves, [r["mismatched_prompt"] for r in rows])
    np.testing.assert_allclose(mi_match, mi_other, atol=1e-5)
    scores = np.concatenate([mi_match, ta_match, ta_other])
    assert np.all((1.0 <= scores) & (scores <= 5.0))
    assert float(mi_match.mean()) >= 3.0, mi_match        # clean real music is not "poor"

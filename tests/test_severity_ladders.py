"""deramos-realmusic ladders: MI against severity one degradation family at a time. The numbers
against scipy, the ladders' mechanics (each rung the same audio whatever is scored beside it, the
clean rung the clip itself), the default model on heavy noise, and the one-line errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import spearmanr
from test_ablation import CLEAN

from deramos.runtime.errors import EvaluationError
from deramos.training.realmusic_cli import main
from deramos.training.severity_ladders import (
    LADDER_FAMILIES,
    Clip,
    climb,
    family_metrics,
    ladder_report,
    read_clean_clips,
)

RATE = 16000
DEFAULT_MODEL = "src/deramos/default_model"


def _clips(count=3, seconds=1.0):
    rng = np.random.default_rng(5)
    t = np.arange(int(RATE * seconds)) / RATE
    return [Clip(f"c{i}", (0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t) + 0.01 * rng.standard_normal(t.size))
                 .astype(np.float32), "a tone") for i in range(count)]


def test_family_metrics_agree_with_scipy():
    rng = np.random.default_rng(0)
    severities = (0.25, 0.5, 0.75, 1.0)
    mi = 4.0 - np.outer(rng.uniform(0.5, 2.0, 30), [0, *severities]) + rng.normal(0, 0.3, (30, 5))
    m = family_metrics("noise", mi, severities)
    levels = [0, *severities]
    within = [spearmanr(row, levels).statistic for row in mi]
    assert m["clips"] == 30
    assert m["srcc_within_clip_mean"] == pytest.approx(np.mean(within), abs=1e-3)
    assert m["srcc_pooled"] == pytest.approx(spearmanr(mi.ravel(), np.tile(levels, 30)).statistic, abs=1e-3)
    low, high = m["srcc_within_clip_ci95"]
    assert low <= m["srcc_within_clip_mean"] <= high and 0 < high - low < 0.5
    assert m["falls_at_full_severity"] == pytest.approx(np.mean(mi[:, -1] < mi[:, 0]), abs=1e-3)
    assert m["mi_mean_per_rung"] == pytest.approx(mi.mean(axis=0), abs=1e-3)
    assert m["latent_mi_per_rung"][0] == pytest.approx(4.7) and np.all(np.diff(m["latent_mi_per_rung"]) < 0)


def test_a_flat_clip_counts_as_no_correlation_not_nan():
    m = family_metrics("noise", np.array([[3.0] * 3, [3.0, 2.0, 1.0]]), (0.5, 1.0))
    assert m["srcc_within_clip_mean"] == pytest.approx(-0.5)


def test_each_rung_is_the_same_audio_whatever_is_scored_beside_it():
    clips = _clips()
    seen = []

    def record(waves, prompts):
        seen.append([w.copy() for w in waves])
        return np.zeros(len(waves))

    climb(clips, "noise", (0.5, 1.0), RATE, record)
    climb(clips[2:], "noise", (0.5, 1.0), RATE, record)
    together, alone = seen
    assert len(together) == 9 and len(alone) == 3
    np.testing.assert_array_equal(together[0], clips[0].wave)           # rung 0: the clip itself
    for rung in range(3):
        np.testing.assert_array_equal(together[6 + rung], alone[rung])
    assert not np.array_equal(together[7], together[8])


def test_every_family_changes_the_audio_at_every_rung():
    clips = _clips(count=1, seconds=2.0)
    for family in LADDER_FAMILIES:
        seen = []
        climb(clips, family, (0.25, 1.0), RATE, lambda waves, prompts: seen.extend(waves) or np.zeros(len(waves)))
        clean, mild, full = (np.asarray(w, dtype=np.float64) for w in seen)
        assert clean.shape == mild.shape == full.shape, family
        change = [np.abs(w - clean).mean() for w in (mild, full)]
        assert 0 < change[0] and 0 < change[1], (family, change)


@pytest.mark.parametrize("families, severities, message", [
    (("detune",), (0.5,), "unknown or render-time degradation families ['detune']"),
    ((), (0.5,), "no degradation family to ladder; choose from bitcrush, clipping"),
    (("noise",), (1.0, 0.5), "severities [1.0, 0.5]: need increasing values in (0, 1]"),
    (("noise",), (0.0, 0.5), "severities [0.0, 0.5]: need increasing values in (0, 1]"),
])
def test_a_bad_ladder_is_refused_before_scoring(families, severities, message):
    with pytest.raises(EvaluationError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        ladder_report(_clips(), RATE, lambda w, p: pytest.fail("scored"), families, severities)


def test_a_bad_clip_list_names_its_line(tmp_path):
    bad = tmp_path / "clips.jsonl"
    bad.write_text('{"prompt": "no path"}\n{"path": "a.wav", "prompt": "x"}\n')
    with pytest.raises(EvaluationError, match=r"clips.jsonl:1: not a \{\"path\", \"prompt\"\} line \(KeyError\)"):
        read_clean_clips(bad, RATE)


def test_default_model_mi_falls_with_heavy_noise_and_the_cli_prints_what_it_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out_json, out_md = tmp_path / "l.json", tmp_path / "l.md"
    done = CliRunner().invoke(main, ["ladders", "--clips", str(CLEAN / "clips.jsonl"), "--model", f"default={DEFAULT_MODEL}",
                                     "--families", "noise", "--severities", "0.5,1", "--limit", "2", "--no-progress",
                                     "--json", str(out_json), "--markdown", str(out_md)])
    assert done.exit_code == 0, (done.output, done.exception)
    first, table = done.stdout.split("\n", 1)
    assert json.loads(first) == json.loads(out_json.read_text())
    assert table == out_md.read_text() + "\n" and "| noise | " in table
    noise = json.loads(first)["default"]["noise"]
    assert noise["clips"] == 2 and noise["falls_at_full_severity"] == pytest.approx(1.0)
    clean, _, full = noise["mi_mean_per_rung"]
    assert clean - full > 1.0, noise        # 0 dB SNR: measured 3.9 -> 1.8 on the first three clean clips


@pytest.mark.parametrize("option, value, message", [
    ("--families", ",", "no degradation family to ladder"),
    ("--severities", "0.5,x", "Invalid value for '--severities': '0.5,x': expected comma-separated numbers"),
    ("--severities", "1,0.5", "severities [1.0, 0.5]: need increasing values in (0, 1]"),
])
def test_cli_refuses_a_bad_ladder_in_one_line(option, value, message):
    done = CliRunner().invoke(main, ["ladders", "--clips", str(CLEAN / "clips.jsonl"), "--model", f"default={DEFAULT_MODEL}",
                                     "--limit", "2", "--no-progress", option, value])
    assert done.exit_code == 2 and done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if line.lower().startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], done.stderr


def test_cli_names_a_missing_clip_in_one_line(tmp_path):
    listing = tmp_path / "clips.jsonl"
    listing.write_text('{"path": "gone.wav", "prompt": "x"}\n{"path": "gone2.wav", "prompt": "y"}\n')
    done = CliRunner().invoke(main, ["ladders", "--clips", str(listing), "--model", f"default={DEFAULT_MODEL}",
                                     "--families", "noise", "--no-progress"])
    assert done.exit_code == 2 and done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "gone.wav" in errors[0], done.stderr

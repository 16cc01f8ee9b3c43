"""The real-music report's statistics (deramos.training.realmusic_report) against scipy: the matched/mismatched AUC is the
Mann-Whitney U over all pairs, the paired win rate's interval is the Wilson score interval."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from deramos.training import realmusic_report as realmusic_report


def test_auc_is_mann_whitney_u_over_all_pairs():
    rng = np.random.default_rng(0)
    positive = np.round(rng.normal(3.2, 0.6, 149), 1)     # rounded: ties counted half
    negative = np.round(rng.normal(3.0, 0.6, 149), 1)
    u = stats.mannwhitneyu(positive, negative).statistic
    assert realmusic_report.auc(positive, negative) == pytest.approx(u / (149 * 149), abs=1e-12)


@pytest.mark.parametrize("wins, n", [(16, 33), (0, 33), (33, 33), (104, 149)])
def test_paired_win_interval_is_wilsons(wins, n):
    expected = stats.binomtest(wins, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = realmusic_report.wilson(wins, n)
    assert (low, high) == pytest.approx((expected.low, expected.high), abs=2e-4)   # z 1.96 vs 1.95996


def test_paired_wins_counts_strict_wins_per_clip():
    matched = np.array([3.0, 2.0, 4.0, 2.5])
    mismatched = np.array([2.0, 2.0, 4.5, 1.0])      # a tie is not a win
    result = realmusic_report.paired_wins(matched, mismatched)
    assert (result["wins"], result["clips"], result["rate"]) == (2, 4, 0.5)
    assert result["ci95"][0] < 0.5 < result["ci95"][1]


def test_markdown_without_format_deltas_says_nan_and_lists_each_kind():
    metrics = {level: {k: {"SRCC": 0.5} for k in ("MI", "TA")} for level in ("utterance", "system")}
    wins = {"wins": 3, "clips": 4, "rate": 0.75, "ci95": [0.3, 0.95]}
    result = {"metrics": metrics, "matched_vs_mismatched_auc": 0.6, "paired_wins": wins, "mi_clean_mean": 3.0,
              "clean_clips": 1, "mi_heavy_mean": 2.0, "heavy_clips": 1, "format_delta_mi": {},
              "paired_wins_one_kind_wrong": {k: wins for k in realmusic_report.PROMPT_KINDS}}
    table = realmusic_report.markdown({"m": result})
    assert "| m | 0.500 | 0.500 | 0.500 | 0.500 | 0.600 | 0.75 (0.30-0.95) | 3.00 (1) | 2.00 (1) | nan |" in table
    assert "| model | instrument | ensemble | tempo | mood | dynamics |" in table
    assert "| m | 0.75 | 0.75 | 0.75 | 0.75 | 0.75 |" in table

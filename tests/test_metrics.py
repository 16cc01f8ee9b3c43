"""Tests for deramos.metrics; scipy.stats is the oracle for the correlations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from deramos.runtime.metrics import (
    _count_inversions,
    evaluate,
    format_table,
    kendall_tau,
    mse,
    pearson,
    score_metrics,
    spearman,
    system_scores,
)

SIZES = [2, 3, 7, 100, 1000]
SEEDS = [0, 1, 2, 3]


def random_pair(n: int, seed: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    true = rng.uniform(1, 5, n)
    pred = true + rng.normal(0, 1.0, n)
    if ties:
        # Integer MOS-like scores: many ties in both inputs.
        true, pred = np.round(true), np.round(pred)
    return pred, true


@pytest.mark.parametrize("ties", [False, True], ids=["no-ties", "ties"])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", SIZES)
def test_correlations_match_scipy(n: int, seed: int, ties: bool) -> None:
    pred, true = random_pair(n, seed, ties)
    if np.ptp(pred) == 0 or np.ptp(true) == 0:  # a tiny rounded draw can come out constant
        assert math.isnan(pearson(pred, true)) and math.isnan(kendall_tau(pred, true))
        return
    assert pearson(pred, true) == pytest.approx(stats.pearsonr(pred, true)[0], abs=1e-9)
    assert spearman(pred, true) == pytest.approx(stats.spearmanr(pred, true)[0], abs=1e-9)
    expected_tau = stats.kendalltau(pred, true, variant="b")[0]
    assert kendall_tau(pred, true) == pytest.approx(expected_tau, abs=1e-9)


def test_heavy_ties_with_few_distinct_values_match_scipy() -> None:
    rng = np.random.default_rng(7)
    pred = rng.integers(1, 3, 500).astype(float)
    true = rng.integers(1, 4, 500).astype(float)
    assert kendall_tau(pred, true) == pytest.approx(stats.kendalltau(pred, true)[0], abs=1e-9)
    assert spearman(pred, true) == pytest.approx(stats.spearmanr(pred, true)[0], abs=1e-9)


def test_perfect_and_reversed_order() -> None:
    x = np.arange(50, dtype=float)
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    # Pearson of the ranks is 1 only up to rounding: the sums' order depends on the SIMD width
    # (AVX-512 gave 0.9999999999999999), so no metric here is compared for exact equality.
    assert spearman(x, x**3) == pytest.approx(1.0, abs=1e-12)
    assert kendall_tau(x, x**3) == pytest.approx(1.0, abs=1e-12)
    assert kendall_tau(x, -x) == pytest.approx(-1.0, abs=1e-12)
    assert spearman(x, -x) == pytest.approx(-1.0, abs=1e-12)


def test_count_inversions_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    for n in [1, 2, 3, 5, 8, 13, 64, 100]:
        values = rng.integers(0, 6, n)
        brute = sum(values[i] > values[j] for i in range(n) for j in range(i + 1, n))
        assert _count_inversions(values) == brute


def test_mse() -> None:
    assert mse([1, 2, 3], [1, 2, 5]) == pytest.approx(4 / 3)
    assert mse(np.array([2.5]), np.array([2.5])) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("metric", [pearson, spearman, kendall_tau])
def test_constant_input_gives_nan(metric) -> None:
    assert math.isnan(metric([3, 3, 3, 3], [1, 2, 3, 4]))
    assert math.isnan(metric([1, 2, 3, 4], [2, 2, 2, 2]))
    assert math.isnan(metric([1.0], [2.0]))


def test_score_metrics_keys_and_constant_prediction() -> None:
    result = score_metrics([3.0, 3.0, 3.0], [1.0, 2.0, 3.0])
    assert list(result) == ["MSE", "LCC", "SRCC", "KTAU"]
    assert result["MSE"] == pytest.approx(5 / 3)
    assert all(math.isnan(result[name]) for name in ("LCC", "SRCC", "KTAU"))


@pytest.mark.parametrize(
    ("pred", "true", "message"),
    [
        ([1, 2], [1, 2, 3], "pred has 2 values but true has 3"),
        ([], [], "no values"),
        ([1, float("nan")], [1, 2], "pred contains NaN"),
        ([[1, 2]], [[1, 2]], "must be 1-D"),
    ],
)
def test_bad_inputs_raise(pred, true, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        score_metrics(pred, true)


def test_system_scores_are_means_in_sorted_order() -> None:
    scores = system_scores(["S2", "S1", "S2", "S1", "S3"], [4.0, 1.0, 2.0, 2.0, 5.0])
    assert scores == {"S1": 1.5, "S2": 3.0, "S3": 5.0}
    assert list(scores) == ["S1", "S2", "S3"]
    with pytest.raises(ValueError, match="3 system ids for 2 values"):
        system_scores(["S1", "S2", "S3"], [1.0, 2.0])


# A hand-worked example: three systems, two clips each.
SYSTEM_IDS = ["S001", "S001", "S002", "S002", "S003", "S003"]
PRED = {"MI": np.array([2.0, 3.0, 4.0, 4.0, 1.0, 2.0]), "TA": np.array([3.0, 3.0, 2.0, 4.0, 5.0, 4.0])}
TRUE = {"MI": np.array([2.0, 2.0, 5.0, 4.0, 1.0, 1.0]), "TA": np.array([3.0, 4.0, 3.0, 3.0, 4.0, 5.0])}
# Predicted system means: MI S001 2.5, S002 4.0, S003 1.5; TA S001 3.0, S002 3.0, S003 4.5.
SYSTEM_TRUTH = {
    "S001": {"MI": 3.0, "TA": 2.0},
    "S002": {"MI": 4.0, "TA": 3.0},
    "S003": {"MI": 2.0, "TA": 4.0},
}


def test_evaluate_system_level_against_system_truth() -> None:
    result = evaluate(SYSTEM_IDS, PRED, TRUE, SYSTEM_TRUTH)
    mi = result["system"]["MI"]
    # errors 0.5, 0, 0.5 -> MSE 0.5/3; ranks agree exactly.
    assert mi["MSE"] == pytest.approx(0.5 / 3)
    assert mi["SRCC"] == pytest.approx(1.0)
    assert mi["KTAU"] == pytest.approx(1.0)
    # pred (2.5, 4, 1.5) vs truth (3, 4, 2): centred (-0.167, 1.333, -1.167) and (0, 1, -1).
    assert mi["LCC"] == pytest.approx(2.5 / math.sqrt((1 / 36 + 16 / 9 + 49 / 36) * 2))
    ta = result["system"]["TA"]
    # pred (3, 3, 4.5) vs truth (2, 3, 4): errors 1, 0, 0.5.
    assert ta["MSE"] == pytest.approx(1.25 / 3)
    # one tied pair in pred: tau-b = (2 - 0) / sqrt((3 - 1) * 3)
    assert ta["KTAU"] == pytest.approx(2 / math.sqrt(6))


def test_evaluate_system_level_without_system_truth_uses_clip_means() -> None:
    result = evaluate(SYSTEM_IDS, PRED, TRUE, None)
    # true MI means: S001 2.0, S002 4.5, S003 1.0 vs predicted 2.5, 4.0, 1.5.
    assert result["system"]["MI"]["MSE"] == pytest.approx(0.25)
    assert result["system"]["MI"]["KTAU"] == pytest.approx(1.0)


def test_evaluate_utterance_level_and_shape() -> None:
    result = evaluate(SYSTEM_IDS, PRED, TRUE, SYSTEM_TRUTH)
    assert set(result) == {"utterance", "system"}
    assert list(result["utterance"]) == ["MI", "TA"]
    assert result["utterance"]["TA"] == pytest.approx(score_metrics(PRED["TA"], TRUE["TA"]), abs=1e-12)
    assert set(result["system"]["TA"]) == {"MSE", "LCC", "SRCC", "KTAU"}


def test_evaluate_without_clip_truth_has_system_level_only() -> None:
    result = evaluate(SYSTEM_IDS, PRED, None, SYSTEM_TRUTH)
    assert result["utterance"] == {}
    assert result["system"]["MI"]["MSE"] == pytest.approx(0.5 / 3)


def test_evaluate_errors() -> None:
    with pytest.raises(ValueError, match="needs clip scores"):
        evaluate(SYSTEM_IDS, PRED, None, None)
    with pytest.raises(ValueError, match="no system-level truth for S003"):
        evaluate(SYSTEM_IDS, PRED, TRUE, {k: v for k, v in SYSTEM_TRUTH.items() if k != "S003"})


def test_format_table() -> None:
    table = format_table(evaluate(SYSTEM_IDS, PRED, TRUE, SYSTEM_TRUTH))
    lines = table.splitlines()
    assert len(lines) == 5
    assert lines[0].split() == ["level", "aspect", "MSE", "LCC", "SRCC", "KTAU"]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["utterance", "MI"],
        ["utterance", "TA"],
        ["system", "MI"],
        ["system", "TA"],
    ]
    assert lines[3].split()[2] == "0.167" and lines[3].split()[5] == "1.000"
    # Right-aligned numbers: every line ends in the same column.
    assert len({len(line) for line in lines}) == 1


def test_format_table_shows_nan() -> None:
    result = {"utterance": {}, "system": {"MI": score_metrics([3.0, 3.0], [1.0, 2.0])}}
    assert format_table(result).splitlines()[1].split()[2:] == ["2.500", "nan", "nan", "nan"]

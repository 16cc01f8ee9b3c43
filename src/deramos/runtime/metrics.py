"""MOS prediction metrics: MSE, LCC, SRCC and Kendall's tau-b, at utterance and system level.

numpy only, so evaluation runs where scipy is not installed; the tests check every correlation
against scipy.stats. A correlation that is undefined (an input with zero variance, fewer than
two items) is nan rather than an exception, so one degenerate aspect does not abort a report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "mse",
    "pearson",
    "spearman",
    "kendall_tau",
    "score_metrics",
    "system_scores",
    "evaluate",
    "format_table",
]

METRIC_NAMES = ("MSE", "LCC", "SRCC", "KTAU")
ASPECTS = ("MI", "TA")


def mse(pred: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray) -> float:
    """Mean squared error."""
    p, t = _paired(pred, true)
    return float(np.mean((p - t) ** 2))


def pearson(pred: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray) -> float:
    """Linear correlation coefficient (LCC); nan when either input is constant."""
    p, t = _paired(pred, true)
    p = p - p.mean()
    t = t - t.mean()
    # Normalising each vector first keeps the products well scaled for large or tiny inputs.
    p_norm, t_norm = np.linalg.norm(p), np.linalg.norm(t)
    if p_norm == 0.0 or t_norm == 0.0:
        return math.nan
    r = float(np.dot(p / p_norm, t / t_norm))
    return max(-1.0, min(1.0, r))


def spearman(pred: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation (SRCC), ties given their average rank."""
    p, t = _paired(pred, true)
    return pearson(_average_ranks(p), _average_ranks(t))


def kendall_tau(pred: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray) -> float:
    """Kendall's tau-b (tie-corrected), in O(n log n)."""
    p, t = _paired(pred, true)
    n = len(p)
    all_pairs = n * (n - 1) // 2
    tied_p = _tied_pairs(p)
    tied_t = _tied_pairs(t)
    tied_both = _tied_pairs(np.stack([p, t], axis=1))
    # Sorted by pred (ties broken by true), a pair is discordant exactly when true decreases.
    order = np.lexsort((t, p))
    discordant = _count_inversions(t[order])
    concordant_minus_discordant = all_pairs - tied_p - tied_t + tied_both - 2 * discordant
    denominator = math.sqrt(float(all_pairs - tied_p) * float(all_pairs - tied_t))
    if denominator == 0.0:
        return math.nan
    tau = concordant_minus_discordant / denominator
    return max(-1.0, min(1.0, tau))


def score_metrics(pred: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray) -> dict[str, float]:
    """All four metrics for one aspect: {"MSE", "LCC", "SRCC", "KTAU"}."""
    return {
        "MSE": mse(pred, true),
        "LCC": pearson(pred, true),
        "SRCC": spearman(pred, true),
        "KTAU": kendall_tau(pred, true),
    }


def system_scores(system_ids: Sequence[str], values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Mean value per system, keyed by system id in sorted order."""
    ids = np.asarray(system_ids, dtype=str)
    vals = _vector(values, "values")
    if len(ids) != len(vals):
        raise ValueError(f"got {len(ids)} system ids for {len(vals)} values")
    systems, index = np.unique(ids, return_inverse=True)
    sums = np.bincount(index, weights=vals, minlength=len(systems))
    counts = np.bincount(index, minlength=len(systems))
    return {str(system): float(total / count) for system, total, count in zip(systems, sums, counts)}


def evaluate(
    system_ids: Sequence[str],
    pred: Mapping[str, Sequence[float] | np.ndarray],
    true: Mapping[str, Sequence[float] | np.ndarray] | None,
    system_truth: Mapping[str, Mapping[str, float]] | None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Utterance- and system-level metrics for each aspect in ``pred`` ("MI", "TA").

    System level compares each system's mean *predicted* clip score with ``system_truth``
    (e.g. system_mos_phase1.csv); without it, with the mean of that system's true clip scores.
    With ``true`` None there is nothing to compare clips with, and "utterance" is empty.
    """
    if true is None and system_truth is None:
        raise ValueError("evaluate needs clip scores (true) or system scores (system_truth)")
    aspects = _aspects(pred)
    result: dict[str, dict[str, dict[str, float]]] = {"utterance": {}, "system": {}}
    for aspect in aspects:
        if true is not None:
            if aspect not in true:
                raise ValueError(f"true scores have no {aspect!r} entry")
            result["utterance"][aspect] = score_metrics(pred[aspect], true[aspect])
        predicted = system_scores(system_ids, pred[aspect])
        if system_truth is not None:
            reference = _system_reference(system_truth, predicted, aspect)
        else:
            reference = system_scores(system_ids, true[aspect])  # type: ignore[index]
        systems = sorted(predicted)
        result["system"][aspect] = score_metrics(
            [predicted[s] for s in systems], [reference[s] for s in systems]
        )
    return result


def format_table(result: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """A compact aligned table: one row per level and aspect, columns MSE LCC SRCC KTAU."""
    rows = [("level", "aspect", *METRIC_NAMES)]
    for level in ("utterance", "system"):
        for aspect, metrics in result.get(level, {}).items():
            rows.append((level, aspect, *(f"{metrics[name]:.3f}" for name in METRIC_NAMES)))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        # Names flush left, numbers flush right so that the decimal points line up.
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# --- helpers ------------------------------------------------------------------------------------


def _vector(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contains NaN or infinite values")
    return array


def _paired(pred: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, t = _vector(pred, "pred"), _vector(true, "true")
    if len(p) != len(t):
        raise ValueError(f"pred has {len(p)} values but true has {len(t)}")
    if len(p) == 0:
        raise ValueError("no values to score")
    return p, t


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values all get the mean of the ranks they span."""
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ranks_before = np.cumsum(counts) - counts
    return (ranks_before + (counts + 1) / 2.0)[inverse.reshape(-1)]


def _tied_pairs(values: np.ndarray) -> int:
    """Number of pairs with equal values (rows, for a 2-D array)."""
    _, counts = np.unique(values, axis=0, return_counts=True)
    return int(np.sum(counts * (counts - 1) // 2))


def _count_inversions(values: np.ndarray) -> int:
    """Pairs i < j with values[i] > values[j], by a vectorised bottom-up merge sort.

    At each level the array is made of sorted runs of ``width``; for each element of a right
    run, the number of larger elements in its left partner run is found by a binary search in
    all left runs at once (the run number is folded into the sort key), then pairs of runs are
    merged by one sort. log2(n) levels of O(n log n) work each.
    """
    n = len(values)
    # Dense integer ranks make "run number * span + value" an exact int64 key.
    _, ranks = np.unique(values, return_inverse=True)
    current = ranks.reshape(-1).astype(np.int64)
    span = int(current.max()) + 1 if n else 1
    position = np.arange(n, dtype=np.int64)
    inversions = 0
    width = 1
    while width < n:
        run = position // width
        pair = run // 2
        is_right = run % 2 == 1
        key = pair * span + current
        left_keys = key[~is_right]  # globally sorted: runs are sorted and pair numbers increase
        right_keys = key[is_right]
        right_pairs = pair[is_right]
        # A right run exists only after a full left run, so each left partner has `width` items.
        not_greater = np.searchsorted(left_keys, right_keys, side="right") - np.searchsorted(
            left_keys, right_pairs * span, side="left"
        )
        inversions += int(np.sum(width - not_greater))
        current = np.sort(key) - (position // (2 * width)) * span
        width *= 2
    return inversions


def _aspects(pred: Mapping[str, object]) -> list[str]:
    known = [aspect for aspect in ASPECTS if aspect in pred]
    return known + sorted(aspect for aspect in pred if aspect not in ASPECTS)


def _system_reference(
    system_truth: Mapping[str, Mapping[str, float]], predicted: Mapping[str, float], aspect: str
) -> dict[str, float]:
    missing = sorted(system for system in predicted if system not in system_truth)
    if missing:
        raise ValueError(f"no system-level truth for {', '.join(missing)}")
    return {system: float(system_truth[system][aspect]) for system in predicted}


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    p = successes / n
    centre, half = p + z * z / (2 * n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(positive > negative) over all pairs, ties counted half (Mann-Whitney)."""
    diff = positive[:, None] - negative[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)

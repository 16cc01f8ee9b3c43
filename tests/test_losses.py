"""Losses against values computed by hand with numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deramos.training.losses import (
    LOSS_KINDS,
    LossConfig,
    alignment,
    gaussian_kl,
    gaussian_targets,
    listwise_ranking,
    pairwise_margin,
    pointwise_l1,
    total_loss,
    with_counterfactuals,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")

K = 5
CENTRES = np.linspace(1.0, 5.0, K)          # 1, 2, 3, 4, 5
LOGITS = np.array([[0.5, -1.0, 2.0, 0.0, 0.3],
                   [-0.2, 0.1, 0.0, 1.5, -2.0],
                   [3.0, 0.0, -1.0, -1.0, 0.5]])
Y = np.array([3.2, 4.6, 1.0])


def t(x, dtype=torch.float32):
    return torch.tensor(np.asarray(x), dtype=dtype)


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_gaussian_kl(logits, y, sigma):
    total = 0.0
    for row, target in zip(logits, y):
        q = np.array([math.exp(-((target - c) ** 2) / (2 * sigma ** 2)) for c in CENTRES])
        q /= q.sum()
        log_p = row - math.log(sum(math.exp(v) for v in row))
        total += sum(qk * (math.log(max(qk, 1e-12)) - lp) for qk, lp in zip(q, log_p))
    return total / len(y)


@pytest.mark.parametrize("sigma", [0.25, 1.0])
def test_gaussian_kl_by_hand(sigma):
    got = gaussian_kl(t(LOGITS), t(Y), t(CENTRES), sigma)
    assert got.shape == ()
    assert float(got) == pytest.approx(np_gaussian_kl(LOGITS, Y, sigma), rel=1e-5, abs=1e-6)


def test_gaussian_kl_default_sigma_is_025():
    assert float(gaussian_kl(t(LOGITS), t(Y), t(CENTRES))) == pytest.approx(np_gaussian_kl(LOGITS, Y, 0.25), rel=1e-5)


def test_gaussian_kl_is_zero_when_prediction_equals_target():
    y = t([2.3, 4.9])
    q = gaussian_targets(y, t(CENTRES), 0.5)
    logits = torch.log(q) + 3.0              # any constant shift gives the same softmax
    assert float(gaussian_kl(logits, y, t(CENTRES), 0.5)) == pytest.approx(0.0, abs=1e-6)
    # and is positive otherwise
    assert float(gaussian_kl(logits.flip(-1), y, t(CENTRES), 0.5)) > 0.1


def test_gaussian_targets_by_hand():
    q = gaussian_targets(t([3.0, 1.5]), t(CENTRES), 0.25).numpy()
    expected = np.array([[math.exp(-((y - c) ** 2) / (2 * 0.0625)) for c in CENTRES] for y in (3.0, 1.5)])
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(q, expected, rtol=1e-5, atol=1e-7)
    assert q[0].argmax() == 2
    assert q[1, 0] == pytest.approx(q[1, 1], rel=1e-6)      # 1.5 is half way between bins 1 and 2


S = np.array([3.1, 2.0, 4.4, 1.7])
YS = np.array([3.5, 1.2, 4.8, 2.9])


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_listwise_ranking_by_hand(temperature):
    target = np_softmax(YS / temperature)
    log_p = S / temperature - np.log(np.exp(S / temperature).sum())
    expected = -(target * log_p).sum()
    got = listwise_ranking(t(S), t(YS), temperature)
    assert got.shape == ()
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_listwise_ranking_default_temperature_is_one():
    assert float(listwise_ranking(t(S), t(YS))) == pytest.approx(float(listwise_ranking(t(S), t(YS), 1.0)))


def test_listwise_ranking_is_shift_invariant():
    base = float(listwise_ranking(t(S), t(YS)))
    for shift in (-3.0, 0.7, 100.0):
        assert float(listwise_ranking(t(S + shift), t(YS))) == pytest.approx(base, rel=1e-5)


def test_listwise_ranking_prefers_the_right_order():
    right = float(listwise_ranking(t(YS * 3), t(YS)))
    wrong = float(listwise_ranking(t(-YS * 3), t(YS)))
    assert right < wrong


def test_listwise_ranking_target_is_detached():
    s = t(S).requires_grad_()
    y = t(YS).requires_grad_()
    listwise_ranking(s, y).backward()
    assert y.grad is None
    # d/ds of -Σ q log softmax(s) = softmax(s) - q
    np.testing.assert_allclose(s.grad.numpy(), np_softmax(S) - np_softmax(YS), rtol=1e-5, atol=1e-6)


A = np.array([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0], [3.0, 3.0, 3.0]])
TT = np.array([[1.0, 1.0, 0.0], [0.5, -1.0, 0.0], [-1.0, -1.0, -1.0]])
Y_TA = np.array([4.0, 5.0, 1.0])


def test_alignment_by_hand():
    cos = (A * TT).sum(1) / (np.linalg.norm(A, axis=1) * np.linalg.norm(TT, axis=1))
    np.testing.assert_allclose(cos, [1 / (math.sqrt(5) * math.sqrt(2)), 1.0, -1.0])
    expected = np.mean((cos - (Y_TA - 1) / 4) ** 2)
    got = alignment(t(A), t(TT), t(Y_TA))
    assert got.shape == ()
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # identical vectors and y=5 -> 0; opposite vectors and y=1 -> (−1 − 0)^2 = 1
    assert float(alignment(t(A[:1]), t(A[:1]), t([5.0]))) == pytest.approx(0.0, abs=1e-6)
    assert float(alignment(t(A[:1]), t(-A[:1]), t([1.0]))) == pytest.approx(1.0, rel=1e-6)


def test_alignment_is_scale_invariant():
    base = float(alignment(t(A), t(TT), t(Y_TA)))
    assert float(alignment(t(A * 7.0), t(TT * 0.1), t(Y_TA))) == pytest.approx(base, rel=1e-5)


def test_pointwise_l1_by_hand():
    s, y = np.array([1.0, 2.5, 4.0]), np.array([2.0, 2.5, 1.0])
    assert float(pointwise_l1(t(s), t(y))) == pytest.approx((1.0 + 0.0 + 3.0) / 3)


def test_pairwise_margin_by_hand():
    s = np.array([3.0, 3.05, 1.0, 2.0])
    y = np.array([4.0, 2.0, 2.0, 3.0])
    margin = 0.1
    terms = [max(0.0, margin - (s[i] - s[j])) for i in range(4) for j in range(4) if y[i] > y[j]]
    assert len(terms) == 5             # (0,1) (0,2) (0,3) (3,1) (3,2); ties (1,2) do not count
    expected = sum(terms) / len(terms)
    assert float(pairwise_margin(t(s), t(y), margin)) == pytest.approx(expected, rel=1e-5)
    # default margin 0.1
    assert float(pairwise_margin(t(s), t(y))) == pytest.approx(expected, rel=1e-5)


def test_pairwise_margin_all_ties_is_zero_and_differentiable():
    s = t([1.0, 2.0, 3.0]).requires_grad_()
    loss = pairwise_margin(s, t([3.0, 3.0, 3.0]))
    assert loss.requires_grad
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(s.grad, torch.zeros(3))


def test_pairwise_margin_zero_when_order_right_with_margin():
    assert float(pairwise_margin(t([5.0, 3.0, 1.0]), t([4.0, 3.0, 2.0]), 0.5)) == 0.0


# --- total_loss -----------------------------------------------------------------------------

def model_output(seed=0, b=4, k=K, d=6):
    gen = torch.Generator().manual_seed(seed)
    mi_logits, ta_logits = torch.randn(b, k, generator=gen), torch.randn(b, k, generator=gen)
    centres = torch.linspace(1, 5, k)
    return {
        "mi_logits": mi_logits, "ta_logits": ta_logits,
        "mi": (torch.softmax(mi_logits, -1) * centres).sum(-1),
        "ta": (torch.softmax(ta_logits, -1) * centres).sum(-1),
        "audio_emb": torch.randn(b, d, generator=gen), "text_emb": torch.randn(b, d, generator=gen),
    }


Y_MI = t([3.2, 1.4, 4.9, 2.2])
Y_TA4 = t([2.0, 4.5, 3.3, 1.1])
C = torch.linspace(1, 5, K)


def test_total_loss_dera_parts_and_weights():
    out = model_output()
    cfg = LossConfig(kind="dera", sigma=0.3, rank_weight=0.05, rank_temperature=0.7, align_weight=0.4)
    loss, parts = total_loss(out, Y_MI, Y_TA4, C, cfg)
    assert list(parts) == ["kl_mi", "kl_ta", "list_mi", "align_ta"]
    assert parts["kl_mi"] == pytest.approx(float(gaussian_kl(out["mi_logits"], Y_MI, C, 0.3)), rel=1e-6)
    assert parts["kl_ta"] == pytest.approx(float(gaussian_kl(out["ta_logits"], Y_TA4, C, 0.3)), rel=1e-6)
    assert parts["list_mi"] == pytest.approx(0.05 * float(listwise_ranking(out["mi"], Y_MI, 0.7)), rel=1e-6)
    assert parts["align_ta"] == pytest.approx(
        0.4 * float(alignment(out["audio_emb"], out["text_emb"], Y_TA4)), rel=1e-6)
    assert float(loss) == pytest.approx(sum(parts.values()), rel=1e-6)
    assert all(isinstance(v, float) for v in parts.values())


def test_total_loss_dera_defaults_are_the_papers():
    cfg = LossConfig()
    assert (cfg.kind, cfg.sigma, cfg.rank_weight, cfg.rank_temperature, cfg.align_weight) == \
        ("dera", 0.25, 0.01, 1.0, 0.2)
    out = model_output(1)
    loss, parts = total_loss(out, Y_MI, Y_TA4, C, cfg)
    expected = (float(gaussian_kl(out["mi_logits"], Y_MI, C, 0.25))
                + float(gaussian_kl(out["ta_logits"], Y_TA4, C, 0.25))
                + 0.01 * float(listwise_ranking(out["mi"], Y_MI, 1.0))
                + 0.2 * float(alignment(out["audio_emb"], out["text_emb"], Y_TA4)))
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_total_loss_pointwise():
    out = model_output(2)
    loss, parts = total_loss(out, Y_MI, Y_TA4, C, LossConfig(kind="pointwise"))
    assert list(parts) == ["l1_mi", "l1_ta"]
    assert parts["l1_mi"] == pytest.approx(float((out["mi"] - Y_MI).abs().mean()), rel=1e-6)
    assert parts["l1_ta"] == pytest.approx(float((out["ta"] - Y_TA4).abs().mean()), rel=1e-6)
    assert float(loss) == pytest.approx(parts["l1_mi"] + parts["l1_ta"], rel=1e-6)


def test_total_loss_distribution():
    out = model_output(3)
    loss, parts = total_loss(out, Y_MI, Y_TA4, C, LossConfig(kind="distribution", sigma=0.5))
    assert list(parts) == ["kl_mi", "kl_ta"]
    assert float(loss) == pytest.approx(float(gaussian_kl(out["mi_logits"], Y_MI, C, 0.5))
                                        + float(gaussian_kl(out["ta_logits"], Y_TA4, C, 0.5)), rel=1e-6)


def test_total_loss_pairwise():
    out = model_output(4)
    loss, parts = total_loss(out, Y_MI, Y_TA4, C, LossConfig(kind="pairwise", pair_margin=0.3))
    assert list(parts) == ["kl_mi", "kl_ta", "pair_mi", "pair_ta"]
    assert parts["pair_mi"] == pytest.approx(float(pairwise_margin(out["mi"], Y_MI, 0.3)), rel=1e-6)
    assert parts["pair_ta"] == pytest.approx(float(pairwise_margin(out["ta"], Y_TA4, 0.3)), rel=1e-6)
    assert float(loss) == pytest.approx(sum(parts.values()), rel=1e-6)


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_total_loss_backpropagates(kind):
    out = model_output(5)
    leaves = {k: v.clone().requires_grad_() for k, v in out.items()}
    loss, _ = total_loss(leaves, Y_MI, Y_TA4, C, LossConfig(kind=kind))
    loss.backward()
    used = {"dera": ("mi_logits", "ta_logits", "mi", "audio_emb", "text_emb"),
            "pointwise": ("mi", "ta"),
            "distribution": ("mi_logits", "ta_logits"),
            "pairwise": ("mi_logits", "ta_logits")}[kind]
    for name in used:
        assert leaves[name].grad is not None and leaves[name].grad.abs().sum() > 0, name


def counterfactual_batch():
    """Model outputs for 4 clips, their counterfactual TA outputs and the counterfactual targets."""
    out = model_output(6)
    gen = torch.Generator().manual_seed(9)
    cf = {"cf_ta_logits": torch.randn(4, K, generator=gen), "cf_text_emb": torch.randn(4, 6, generator=gen)}
    cf["cf_ta"] = (torch.softmax(cf["cf_ta_logits"], -1) * C).sum(-1)
    return out, cf, t([1.5, 2.5, 3.5, 4.5])


def test_counterfactuals_join_the_ta_terms_only():
    out, cf, y_cf = counterfactual_batch()
    merged, y_ta = with_counterfactuals({**out, **cf}, Y_TA4, y_cf)
    assert torch.equal(y_ta, torch.cat([Y_TA4, y_cf]))
    assert torch.equal(merged["ta_logits"], torch.cat([out["ta_logits"], cf["cf_ta_logits"]]))
    assert torch.equal(merged["audio_emb"], torch.cat([out["audio_emb"], out["audio_emb"]]))
    assert merged["mi"] is out["mi"]                                   # MI sees the real pairs only
    loss, parts = total_loss(merged, Y_MI, y_ta, C, LossConfig())
    both_kl = (float(gaussian_kl(out["ta_logits"], Y_TA4, C)) + float(gaussian_kl(cf["cf_ta_logits"], y_cf, C))) / 2
    assert parts["kl_ta"] == pytest.approx(both_kl, rel=1e-6)
    assert parts["kl_mi"] == pytest.approx(float(gaussian_kl(out["mi_logits"], Y_MI, C)), rel=1e-6)
    both_align = (float(alignment(out["audio_emb"], out["text_emb"], Y_TA4))
                  + float(alignment(out["audio_emb"], cf["cf_text_emb"], y_cf))) / 2
    assert parts["align_ta"] == pytest.approx(0.2 * both_align, rel=1e-6)


def test_contrast_term_scores_the_ta_difference_and_is_off_by_default():
    out, cf, y_cf = counterfactual_batch()
    merged, y_ta = with_counterfactuals({**out, **cf}, Y_TA4, y_cf)
    _, off = total_loss(merged, Y_MI, y_ta, C, LossConfig())
    assert "contrast_ta" not in off
    loss, parts = total_loss(merged, Y_MI, y_ta, C, LossConfig(contrast_weight=2.0))
    expected = 2.0 * float((((out["ta"] - cf["cf_ta"]) - (Y_TA4 - y_cf)) ** 2).mean())
    assert parts["contrast_ta"] == pytest.approx(expected, rel=1e-6)
    assert float(loss) == pytest.approx(sum(parts.values()), rel=1e-6)
    assert {k: v for k, v in parts.items() if k != "contrast_ta"} == pytest.approx(off, rel=1e-6)


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match=r"unknown loss 'listnet'; choose from dera, pointwise, distribution, pairwise"):
        LossConfig(kind="listnet")

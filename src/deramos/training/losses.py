"""Losses: the DeRA-MOS objective and the baselines it is compared with.

y: human scores in [1, 5]; s: predicted expected scores; logits: [B, K] over score bins.

- gaussian_kl:      KL(q || p), q_k ∝ exp(-(y - c_k)^2 / 2σ^2), batch mean   (distributional)
- listwise_ranking: -Σ_i softmax(y/T)_i log softmax(s/T)_i over the batch    (ListNet top-1, MI)
- alignment:        mean (cos(a, t) - (y_TA - 1)/4)^2                         (score-anchored, TA)
- pointwise_l1:     |s - y|                                                  (MusicEval baseline)
- pairwise_margin:  mean over ordered pairs of max(0, margin - (s_i - s_j)) where y_i > y_j
- contrast (with counterfactual prompts, LossConfig.contrast_weight):
                    mean ((s_TA(clip, prompt) - s_TA(clip, cf prompt)) - (y_TA - y_cf))^2
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_KINDS = ("dera", "pointwise", "distribution", "pairwise")


def gaussian_targets(y: torch.Tensor, centres: torch.Tensor, sigma: float) -> torch.Tensor:
    logits = -((y[:, None] - centres[None, :]) ** 2) / (2.0 * sigma ** 2)
    return torch.softmax(logits, dim=-1)


def gaussian_kl(logits: torch.Tensor, y: torch.Tensor, centres: torch.Tensor, sigma: float = 0.25) -> torch.Tensor:
    q = gaussian_targets(y, centres, sigma)
    log_p = torch.log_softmax(logits.float(), dim=-1)
    return (q * (torch.log(q.clamp_min(1e-12)) - log_p)).sum(-1).mean()


def listwise_ranking(scores: torch.Tensor, y: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    target = torch.softmax(y.detach() / temperature, dim=0)
    return -(target * torch.log_softmax(scores / temperature, dim=0)).sum()


def alignment(audio_emb: torch.Tensor, text_emb: torch.Tensor, y_ta: torch.Tensor) -> torch.Tensor:
    cos = F.cosine_similarity(audio_emb, text_emb, dim=-1)
    return ((cos - (y_ta - 1.0) / 4.0) ** 2).mean()


def pointwise_l1(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (scores - y).abs().mean()


def pairwise_margin(scores: torch.Tensor, y: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    better = y[:, None] > y[None, :]                        # [B, B]: i rated above j
    if not better.any():
        return scores.sum() * 0.0
    violation = F.relu(margin - (scores[:, None] - scores[None, :]))
    return violation[better].mean()


@dataclass
class LossConfig:
    kind: str = "dera"
    sigma: float = 0.25
    rank_weight: float = 0.01       # λ_r
    rank_temperature: float = 1.0   # T
    align_weight: float = 0.2       # λ_a
    pair_margin: float = 0.1
    # With counterfactual prompts: weight of the squared error of the TA *difference* between a
    # clip's own prompt and its counterfactual one (0 = off). The plain TA terms can be met by
    # predicting each clip's TA from its audio alone; this one only by reading the prompt.
    contrast_weight: float = 0.0

    def __post_init__(self):
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"unknown loss {self.kind!r}; choose from {', '.join(LOSS_KINDS)}")


def with_counterfactuals(out: dict[str, torch.Tensor], y_ta: torch.Tensor,
                         y_cf: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Counterfactual (clip, prompt) pairs are more TA examples: append them to the TA outputs
    (the audio embedding repeats: same clip) so every TA term of the loss sees both."""
    merged = dict(out)
    for key in ("ta", "ta_logits", "text_emb"):
        merged[key] = torch.cat([out[key], out[f"cf_{key}"]])
    merged["audio_emb"] = torch.cat([out["audio_emb"], out["audio_emb"]])
    merged["ta_contrast"] = out["ta"] - out["cf_ta"]
    merged["ta_contrast_target"] = y_ta - y_cf
    return merged, torch.cat([y_ta, y_cf])


def total_loss(out: dict[str, torch.Tensor], y_mi: torch.Tensor, y_ta: torch.Tensor,
               centres: torch.Tensor, cfg: LossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """The training objective for cfg.kind; returns the loss and its parts (floats, for logging)."""
    parts: dict[str, torch.Tensor] = {}
    if cfg.kind == "pointwise":
        parts["l1_mi"] = pointwise_l1(out["mi"], y_mi)
        parts["l1_ta"] = pointwise_l1(out["ta"], y_ta)
    else:
        parts["kl_mi"] = gaussian_kl(out["mi_logits"], y_mi, centres, cfg.sigma)
        parts["kl_ta"] = gaussian_kl(out["ta_logits"], y_ta, centres, cfg.sigma)
    if cfg.kind == "dera":
        parts["list_mi"] = cfg.rank_weight * listwise_ranking(out["mi"], y_mi, cfg.rank_temperature)
        parts["align_ta"] = cfg.align_weight * alignment(out["audio_emb"], out["text_emb"], y_ta)
    elif cfg.kind == "pairwise":
        parts["pair_mi"] = pairwise_margin(out["mi"], y_mi, cfg.pair_margin)
        parts["pair_ta"] = pairwise_margin(out["ta"], y_ta, cfg.pair_margin)
    if cfg.contrast_weight and "ta_contrast" in out:
        parts["contrast_ta"] = cfg.contrast_weight * F.mse_loss(out["ta_contrast"], out["ta_contrast_target"])
    loss = sum(parts.values())
    return loss, {k: float(v.detach()) for k, v in parts.items()}

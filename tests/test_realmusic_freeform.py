"""The free-form evaluation's pairing and numbers (realmusic/freeform.py) and the report's reward
replay and per-degradation SRCC, against hand-made cases and scipy."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from deramos.data.realmusic.attributes import RealAttributes, asserted_ta, assertion_matches, check_assertion
from deramos.data.realmusic.freeform import Prompt, draw_pairs, freeform_metrics
from deramos.training.realmusic_report import mi_by_degradation, reward_replay

CLIPS = [RealAttributes(instrument="piano", tempo_bpm=70.0, mode="minor", dynamics="soft"),
         RealAttributes(instrument="electric_guitar", tempo_bpm=140.0, mode="major", genre="rock", drums="drums",
                        others=("bass",))]


def _prompt(i, asserts):
    return Prompt(f"F{i}", f"prompt {i}", check_assertion(asserts))


DESCRIBED = [_prompt(i, a) for i, a in enumerate([
    {"instrument": ["piano"]}, {"instrument": ["piano"], "mood": "minor"}, {"instrument": ["piano"], "mood": "major"},
    {"tempo": "slow", "dynamics": "soft"}, {"tempo": "fast", "dynamics": "soft"}, {"tempo_bpm": 72},
    {"instrument": ["electric_guitar", "bass"], "genre": "rock"}, {"genre": "rock", "drums": "drums"},
    {"genre": "jazz", "drums": "drums"}, {"instrument": ["saxophone"]}, {"drums": "no drums", "mood": "minor"},
    {"instrument": ["bass"], "tempo": "fast"}])]
UNRELATED = [Prompt(f"U{i}", t, {}, "speech") for i, t in enumerate(["a man speaking", "rain", "a shopping list"])]


def test_pairs_say_what_holds():
    pairs = draw_pairs(CLIPS, DESCRIBED, UNRELATED, np.random.default_rng(0), matched_per_clip=10,
                       mismatched_per_clip=10, unrelated_per_clip=3)
    for pair in pairs:
        verdict = assertion_matches(pair.prompt.asserts, CLIPS[pair.clip])
        if pair.role == "matched":
            assert all(verdict.values()) and pair.truth == pytest.approx(4.7)
        elif pair.role.startswith("wrong:"):
            assert [k for k, ok in verdict.items() if not ok] == [pair.role.split(":")[1]]
        elif pair.role == "mismatched":
            assert not all(verdict.values()) and pair.truth == pytest.approx(asserted_ta(verdict))
        else:
            assert pair.role == "unrelated" and pair.truth == 1.0
    matched_ids = {(p.clip, p.prompt.id) for p in pairs if p.role == "matched"}
    assert matched_ids == {(0, "F0"), (0, "F1"), (0, "F3"), (0, "F5"), (0, "F10"), (1, "F6"), (1, "F7"), (1, "F11")}
    wrong = {(p.clip, p.role) for p in pairs if p.role.startswith("wrong")}
    assert (0, "wrong:mood") in wrong and (0, "wrong:tempo") in wrong and (1, "wrong:genre") in wrong
    again = draw_pairs(CLIPS, DESCRIBED, UNRELATED, np.random.default_rng(0), matched_per_clip=10,
                       mismatched_per_clip=10, unrelated_per_clip=3)
    assert again == pairs


def test_metrics_of_a_perfect_and_a_reversed_scorer():
    pairs = draw_pairs(CLIPS, DESCRIBED, UNRELATED, np.random.default_rng(1), matched_per_clip=10,
                       mismatched_per_clip=10, unrelated_per_clip=3)
    truth = np.array([p.truth for p in pairs])
    jitter = np.random.default_rng(2).uniform(0, 1e-3, len(pairs))   # breaks ties as a model would
    good = freeform_metrics(pairs, truth + jitter)
    assert good["matched_vs_mismatched_auc"] == 1.0
    assert good["unrelated_ta_at_most_2"]["rate"] == 1.0
    assert good["own_prompt_beats_every_unrelated"]["rate"] == 1.0
    assert all(r["rate"] == 1.0 for r in good["paired_wins_one_kind_wrong"].values() if r["pairs"])
    assert good["utterance_srcc_ta"] == pytest.approx(spearmanr(truth + jitter, truth).statistic, abs=1e-3)
    bad = freeform_metrics(pairs, 6.0 - truth + jitter)
    assert bad["matched_vs_mismatched_auc"] == 0.0
    assert bad["unrelated_ta_at_most_2"]["rate"] == 0.0
    assert all(r["rate"] == 0.0 for r in bad["paired_wins_one_kind_wrong"].values() if r["pairs"])
    assert bad["utterance_srcc_ta"] < -0.9


def test_reward_replay_shares_of_the_oracle_gain():
    groups = ["a", "a", "a", "b", "b", "c"]   # c has one version: not a choice
    true = np.array([1.0, 2.0, 4.0, 3.0, 5.0, 2.0])
    assert reward_replay(groups, true, true)["share_of_oracle_gain"] == pytest.approx(1.0)
    assert reward_replay(groups, true, true)["groups"] == 2
    worst = reward_replay(groups, true, -true)["share_of_oracle_gain"]
    # random 7/3 and 4, oracle 4 and 5, worst 1 and 3: (2 - 19/6) / (4.5 - 19/6)
    assert worst == pytest.approx((2.0 - 19 / 6) / (4.5 - 19 / 6), abs=1e-3)


def test_mi_by_degradation_uses_the_family_alone():
    degradations = [{}, {}, {"noise": 0.2}, {"noise": 0.5}, {"noise": 0.9}, {"clip": 0.4}, {"clip": 0.8},
                    {"clip": 0.9}, {"noise": 0.9, "clip": 0.9}]
    mi = np.array([4.5, 4.4, 4.0, 3.0, 2.0, 4.2, 3.9, 1.5, 5.0])
    out = mi_by_degradation(degradations, mi)
    assert out["noise"]["clips_with_it_alone"] == 3 and out["noise"]["clean_clips"] == 2
    assert out["noise"]["srcc"] == pytest.approx(spearmanr(mi[:5], [0, 0, 0.2, 0.5, 0.9]).statistic, abs=1e-3)
    assert out["clip"]["srcc"] == pytest.approx(spearmanr(mi[[0, 1, 5, 6, 7]], [0, 0, 0.4, 0.8, 0.9]).statistic, abs=1e-3)


def test_training_prompts_never_use_the_evaluation_texts():
    from deramos.data.realmusic import phrasing
    from deramos.data.realmusic.arrange import STYLES, random_arrangement_attributes
    from deramos.data.realmusic.attributes import random_attributes
    from deramos.data.realmusic.corpus import counterfactuals, make_prompt, unused_by_evaluation
    from deramos.data.realmusic.freeform import held_out_texts, load_prompt_set, normalised

    avoid = held_out_texts()
    described, unrelated = load_prompt_set()
    assert len(avoid) == len({normalised(p.text) for p in [*described, *unrelated]}) >= 400
    # a drawn text the evaluation uses is replaced, another is kept
    redrawn = unused_by_evaluation(("bass guitar", {"instrument": ("bass",)}),
                                   lambda r: (f"draw {r.integers(10**6)}", {}))
    assert redrawn[0].startswith("draw ")
    assert unused_by_evaluation("a tuba in a lift", lambda r: "x") == "a tuba in a lift"
    rng = np.random.default_rng(3)
    texts = []
    for i in range(3000):   # unguarded, phrasing's own output hits a few of the evaluation's short texts
        asked = random_attributes(rng) if i % 2 else random_arrangement_attributes(rng, tuple(STYLES))
        text, asserts = make_prompt(asked, 1.0, rng)
        texts += [text, *(t for t, _ in counterfactuals(asked, asked, asserts, 4.0, rng, 1.0))]
    assert not {normalised(t) for t in texts} & avoid
    raw = {normalised(phrasing.describe(random_attributes(rng), rng)[0]) for _ in range(20000)}
    assert raw & avoid, "the guard is tested against a generator that does collide"

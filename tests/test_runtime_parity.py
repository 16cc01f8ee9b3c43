"""The runtime computes what the PyTorch reference scorer computes (deramos.training.features.predict)."""
from __future__ import annotations

import numpy as np
import pytest
from runtime_helpers import RATE, WINDOW_SECONDS, music

from deramos.calibration.samples import sample_set
from deramos.runtime import Scorer

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def clips_and_reference(runtime_model):
    """52 rendered clips (40 of 1-6 s, 12 of 8-15 s, i.e. 2-3 windows) with mixed prompts
    (several clips share a prompt), and the reference scores for them."""
    from deramos.training.features import Featurizer, predict

    samples = sample_set(40, RATE, WINDOW_SECONDS, seed=11)
    waves, prompts = list(samples.waves), list(samples.prompts)
    rng = np.random.default_rng(5)
    for i in range(12):
        waves.append(music(float(rng.uniform(8.0, 15.0)), seed=100 + i))
        prompts.append(samples.prompts[i % 5])
    mi, ta = predict(Featurizer(runtime_model), waves, prompts, batch_size=8)
    return waves, prompts, mi, ta


def _scores(scorer, waves, prompts) -> tuple[np.ndarray, np.ndarray]:
    results = scorer.score_batch(waves, prompts, sample_rate=RATE)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    return np.array([r.mi for r in results]), np.array([r.ta for r in results])


def test_fp32_runtime_matches_pytorch_reference(runtime_scorer, clips_and_reference):
    waves, prompts, ref_mi, ref_ta = clips_and_reference
    assert len(waves) >= 50 and sum(len(w) > WINDOW_SECONDS * RATE for w in waves) == 12
    assert np.std(ref_mi) > 0.05 and np.std(ref_ta) > 0.05   # scores differ between clips
    mi, ta = _scores(runtime_scorer, waves, prompts)
    np.testing.assert_allclose(mi, ref_mi, atol=1e-3, rtol=0)
    np.testing.assert_allclose(ta, ref_ta, atol=1e-3, rtol=0)


def test_long_clips_are_length_weighted_window_means(runtime_scorer, clips_and_reference):
    """A 14 s clip: windows of 6 + 6 + 2 s, so the clip score is (6a + 6b + 2c) / 14."""
    waves, prompts, _, _ = clips_and_reference
    clip = music(14.0, seed=7)
    window = int(WINDOW_SECONDS * RATE)
    parts = runtime_scorer.score_batch([clip[:window], clip[window:2 * window], clip[2 * window:]],
                                       prompts[0], sample_rate=RATE)
    whole = runtime_scorer.score(clip, prompts[0], sample_rate=RATE)
    weights = [6.0, 6.0, 2.0]
    assert whole.windows == 3
    assert whole.mi == pytest.approx(np.average([p.mi for p in parts], weights=weights), abs=1e-5)
    assert whole.ta == pytest.approx(np.average([p.ta for p in parts], weights=weights), abs=1e-5)


def test_batch_size_does_not_change_scores(runtime_bundle, clips_and_reference):
    waves, prompts, ref_mi, ref_ta = clips_and_reference
    with Scorer.load(runtime_bundle, backend="onnxruntime-cpu", batch_size=3) as scorer:
        mi, ta = _scores(scorer, waves[:20], prompts[:20])
    np.testing.assert_allclose(mi, ref_mi[:20], atol=1e-3, rtol=0)
    np.testing.assert_allclose(ta, ref_ta[:20], atol=1e-3, rtol=0)


def test_fp16_runtime_is_within_0_05(runtime_bundle, clips_and_reference):
    waves, prompts, ref_mi, ref_ta = clips_and_reference
    with Scorer.load(runtime_bundle, backend="onnxruntime-cpu", precision="fp16") as scorer:
        assert scorer.backend_report.precision == "fp16"
        mi, ta = _scores(scorer, waves, prompts)
    assert np.max(np.abs(mi - ref_mi)) <= 0.05
    assert np.max(np.abs(ta - ref_ta)) <= 0.05

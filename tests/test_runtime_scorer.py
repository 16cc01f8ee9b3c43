"""Scorer behaviour: prompt cache, threads, select(), input kinds, staying free of torch."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest
from runtime_helpers import RATE, music, write_wav

from deramos.runtime import Scorer, ScoringError
from deramos.runtime.backends import OrtBackend
from deramos.runtime.bundle import load_bundle
from deramos.runtime.cuda import DeviceArray, device_array_of

PROMPT = "calm solo piano with soft dynamics"


@pytest.fixture(scope="module")
def candidates() -> list[np.ndarray]:
    """Eight 'generator candidates' of 1.5-4 s."""
    return [music(1.5 + 0.33 * i, seed=40 + i) for i in range(8)]


def fresh_scorer(bundle, **kwargs) -> Scorer:
    loaded = load_bundle(bundle)
    return Scorer(loaded, OrtBackend(loaded, "fp32", "cpu"), **kwargs)


# --- prompt cache ------------------------------------------------------------------------------


def test_one_prompt_for_eight_candidates_is_encoded_once(runtime_bundle, candidates):
    scorer = fresh_scorer(runtime_bundle)
    scores = scorer.score_batch(candidates, PROMPT, sample_rate=RATE)
    assert all(s.ok for s in scores)
    assert scorer.backend.calls["text_encoder"] == 1
    assert scorer.backend.calls["heads"] == 1          # one batch (the audio encoder in sub-batches: below)
    assert scorer.backend.calls["audio_encoder"] == -(-len(candidates) // scorer.audio_batch)
    for candidate in candidates[:3]:             # a sampling loop: one call per candidate
        scorer.score(candidate, PROMPT, sample_rate=RATE)
    assert scorer.backend.calls["text_encoder"] == 1
    scorer.score(candidates[0], "an upbeat rock song", sample_rate=RATE)
    assert scorer.backend.calls["text_encoder"] == 2


def test_prompt_cache_is_bounded_lru(runtime_bundle, candidates):
    scorer = fresh_scorer(runtime_bundle, prompt_cache_size=2)
    for prompt in ("first prompt", "second prompt", "third prompt"):
        scorer.score(candidates[0], prompt, sample_rate=RATE)
    assert len(scorer.prompts) == 2 and scorer.backend.calls["text_encoder"] == 3
    scorer.score(candidates[0], "third prompt", sample_rate=RATE)     # still cached
    assert scorer.backend.calls["text_encoder"] == 3
    scorer.score(candidates[0], "first prompt", sample_rate=RATE)     # evicted: encoded again
    assert scorer.backend.calls["text_encoder"] == 4


def test_cached_prompt_scores_equal_uncached(runtime_bundle, candidates):
    """Encoding each prompt alone and padding per batch: a prompt's score does not depend on
    which other prompts share its batch, nor on whether its encoding came from the cache. TA is
    compared (MI does not read the prompt), on prompts whose TA differ, so a cache that handed
    out another prompt's encoding would fail here."""
    prompts = ["a", "b c d e f", "g h"]
    alone = [fresh_scorer(runtime_bundle).score(c, p, sample_rate=RATE) for c, p in zip(candidates[:3], prompts)]
    same_clip = [fresh_scorer(runtime_bundle).score(candidates[0], p, sample_rate=RATE).ta for p in prompts]
    assert min(abs(a - b) for i, a in enumerate(same_clip) for b in same_clip[i + 1:]) > 1e-3   # TA reads them
    scorer = fresh_scorer(runtime_bundle)
    mixed = scorer.score_batch(candidates[:3], prompts, sample_rate=RATE)            # encoded here
    cached = scorer.score_batch(candidates[:3], prompts, sample_rate=RATE)           # from the cache
    assert scorer.backend.calls["text_encoder"] == 3                                 # once per prompt
    swapped = scorer.score_batch([candidates[0]] * 3, prompts, sample_rate=RATE)     # cache, other clip
    for run in (mixed, cached):
        np.testing.assert_allclose([s.ta for s in run], [s.ta for s in alone], atol=1e-5)
        np.testing.assert_allclose([s.mi for s in run], [s.mi for s in alone], atol=1e-5)
    np.testing.assert_allclose([s.ta for s in swapped], same_clip, atol=1e-5)


# --- threads -----------------------------------------------------------------------------------


def test_shared_scorer_in_eight_threads_matches_single_thread(runtime_scorer, candidates):
    prompts = [PROMPT, "energetic drum and bass", "a sad violin"] * 3
    expected = runtime_scorer.score_batch(candidates, prompts[:8], sample_rate=RATE)
    expected = np.array([(s.mi, s.ta) for s in expected])
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            # Odd workers rotate the items, so threads run different batches at the same time.
            shift = worker if worker % 2 else 0
            order = [(shift + i) % 8 for i in range(8)]
            scores = runtime_scorer.score_batch([candidates[i] for i in order], [prompts[i] for i in order],
                                                sample_rate=RATE)
            values = np.zeros((8, 2))
            for i, score in zip(order, scores):
                values[i] = (score.mi, score.ta)
            results[worker] = values
        except BaseException as error:   # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for worker in range(0, 8, 2):       # the same batches as the single-threaded run
        np.testing.assert_allclose(results[worker], expected, atol=1e-6, rtol=0)
    for worker in range(1, 8, 2):       # other batch mates: equal up to float rounding
        np.testing.assert_allclose(results[worker], expected, atol=1e-5, rtol=0)


# --- select ------------------------------------------------------------------------------------


def test_select_returns_k_best_by_weighted_score(runtime_scorer, candidates):
    items = [*candidates[:5], np.zeros(10, np.float32), candidates[5]]    # item 5 is too short
    weights = (0.7, 0.3)
    best = runtime_scorer.select(items, PROMPT, sample_rate=RATE, k=3, weights=weights)
    scores = runtime_scorer.score_batch(items, PROMPT, sample_rate=RATE)
    manual = {i: 0.7 * s.mi + 0.3 * s.ta for i, s in enumerate(scores) if s.ok}
    assert 5 not in manual
    # the k best up to rounding: select() scores its own batch, so near-equal candidates may swap
    assert len(best.indices) == 3 and set(best.indices) <= set(manual)
    left_out = [manual[i] for i in manual if i not in best.indices]
    assert min(manual[i] for i in best.indices) >= max(left_out) - 1e-5
    assert best.values == pytest.approx([manual[i] for i in best.indices], abs=1e-5)
    assert best.values == sorted(best.values, reverse=True)
    assert [s.mi for s in best.scores] == pytest.approx([scores[i].mi for i in best.indices], abs=1e-5)
    assert not best.all_scores[5].ok


def test_select_k_larger_than_valid_items_and_bad_arguments(runtime_scorer, candidates):
    best = runtime_scorer.select([candidates[0], "missing.wav"], PROMPT, sample_rate=RATE, k=5)
    assert best.indices == [0]
    mi_only = runtime_scorer.select(candidates[:4], PROMPT, sample_rate=RATE, k=1, weights=(1, 0))
    scores = runtime_scorer.score_batch(candidates[:4], PROMPT, sample_rate=RATE)
    (chosen,) = mi_only.indices
    assert scores[chosen].mi >= max(s.mi for s in scores) - 1e-5      # the best MI, up to rounding
    with pytest.raises(ValueError, match="k must be a positive integer"):
        runtime_scorer.select(candidates[:2], PROMPT, sample_rate=RATE, k=0)
    with pytest.raises(ValueError, match="weights must be non-negative"):
        runtime_scorer.select(candidates[:2], PROMPT, sample_rate=RATE, weights=(-1, 2))


# --- input kinds -------------------------------------------------------------------------------


def test_paths_arrays_and_2d_batches_agree(runtime_scorer, candidates, tmp_path):
    path = write_wav(tmp_path / "c.wav", candidates[2], subtype="FLOAT")
    from_path = runtime_scorer.score(path, PROMPT)
    from_str = runtime_scorer.score(str(path), PROMPT)
    from_array = runtime_scorer.score(candidates[2], PROMPT, sample_rate=RATE)
    assert from_path.mi == from_str.mi == pytest.approx(from_array.mi, abs=1e-6)
    assert from_path.name == str(path) and from_array.name == "item 0"
    stacked = np.stack([candidates[0][:RATE], candidates[1][:RATE]])          # [N, samples]
    rows = runtime_scorer.score_batch(stacked, PROMPT, sample_rate=RATE)
    assert len(rows) == 2
    assert rows[1].mi == pytest.approx(runtime_scorer.score(candidates[1][:RATE], PROMPT, sample_rate=RATE).mi, abs=1e-6)


def test_other_sample_rates_are_resampled(runtime_scorer, candidates):
    from deramos.runtime.audio import resample

    at_44k = resample(candidates[0], RATE, 44100)
    direct = runtime_scorer.score(candidates[0], PROMPT, sample_rate=RATE)
    resampled = runtime_scorer.score(at_44k, PROMPT, sample_rate=44100)
    assert resampled.mi == pytest.approx(direct.mi, abs=0.02)
    assert resampled.seconds == pytest.approx(direct.seconds, abs=1e-3)


def test_prompt_count_must_match(runtime_scorer, candidates):
    with pytest.raises(ValueError, match="got 2 prompts for 3 items"):
        runtime_scorer.score_batch(candidates[:3], ["a", "b"], sample_rate=RATE)


def test_array_without_sample_rate_is_an_item_error(runtime_scorer, candidates):
    (score,) = runtime_scorer.score_batch([candidates[0]], PROMPT)
    assert score.error == "item 0: sample_rate is required for in-memory audio"
    with pytest.raises(ScoringError, match="sample_rate is required"):
        runtime_scorer.score(candidates[0], PROMPT)


def test_cpu_torch_tensors_are_read_through_dlpack(runtime_scorer, candidates):
    torch = pytest.importorskip("torch")
    tensor = torch.from_numpy(candidates[1].copy())
    assert runtime_scorer.score(tensor, PROMPT, sample_rate=RATE).mi == pytest.approx(
        runtime_scorer.score(candidates[1], PROMPT, sample_rate=RATE).mi, abs=1e-6)
    needs_grad = tensor.clone().requires_grad_(True)
    (score,) = runtime_scorer.score_batch([needs_grad], PROMPT, sample_rate=RATE)
    assert score.error.startswith("item 0: cannot read the tensor") and "detach()" in score.error


class FakeCudaTensor:
    """Carries the two protocols a CUDA tensor has; nothing here touches a GPU."""

    def __init__(self, shape=(16000,), typestr="<f4", strides=None):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (0xDEAD000, False),
                                         "strides": strides, "version": 3}

    def __dlpack__(self, stream=None):
        raise AssertionError("must not be exported to the host")

    def __dlpack_device__(self):
        return (2, 1)    # kDLCUDA, device 1


def test_cuda_tensor_on_a_cpu_backend_is_a_clear_item_error(runtime_scorer, candidates):
    scores = runtime_scorer.score_batch([FakeCudaTensor(), candidates[0]], PROMPT, sample_rate=RATE)
    assert scores[0].error.startswith("item 0: a CUDA tensor needs a GPU backend (this scorer runs onnxruntime-cpu)")
    assert "tensor.cpu()" in scores[0].error
    assert scores[1].ok


def test_cuda_array_interface_is_read_in_place():
    array = device_array_of(FakeCudaTensor(shape=(1, 48000)))
    assert array == DeviceArray(0xDEAD000, (48000,), np.dtype(np.float32), 1)
    with pytest.raises(ValueError, match="must be float32"):
        device_array_of(FakeCudaTensor(typestr="<f2"))
    with pytest.raises(ValueError, match="must be mono"):
        device_array_of(FakeCudaTensor(shape=(2, 48000)))
    with pytest.raises(ValueError, match="contiguous"):
        device_array_of(FakeCudaTensor(shape=(48000,), strides=(8,)))


# --- light import -------------------------------------------------------------------------------

NO_TORCH_SCRIPT = """
import json, sys
import deramos.runtime
light = sorted(m for m in ("numpy", "onnxruntime", "torch", "transformers") if m in sys.modules)
from deramos.runtime import Scorer
scorer = Scorer.load(sys.argv[1])
score = scorer.score(sys.argv[2], "calm solo piano")
print(json.dumps({"after_import": light, "mi": score.mi, "backend": scorer.backend_report.chosen,
                  "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}))
"""


def test_runtime_imports_neither_torch_nor_transformers(runtime_bundle, candidates, tmp_path):
    clip = write_wav(tmp_path / "clip.wav", candidates[0])
    done = subprocess.run([sys.executable, "-c", NO_TORCH_SCRIPT, str(runtime_bundle), str(clip)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["after_import"] == []                   # `import deramos.runtime` is cheap
    assert report["torch"] is False and report["transformers"] is False
    assert 1.0 <= report["mi"] <= 5.0 and report["backend"] == "onnxruntime-cpu"


# --- audio sub-batches ---------------------------------------------------------------------------


def test_the_audio_encoder_runs_in_sub_batches_with_the_same_scores(runtime_bundle, candidates):
    """On a host backend the audio encoder runs CPU_AUDIO_BATCH windows at a time (its memory
    grows with the batch, its CPU speed does not); clips of different lengths, split across
    sub-batches and padded back to one frame count, score as one batch of all of them does."""
    from deramos.runtime.scorer import CPU_AUDIO_BATCH

    prompts = [PROMPT, "energetic drum and bass", "a sad violin"] * 3
    whole = fresh_scorer(runtime_bundle, audio_batch=8)
    split = fresh_scorer(runtime_bundle)
    assert (whole.audio_batch, split.audio_batch, split.batch_size) == (8, CPU_AUDIO_BATCH, 8) and CPU_AUDIO_BATCH < 8
    one = whole.score_batch(candidates, prompts[:8], sample_rate=RATE)
    many = split.score_batch(candidates, prompts[:8], sample_rate=RATE)
    assert whole.backend.calls["audio_encoder"] == 1 and split.backend.calls["audio_encoder"] == 8 // CPU_AUDIO_BATCH
    assert whole.backend.calls["heads"] == split.backend.calls["heads"] == 1
    np.testing.assert_allclose([s.mi for s in many], [s.mi for s in one], atol=1e-5)
    np.testing.assert_allclose([s.ta for s in many], [s.ta for s in one], atol=1e-5)
    assert len({round(s.mi, 3) for s in one}) > 1          # the clips differ, so a mix-up would show
    with pytest.raises(ValueError, match="audio_batch must be >= 1, got 0"):
        fresh_scorer(runtime_bundle, audio_batch=0)

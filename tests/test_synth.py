"""Tests for deramos.data.synth: the MusicEval-shaped synthetic corpus."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from deramos.data.synth import (
    FAMILIES,
    PROMPT_KINDS,
    VOCABULARY,
    ClipAttributes,
    apply_degradations,
    attribute_matches,
    change_attribute,
    generate_corpus,
    latent_mi,
    latent_ta,
    prompt_for,
    render_clip,
)
from deramos.data.synth.cli import main as cli_main
from deramos.data.synth.degrade import EFFECTS
from deramos.data.synth.music import PEAK_LEVEL

WAV_NAME = re.compile(r"^audiomos2025-track1-(S\d{3})_(P\d{3})\.wav$")
SPLITS = ("train", "dev", "test")


def _read_lists(root: Path) -> dict[str, list[tuple[str, float, float]]]:
    lists = {}
    for split in SPLITS:
        rows = []
        for line in (root / "sets" / f"{split}_mos_list.txt").read_text().splitlines():
            wav, mi, ta = line.split(",")
            rows.append((wav, float(mi), float(ta)))
        lists[split] = rows
    return lists


def _read_meta(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "synth_meta.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "corpus"
    summary = generate_corpus(root, clips=40, systems=4, seed=3, min_seconds=2.0, max_seconds=3.0, progress=False)
    return root, summary


# --------------------------------------------------------------------------- layout


def test_wav_files_are_16k_mono_pcm16_and_match_the_lists(corpus):
    root, summary = corpus
    listed = [wav for rows in _read_lists(root).values() for wav, _, _ in rows]
    assert len(listed) == len(set(listed)) == 40 == summary["clips"]
    assert sorted(p.name for p in (root / "wav").iterdir()) == sorted(listed)
    for name in listed:
        assert WAV_NAME.match(name), name
        info = sf.info(root / "wav" / name)
        assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
        assert 2.0 <= info.duration <= 3.0 + 1e-3
    audio, rate = sf.read(root / "wav" / listed[0], dtype="int16")
    assert audio.dtype == np.int16 and audio.ndim == 1 and rate == 16000


def test_mos_lists_parse_and_split_every_system(corpus):
    root, _ = corpus
    lists = _read_lists(root)
    systems = {f"S{i:03d}" for i in range(1, 5)}
    for split, rows in lists.items():
        assert {WAV_NAME.match(wav).group(1) for wav, _, _ in rows} == systems, split
        for _, mi, ta in rows:
            for score in (mi, ta):
                assert 1.0 <= score <= 5.0
                assert abs(score * 5 - round(score * 5)) < 1e-9  # mean of five integers
    sizes = {split: len(rows) for split, rows in lists.items()}
    assert sizes == {"train": 28, "dev": 6, "test": 6}
    line = (root / "sets" / "train_mos_list.txt").read_text().splitlines()[0]
    assert re.fullmatch(r"audiomos2025-track1-S\d{3}_P\d{3}\.wav,\d\.\d,\d\.\d", line)


def test_system_csv_is_the_mean_of_listed_clip_scores(corpus):
    root, _ = corpus
    scores: dict[str, list[tuple[float, float]]] = {}
    for rows in _read_lists(root).values():
        for wav, mi, ta in rows:
            scores.setdefault(WAV_NAME.match(wav).group(1), []).append((mi, ta))
    lines = (root / "system_mos" / "system_mos_phase1.csv").read_text().splitlines()
    assert lines[0] == "sysID,MI,TA"
    table = {sid: (float(mi), float(ta)) for sid, mi, ta in (line.split(",") for line in lines[1:])}
    assert set(table) == set(scores)
    for sid, pairs in scores.items():
        assert table[sid] == pytest.approx(tuple(np.mean(pairs, axis=0)), abs=1e-6)


def test_prompt_info_covers_shared_prompts_and_demo_entries_win(corpus):
    root, summary = corpus
    prompt_info = dict(line.split("\t") for line in (root / "prompt_info.txt").read_text().splitlines())
    assert all(re.fullmatch(r"P\d{3}", pid) and text.strip() for pid, text in prompt_info.items())
    demo = dict(line.split("\t") for line in (root / "demo_prompt_info.txt").read_text().splitlines())
    assert demo, "a 4-system corpus has one demo-prompt system"
    demo_systems = {WAV_NAME.match(wav).group(1) for wav in demo}
    assert 1 <= len(demo_systems) <= 2 and sorted(demo_systems) == summary["demo_systems"]

    for record in _read_meta(root):
        sid, pid = WAV_NAME.match(record["wav"]).groups()
        if sid in demo_systems:
            assert record["prompt_source"] == "demo_prompt_info"
            assert demo[record["wav"]] == record["prompt"]
            assert prompt_info.get(pid) != record["prompt"]  # absent or different: the demo entry wins
        else:
            assert record["wav"] not in demo
            assert prompt_info[pid] == record["prompt"]
    shared = [WAV_NAME.match(r["wav"]).group(2) for r in _read_meta(root) if r["prompt_source"] == "prompt_info"]
    assert len(set(shared)) < len(shared), "several systems render the same prompt"


def test_meta_records_everything_behind_a_score(corpus):
    root, _ = corpus
    listed = {wav: (mi, ta) for rows in _read_lists(root).values() for wav, mi, ta in rows}
    records = _read_meta(root)
    assert len(records) == len(listed)
    for record in records:
        for key in ("mi_votes", "ta_votes"):
            votes = record[key]
            assert len(votes) == 5 and all(isinstance(v, int) and 1 <= v <= 5 for v in votes)
        assert (sum(record["mi_votes"]) / 5, sum(record["ta_votes"]) / 5) == pytest.approx(listed[record["wav"]])
        assert set(record["degradations"]) <= set(FAMILIES)
        assert all(0.0 <= s <= 1.0 for s in record["degradations"].values())
        assert record["matches"] == attribute_matches(
            ClipAttributes.from_dict(record["prompt_attributes"]), ClipAttributes.from_dict(record["rendered_attributes"])
        )
        assert 1.0 <= record["latent_mi"] <= 5.0 and 1.0 <= record["latent_ta"] <= 5.0


# --------------------------------------------------------------------------- determinism


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    args = dict(clips=9, systems=3, min_seconds=1.0, max_seconds=1.5, progress=False)
    first = _tree_bytes(Path(generate_corpus(tmp_path / "a", seed=5, **args)["out_dir"]))
    second = _tree_bytes(Path(generate_corpus(tmp_path / "b", seed=5, **args)["out_dir"]))
    other = _tree_bytes(Path(generate_corpus(tmp_path / "c", seed=6, **args)["out_dir"]))
    assert len(first) == 9 + 7  # wavs + 3 lists, 2 prompt files, csv, meta
    assert first == second
    assert first["synth_meta.jsonl"] != other["synth_meta.jsonl"]
    shared_wavs = [name for name in first if name.startswith("wav/") and name in other]
    assert all(first[name] != other[name] for name in shared_wavs)


def test_render_clip_is_seeded_float32_of_the_requested_length():
    attributes = ClipAttributes(instrument="guitar", genre="swing", tempo_bpm=120.0)
    audio = render_clip(attributes, 7, sample_rate=16000, seconds=1.5)
    assert audio.dtype == np.float32 and audio.shape == (24000,)
    assert np.array_equal(audio, render_clip(attributes, np.random.default_rng(7), seconds=1.5))
    assert not np.array_equal(audio, render_clip(attributes, 8, seconds=1.5))


# --------------------------------------------------------------------------- scores


@pytest.mark.parametrize("family", FAMILIES)
def test_latent_mi_falls_monotonically_with_each_family(family):
    curve = [latent_mi({family: s}) for s in np.linspace(0.0, 1.0, 6)]
    assert all(a > b for a, b in zip(curve, curve[1:])), curve
    assert curve[0] - curve[-1] > 1.0


def test_degradations_lower_mi_in_the_corpus(corpus):
    records = _read_meta(corpus[0])
    load = np.array([sum(r["degradations"].values()) for r in records])
    mi = np.array([r["mi"] for r in records])
    clean, heavy = mi[load < 0.2], mi[load > 1.0]
    assert clean.size >= 5 and heavy.size >= 5
    assert clean.mean() - heavy.mean() > 1.0
    assert np.corrcoef(load, [r["latent_mi"] for r in records])[0, 1] < -0.7


def _log_spectral_distance(a: np.ndarray, b: np.ndarray, frame: int = 400) -> float:
    def spectrum(x):
        frames = x[: x.size // frame * frame].reshape(-1, frame) * np.hanning(frame)
        return np.abs(np.fft.rfft(frames, axis=1)) + 1e-4

    return float(np.sqrt(np.mean((20 * np.log10(spectrum(a) / spectrum(b))) ** 2)))


@pytest.mark.parametrize("family", list(EFFECTS))
def test_each_degradation_grows_with_severity(family):
    clean = render_clip(ClipAttributes(instrument="organ", genre="rock"), 2, seconds=2.0)
    distances = [
        np.mean([_log_spectral_distance(clean, apply_degradations(clean, {family: s}, np.random.default_rng(k))) for k in range(2)])
        for s in (0.1, 0.5, 0.9)
    ]
    assert distances[0] < distances[1] < distances[2], distances
    assert np.array_equal(apply_degradations(clean, {family: 0.0}, np.random.default_rng(0)), clean)


def test_mismatches_lower_ta():
    all_matched = dict.fromkeys(PROMPT_KINDS, True)
    ta_values = []
    for wrong in range(len(PROMPT_KINDS) + 1):
        matches = {kind: i >= wrong for i, kind in enumerate(PROMPT_KINDS)}
        ta_values.append(latent_ta(matches))
    assert all(a > b for a, b in zip(ta_values, ta_values[1:])), ta_values
    assert latent_ta(all_matched) - latent_ta(dict.fromkeys(PROMPT_KINDS, False)) > 3.0
    assert latent_mi({}) == latent_mi({}, 0.0)  # MI does not look at matches at all


def test_mismatched_clips_score_lower_ta_in_the_corpus(corpus):
    records = _read_meta(corpus[0])
    wrong = np.array([sum(not ok for ok in r["matches"].values()) for r in records])
    ta = np.array([r["ta"] for r in records])
    assert (wrong == 0).sum() >= 5 and (wrong >= 2).sum() >= 3
    assert ta[wrong == 0].mean() - ta[wrong >= 2].mean() > 1.0


def test_change_attribute_changes_only_that_kind():
    base = ClipAttributes(instrument="flute", tempo_bpm=70.0, mode="minor", genre="waltz", dynamics="soft")
    rng = np.random.default_rng(0)
    for kind in PROMPT_KINDS:
        changed = change_attribute(base, kind, rng)
        matches = attribute_matches(base, changed)
        assert matches == {k: k != kind for k in PROMPT_KINDS}, kind


def test_systems_have_distinct_means(corpus):
    root, summary = corpus
    lines = (root / "system_mos" / "system_mos_phase1.csv").read_text().splitlines()[1:]
    means = np.array([[float(v) for v in line.split(",")[1:]] for line in lines])
    assert summary["system_mi_range"] == pytest.approx(np.ptp(means[:, 0]))
    assert np.ptp(means[:, 0]) > 1.0 and np.ptp(means[:, 1]) > 0.8
    assert len({tuple(row) for row in means}) == len(means)


# --------------------------------------------------------------------------- audio


@pytest.mark.parametrize(
    "attributes",
    [
        ClipAttributes(instrument="piano", genre="rock", dynamics="loud", tempo_bpm=140.0),
        ClipAttributes(instrument="guitar", genre="waltz", dynamics="soft", mode="minor", tempo_bpm=75.0),
        ClipAttributes(instrument="pad", genre="ambient", dynamics="crescendo", accompaniment="organ"),
        ClipAttributes(instrument="flute", genre="swing", dynamics="loud", accompaniment="guitar"),
        ClipAttributes(instrument="synth", genre="dance", dynamics="soft", tempo_bpm=128.0),
    ],
    ids=lambda a: f"{a.instrument}-{a.genre}",
)
def test_undegraded_audio_is_audible_and_not_clipped(attributes):
    audio = render_clip(attributes, 1, seconds=3.0)
    peak = np.abs(audio).max()
    assert peak == pytest.approx(PEAK_LEVEL[attributes.dynamics], rel=1e-3)
    assert np.sqrt(np.mean(audio**2)) > 0.1 * peak  # not silent, not a lone click
    assert np.mean(np.abs(audio) > 0.99 * peak) < 1e-3  # no flat tops
    clipped = apply_degradations(audio, {"clipping": 0.6}, np.random.default_rng(0))
    assert np.mean(np.abs(clipped) > 0.99 * np.abs(clipped).max()) > 0.01  # the same check sees real clipping


def test_soft_clips_stay_quieter_than_loud_ones():
    loud = render_clip(ClipAttributes(dynamics="loud"), 4, seconds=2.0)
    soft = render_clip(ClipAttributes(dynamics="soft"), 4, seconds=2.0)
    assert np.sqrt(np.mean(soft**2)) < 0.6 * np.sqrt(np.mean(loud**2))


def _tempo_estimate(audio: np.ndarray, sample_rate: int = 16000, hop: int = 160) -> float:
    """Tempo from the autocorrelation peak of a spectral-flux onset envelope (50-200 BPM)."""
    frames = audio[: audio.size // hop * hop].reshape(-1, hop)
    spectrum = np.log1p(100 * np.abs(np.fft.rfft(frames * np.hanning(hop), axis=1)))
    flux = np.maximum(np.diff(spectrum, axis=0), 0.0).sum(axis=1)
    flux -= flux.mean()
    autocorrelation = np.correlate(flux, flux, "full")[flux.size - 1 :]
    lags = np.arange(autocorrelation.size) * hop / sample_rate
    window = (lags > 60 / 200) & (lags < 60 / 50)
    return 60.0 / lags[window][np.argmax(autocorrelation[window])]


@pytest.mark.parametrize("genre", ["waltz", "rock", "dance"])
def test_rendered_tempo_is_detectable(genre):
    estimates = {bpm: _tempo_estimate(render_clip(ClipAttributes(genre=genre, tempo_bpm=bpm), 5, seconds=6.0)) for bpm in (70.0, 150.0)}
    for bpm, estimate in estimates.items():  # beat or eighth-note level
        assert min(abs(estimate / (bpm * m) - 1) for m in (0.5, 1.0, 2.0)) < 0.05, (bpm, estimate)
    if genre == "waltz":  # a waltz has no eighth-note hats to confuse the level
        assert estimates[70.0] == pytest.approx(70.0, rel=0.05) and estimates[150.0] == pytest.approx(150.0, rel=0.05)


# --------------------------------------------------------------------------- prompts


def test_prompts_name_at_least_five_attribute_kinds(corpus):
    records = _read_meta(corpus[0])
    assert len(PROMPT_KINDS) >= 5
    for record in records:
        attributes = ClipAttributes.from_dict(record["prompt_attributes"])
        text = record["prompt"].lower()
        for kind in PROMPT_KINDS:
            phrases = VOCABULARY[kind][attributes.kind_value(kind)]
            assert any(p.lower() in text for p in phrases), (kind, record["prompt"])
    openings = {r["prompt"].split()[0] for r in records}
    assert len(openings) >= 5, "sentence templates vary"


def test_prompt_for_is_stable_and_reflects_attributes():
    slow_sad = ClipAttributes(instrument="piano", tempo_bpm=66.0, mode="minor", genre="ambient", dynamics="soft")
    assert prompt_for(slow_sad) == prompt_for(slow_sad)
    text = prompt_for(slow_sad).lower()
    assert "piano" in text and any(w in text for w in VOCABULARY["mood"]["minor"])
    flipped = change_attribute(slow_sad, "mood", 0)
    assert any(w in prompt_for(flipped).lower() for w in VOCABULARY["mood"]["major"])


# --------------------------------------------------------------------------- CLI


def test_cli_writes_a_corpus_and_prints_a_summary(tmp_path):
    runner = CliRunner()
    help_text = runner.invoke(cli_main, ["--help"]).output
    assert "--clips" in help_text and "--seed" in help_text and "MusicEval" in help_text
    result = runner.invoke(cli_main, ["--out", str(tmp_path), "--clips", "6", "--systems", "2", "--min-seconds", "1", "--max-seconds", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "wrote 6 clips (train 2, dev 2, test 2)" in result.output and "mean MI" in result.output
    assert len(list((tmp_path / "wav").glob("*.wav"))) == 6


def test_too_few_clips_per_system_is_refused(tmp_path):
    with pytest.raises(ValueError, match="3 clips per system"):
        generate_corpus(tmp_path / "api", clips=5, systems=2, progress=False)
    out = tmp_path / "cli"
    result = CliRunner().invoke(cli_main, ["--out", str(out), "--clips", "24"])      # 10 systems by default
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == ("error: Invalid value for --clips: 24 is too few for 10 systems: "
                                              "the minimum is 30 (3 per system); give more clips or fewer --systems")
    assert not out.exists()                                      # nothing written before the check
    help_text = " ".join(CliRunner().invoke(cli_main, ["--help"]).output.split())
    assert "at least 3 per system (30 for the default 10 systems)" in help_text


# --------------------------------------------------------------------------- counterfactual prompts


def test_counterfactual_changes_one_or_two_kinds_and_moves_ta_by_their_weight():
    from deramos.data.synth.corpus import TA_WEIGHTS
    from deramos.data.synth.counterfactual import counterfactual

    asked = ClipAttributes(instrument="flute", tempo_bpm=70.0, mode="minor", genre="waltz", dynamics="soft")
    rng = np.random.default_rng(5)
    sizes = set()
    for _ in range(40):
        other, prompt, ta = counterfactual(asked, asked, 4.4, rng)     # the clip honours its own prompt
        changed = [kind for kind, same in attribute_matches(asked, other).items() if not same]
        sizes.add(len(changed))
        assert 1 <= len(changed) <= 2
        assert ta == pytest.approx(max(1.0, 4.4 - 3.7 * sum(TA_WEIGHTS[k] for k in changed)), abs=1e-3)
        for kind in ("instrument", "genre"):
            phrases = VOCABULARY[kind][other.kind_value(kind)]
            assert any(p.lower() in prompt.lower() for p in phrases), (kind, prompt)
    assert sizes == {1, 2}


def test_counterfactual_can_raise_ta_when_it_asks_for_what_was_rendered():
    from deramos.data.synth.counterfactual import counterfactual

    asked = ClipAttributes(instrument="flute", genre="waltz")
    heard = ClipAttributes(instrument="organ", genre="waltz")      # the system got the instrument wrong
    rng = np.random.default_rng(0)
    raised = [ta for other, _, ta in (counterfactual(asked, heard, 3.2, rng) for _ in range(300))
              if other.instrument == "organ" and attribute_matches(other, heard) == dict.fromkeys(PROMPT_KINDS, True)]
    assert raised and all(t == pytest.approx(3.2 + 3.7 * 0.30, abs=1e-3) for t in raised)


def test_load_counterfactuals_covers_every_clip_deterministically(corpus):
    from deramos.data.synth.counterfactual import load_counterfactuals

    root, _ = corpus
    table = load_counterfactuals(root, 3, seed=7)
    records = _read_meta(root)
    assert set(table) == {r["wav"] for r in records}
    assert all(len(pairs) == 3 for pairs in table.values())
    own = {r["wav"]: r["prompt"] for r in records}
    assert all(p != own[wav] and 1.0 <= ta <= 5.0 for wav, pairs in table.items() for p, ta in pairs)
    assert load_counterfactuals(root, 3, seed=7) == table
    assert load_counterfactuals(root, 3, seed=8) != table


def test_load_counterfactuals_needs_a_synthetic_corpus(tmp_path):
    from deramos.data.synth.counterfactual import load_counterfactuals

    with pytest.raises(FileNotFoundError, match=r"synth_meta.jsonl: not found; counterfactual prompts need a corpus made by deramos-synth"):
        load_counterfactuals(tmp_path, 2, seed=0)

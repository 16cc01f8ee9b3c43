"""deramos-realmusic: attributes and prompts, counterfactual prompts, and a real (tiny) corpus
rendered from music21 scores with fluidsynth (skipped where those are not installed)."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from deramos.data.musiceval import read_split
from deramos.data.realmusic.attributes import (
    ENSEMBLES,
    FAMILIES,
    PROMPT_KINDS,
    RealAttributes,
    attribute_matches,
    change_attribute,
    counterfactual,
    latent_ta,
    mismatched,
    prompt_for,
)
from deramos.data.realmusic.render import SOUNDFONT_DIRS, RenderError, find_soundfont
from deramos.data.synth.counterfactual import load_counterfactuals
from deramos.data.synth.music import VOCABULARY

ASKED = RealAttributes(instrument="strings", ensemble="solo", tempo_bpm=70.0, mode="minor", dynamics="soft")


def test_prompt_names_every_kind_and_is_deterministic():
    text = prompt_for(ASKED)
    assert text == prompt_for(ASKED)
    phrases = [e.format(i=i) for e in ENSEMBLES["solo"][0] for i in FAMILIES["strings"][0]]
    assert any(p.lower() in text.lower() for p in phrases)
    assert any(w in text.lower() for w in VOCABULARY["tempo"]["slow"])
    assert any(w in text.lower() for w in VOCABULARY["mood"]["minor"])
    assert any(w in text.lower() for w in VOCABULARY["dynamics"]["soft"])


def test_change_attribute_changes_exactly_one_kind():
    rng = np.random.default_rng(0)
    for kind in PROMPT_KINDS:
        changed = change_attribute(ASKED, kind, rng)
        matches = {k: changed.kind_value(k) == ASKED.kind_value(k) for k in PROMPT_KINDS}
        assert [k for k, ok in matches.items() if not ok] == [kind]
    with pytest.raises(ValueError, match="unknown attribute kind 'timbre'"):
        change_attribute(ASKED, "timbre", rng)


def test_mismatched_gets_two_or_three_kinds_wrong_or_the_ones_asked():
    rng = np.random.default_rng(1)
    for _ in range(50):
        wrong = [k for k, ok in attribute_matches(mismatched(ASKED, rng), ASKED).items() if not ok]
        assert 2 <= len(wrong) <= 3
    chosen = mismatched(ASKED, rng, ("instrument", "mood"))
    assert [k for k, ok in attribute_matches(chosen, ASKED).items() if not ok] == ["instrument", "mood"]


def test_latent_ta_and_counterfactual_scores():
    assert latent_ta(attribute_matches(ASKED, ASKED)) == pytest.approx(4.7)
    assert latent_ta({k: False for k in PROMPT_KINDS}) == 1.0
    rng = np.random.default_rng(1)
    for _ in range(20):
        text, ta = counterfactual(ASKED, ASKED, 4.4, rng)
        assert 1.0 <= ta < 4.4 and text != prompt_for(ASKED)


def test_precomputed_counterfactuals_are_what_training_reads(tmp_path):
    record = {"wav": "a-S001_P001.wav", "counterfactuals": [["Loud brass.", 2.1], ["Fast choir.", 1.5], ["x", 3.0]]}
    (tmp_path / "synth_meta.jsonl").write_text(json.dumps(record) + "\n")
    assert load_counterfactuals(tmp_path, 2, seed=0) == {"a-S001_P001.wav": [("Loud brass.", 2.1), ("Fast choir.", 1.5)]}


def test_missing_soundfont_is_one_clear_line():
    with pytest.raises(RenderError, match=r"^soundfont Nope.sf2 not found in .* \(apt-get install \?\)$"):
        find_soundfont("Nope.sf2")


def _renderable() -> bool:
    return (shutil.which("fluidsynth") is not None and importlib.util.find_spec("music21") is not None
            and any((d / "FluidR3_GM.sf2").is_file() for d in SOUNDFONT_DIRS))


@pytest.mark.slow
@pytest.mark.skipif(not _renderable(), reason="needs fluidsynth, fluid-soundfont-gm and music21 (make realmusic)")
def test_tiny_corpus_in_musiceval_layout(tmp_path):
    from deramos.data.realmusic.corpus import build_corpus

    summary = build_corpus(tmp_path, "train", systems=2, clips_per_system=3, recording_share=0.0, pieces=3,
                           seconds=4.0, seed=5, workers=1, progress=False)
    assert summary["clips"] == 6 and summary["problems"] == []
    assert summary["soundfonts"] == {"FluidR3_GM.sf2": {"package": "fluid-soundfont-gm", "licence": "MIT"}}
    assert json.loads((tmp_path / "sources.json").read_text())["score_licence"].startswith("BSD-3-Clause")
    clips = [c for split in ("train", "dev", "test") for c in read_split(tmp_path, split).clips]
    assert len(clips) == 6
    records = {json.loads(line)["wav"]: json.loads(line) for line in (tmp_path / "synth_meta.jsonl").read_text().splitlines()}
    for clip in clips:
        record = records[clip.path.name]
        wave, rate = sf.read(clip.path, dtype="float32")
        assert rate == 16000 and len(wave) == 4 * 16000 and np.abs(wave).max() > 0.01
        heard = RealAttributes.from_dict(record["rendered_attributes"])
        assert set(record["source"]["programs"]) <= set(FAMILIES[heard.instrument][1])
        asked = RealAttributes.from_dict(record["prompt_attributes"])
        assert any(p in clip.prompt for p in FAMILIES[asked.instrument][0])
        assert len(record["counterfactuals"]) == 8 and clip.mi == record["mi"] and clip.ta == record["ta"]
    solo = [r for r in records.values() if r["rendered_attributes"]["ensemble"] == "solo"]
    assert all(len(r["source"]["parts"]) == 1 for r in solo)


@pytest.mark.skipif(not _renderable(), reason="needs fluidsynth, fluid-soundfont-gm and music21 (make realmusic)")
def test_people_prompts_are_rated_on_what_they_assert(tmp_path):
    from deramos.data.realmusic.attributes import asserted_ta, assertion_matches, check_assertion
    from deramos.data.realmusic.corpus import CF_MIX, build_corpus

    build_corpus(tmp_path, "train", systems=2, clips_per_system=4, recording_share=0.0, pieces=8, seconds=4.0,
                 seed=6, workers=1, progress=False, people_share=1.0)
    records = [json.loads(line) for line in (tmp_path / "synth_meta.jsonl").read_text().splitlines()]
    assert len(records) == 8
    for record in records:
        asserts = check_assertion(record["prompt_asserts"])
        heard = RealAttributes.from_dict(record["rendered_attributes"])
        assert record["matches"] == assertion_matches(asserts, heard)
        # raters' noise (sd 0.2 per clip, 0.35-0.6 per vote) around the latent TA of what is asserted
        assert abs(record["ta"] - asserted_ta(record["matches"])) < 1.6
        kinds = {"tempo" if k == "tempo_bpm" else k for k in asserts}
        assert 1 <= len(kinds) <= 4          # people name a few kinds, never all five template kinds
        texts = [text for text, _ in record["counterfactuals"]]
        assert len(texts) == 8 and len(set(texts)) >= 6
        assert sum(ta == 1.0 and not any(w in text.lower() for w in ("piano", "strings", "organ"))
                   for text, ta in record["counterfactuals"]) >= CF_MIX["unrelated"]   # about no music at all
        assert all(1.0 <= ta <= 5.0 for _, ta in record["counterfactuals"])


# A process that sees an install without music21 (whether or not this venv has it).
NO_MUSIC21 = '''
import sys
class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "music21":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _NotInstalled())
'''


@pytest.mark.parametrize("fluidsynth", [False, True])
def test_without_music21_it_says_what_to_install_in_one_line(tmp_path, fluidsynth):
    """deramos-realmusic without music21 (and without fluidsynth on PATH, or with a stand-in):
    one line naming the pip extra (and the apt packages when fluidsynth is missing), exit 2,
    no traceback and no output folder."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    site, tools = tmp_path / "site", tmp_path / "bin"
    site.mkdir()
    tools.mkdir()
    (site / "sitecustomize.py").write_text(NO_MUSIC21)
    if fluidsynth:
        (tools / "fluidsynth").write_text("#!/bin/sh\nexit 0\n")
        (tools / "fluidsynth").chmod(0o755)
    env = dict(os.environ, PYTHONPATH=str(site), PATH=str(tools))
    out = tmp_path / "corpus"
    done = subprocess.run([str(Path(sys.executable).parent / "deramos-realmusic"), "corpus", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    pip = "music21 (pip install 'deramos[realmusic]')"
    apt = "fluidsynth with General-MIDI soundfonts (apt-get install fluidsynth fluid-soundfont-gm timgm6mb-soundfont)"
    needs = pip if fluidsynth else f"{pip} and {apt}"
    assert done.stderr == f"error: deramos-realmusic needs {needs}; nothing was written\n"
    assert not out.exists()


@pytest.mark.skipif(not _renderable(), reason="needs fluidsynth, fluid-soundfont-gm and music21 (make realmusic)")
def test_the_share_of_people_prompts_leaves_the_audio_alone(tmp_path):
    """Prompt words have their own random stream once people's prompts are on: corpora that
    differ only in --people-prompts hold the same clips (and share a feature cache)."""
    from deramos.data.realmusic.corpus import build_corpus

    def build(share):
        out = tmp_path / str(share)
        build_corpus(out, "train", systems=2, clips_per_system=3, recording_share=0.0, pieces=8, seconds=4.0,
                     seed=9, workers=1, progress=False, people_share=share)
        records = [json.loads(line) for line in (out / "synth_meta.jsonl").read_text().splitlines()]
        return {p.name: p.read_bytes() for p in (out / "wav").iterdir()}, [r["prompt"] for r in records]

    audio_a, prompts_a = build(0.3)
    audio_b, prompts_b = build(0.9)
    assert audio_a == audio_b and len(audio_a) == 6
    assert prompts_a != prompts_b


def test_one_family_systems_follow_the_archetypes_and_leave_them_as_they_were():
    from deramos.data.realmusic.corpus import OneFamilyProfile, plan_corpus

    before, plans_before, _, _ = plan_corpus(3, 6, 0.25, seed=1, held_out=False)
    after, plans, _, _ = plan_corpus(3, 6, 0.25, seed=1, held_out=False, one_family_systems=2)
    assert list(after) == ["S001", "S002", "S003", "S004", "S005"]
    assert [after[s] for s in before] == list(before.values())
    assert after["S004"] == after["S005"] == OneFamilyProfile()
    assert {p.system for p in plans} == set(after) and len(plans) == 5 * 6
    assert len(plans_before) == 3 * 6


def test_a_one_family_clip_has_one_post_render_family_at_a_uniform_severity():
    from deramos.data.realmusic.corpus import OneFamilyProfile
    from deramos.data.synth.degrade import EFFECTS

    rng = np.random.default_rng(3)
    draws = [OneFamilyProfile().draw(rng) for _ in range(4000)]
    assert all(len(d) == 1 for d in draws)
    families = [next(iter(d)) for d in draws]
    severities = np.array([next(iter(d.values())) for d in draws])
    assert set(families) == set(EFFECTS) and len(EFFECTS) == 8
    shares = np.array([families.count(f) for f in sorted(EFFECTS)]) / len(draws)
    assert np.all(np.abs(shares - 1 / 8) < 0.025), shares          # 4000 draws: sd of a share 0.005
    assert 0.05 <= severities.min() and severities.max() <= 1.0
    assert abs(severities.mean() - 0.525) < 0.02 and abs(np.median(severities) - 0.525) < 0.03

"""deramos-realmusic merge (deramos.data.merge): several MusicEval-layout corpora as one training directory."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from deramos.data import merge as merge_corpora
from deramos.data.musiceval import read_split, read_system_mos
from deramos.data.synth.corpus import generate_corpus
from deramos.data.synth.counterfactual import load_counterfactuals
from deramos.training.realmusic_cli import main as realmusic


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    generate_corpus(root / "a", clips=40, systems=4, seed=3, min_seconds=1.0, max_seconds=1.5, progress=False)
    generate_corpus(root / "b", clips=40, systems=4, seed=4, min_seconds=1.0, max_seconds=1.5, progress=False)
    return root / "a", root / "b"


def test_merged_corpus_renames_the_second_and_repeats_and_trims(corpora, tmp_path):
    a, b = corpora
    out = tmp_path / "merged"
    summary = merge_corpora.merge([(a, {"repeat": 2, "dev": -1}), (b, {"repeat": 1, "dev": 3})], out)
    train_a, dev_a, test_a = (read_split(a, s).clips for s in ("train", "dev", "test"))
    train_b, dev_b, test_b = (read_split(b, s).clips for s in ("train", "dev", "test"))
    train, dev, test = (read_split(out, s) for s in ("train", "dev", "test"))
    assert not train.problems and not dev.problems and not test.problems
    assert len(train.clips) == 2 * len(train_a) + len(train_b)
    assert len(dev.clips) == len(dev_a) + 3 and len(test.clips) == len(test_a) + len(test_b)
    assert summary["lists"] == {"train": len(train.clips), "dev": len(dev.clips), "test": len(test.clips)}
    # the first corpus keeps its ids; the second's systems and prompts move to S1…/P1…
    systems = read_system_mos(out)
    assert set(systems) == set(read_system_mos(a)) | {"S1" + s[1:] for s in read_system_mos(b)}
    first_b = train_b[0]
    merged = {c.wav_id: c for c in train.clips}
    new = merged[first_b.wav_id.replace(f"{first_b.system_id}_{first_b.prompt_id}",
                                        f"S1{first_b.system_id[1:]}_P1{first_b.prompt_id[1:]}")]
    assert (new.prompt, new.mi, new.ta) == (first_b.prompt, first_b.mi, first_b.ta)
    assert new.path.resolve() == first_b.path.resolve()
    # a repeated clip: same system, prompt, scores and audio under another name
    copy = merged["r1-" + train_a[0].wav_id]
    assert (copy.system_id, copy.prompt, copy.mi) == (train_a[0].system_id, train_a[0].prompt, train_a[0].mi)
    # every training clip has its counterfactual prompts, as deramos-train reads them
    table = load_counterfactuals(out, 2, seed=0)
    assert {c.path.name for c in train.clips} <= set(table)
    assert all(len(table[c.path.name]) == 2 for c in train.clips)


def test_bad_option_and_non_empty_output_are_errors(corpora, tmp_path):
    with pytest.raises(merge_corpora.MergeError, match="repeat=K and dev=N"):
        merge_corpora.parse_corpus(f"{corpora[0]}:twice=2")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("")
    with pytest.raises(merge_corpora.MergeError, match="not empty"):
        merge_corpora.merge([(corpora[0], {"repeat": 1, "dev": -1})], tmp_path / "x")
    done = CliRunner().invoke(realmusic, ["merge", "--out", str(tmp_path / "y"), "--corpus", str(corpora[0]),
                                          "--corpus", str(corpora[0])])
    assert done.exit_code == 0, done.output
    merged = json.loads((tmp_path / "y" / "merged.json").read_text())
    assert merged[1]["clips"]["train"] == len(read_split(corpora[0], "train").clips)
    assert json.loads(done.stdout)["corpora"] == merged


@pytest.mark.parametrize("corpus, message", [
    ("{a}:twice=2", "'{a}:twice=2': options are repeat=K and dev=N (got 'twice=2')"),
    ("{a}:repeat=0", "'{a}:repeat=0': repeat must be at least 1"),
    ("{out}", "{out}: not a MusicEval-layout corpus (no prompt_info.txt)"),
])
def test_the_merge_command_says_what_is_wrong_in_one_line(corpora, tmp_path, corpus, message):
    out = tmp_path / "merged"
    names = {"a": corpora[0], "out": tmp_path / "nothing"}
    (tmp_path / "nothing").mkdir()
    done = CliRunner().invoke(realmusic, ["merge", "--out", str(out), "--corpus", corpus.format(**names)])
    assert done.exit_code == 2 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.lower() == "error: " + message.format(**names).lower()
    assert not (out / "merged.json").exists()

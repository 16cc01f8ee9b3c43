"""Tests for deramos.data.musiceval on a small MusicEval layout built by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from deramos.data.musiceval import (
    Clip,
    parse_wav_name,
    read_answer,
    read_prompts,
    read_split,
    read_system_mos,
    write_answer,
)

PREFIX = "audiomos2025-track1-"


def name(system: str, prompt: str) -> str:
    return f"{PREFIX}{system}_{prompt}.wav"


def write_wav(path: Path) -> None:
    sf.write(path, np.zeros(1600, dtype=np.float32), 16000, subtype="PCM_16")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A tiny corpus: four clips on disk, prompts, demo prompts and system MOS."""
    (tmp_path / "wav").mkdir()
    (tmp_path / "sets").mkdir()
    (tmp_path / "system_mos").mkdir()
    for wav in [name("S002", "P044"), name("S002", "P001"), name("S009", "P003"), name("S003", "P001")]:
        write_wav(tmp_path / "wav" / wav)
    (tmp_path / "prompt_info.txt").write_text(
        "id\ttext\nP001\tA calm piano piece.\nP003\tFast techno, 130 bpm.\nP044\tJazz trio\twith brushes.\n",
        encoding="utf-8",
    )
    (tmp_path / "demo_prompt_info.txt").write_text(
        f"id\ttext\n{name('S009', 'P003')}\tThe demo's own prompt.\n", encoding="utf-8"
    )
    (tmp_path / "sets" / "train_mos_list.txt").write_text(
        f"{name('S002', 'P044')},3.2,4.0\n{name('S002', 'P001')},2.6,3.8\n{name('S009', 'P003')},4.4,1.2\n",
        encoding="utf-8",
    )
    (tmp_path / "system_mos" / "system_mos_phase1.csv").write_text(
        "sysID,MI,TA\nS002,2.9,3.9\nS009,4.4,1.2\n", encoding="utf-8"
    )
    return tmp_path


def test_parse_wav_name() -> None:
    assert parse_wav_name("audiomos2025-track1-S002_P044.wav") == ("S002", "P044")
    assert parse_wav_name("audiomos2025-track1-S002_P044") == ("S002", "P044")
    assert parse_wav_name("/data/wav/audiomos2025-track1-S031_P120.wav") == ("S031", "P120")
    assert parse_wav_name("S001_P009.wav") == ("S001", "P009")


@pytest.mark.parametrize("bad", ["clip.wav", "audiomos2025-track1-S002.wav", "X002_P044.wav", "S002_P044_x.wav", ""])
def test_parse_wav_name_rejects_bad_names(bad: str) -> None:
    with pytest.raises(ValueError, match="cannot find system and prompt ids"):
        parse_wav_name(bad)


def test_read_split_train(root: Path) -> None:
    split = read_split(root, "train")
    assert split.name == "train"
    assert split.problems == []
    assert split.clips[0] == Clip(
        wav_id=f"{PREFIX}S002_P044",
        path=root / "wav" / name("S002", "P044"),
        system_id="S002",
        prompt_id="P044",
        prompt="Jazz trio\twith brushes.",  # only the first tab separates id and text
        mi=3.2,
        ta=4.0,
    )
    assert [clip.prompt for clip in split.clips[1:]] == ["A calm piano piece.", "The demo's own prompt."]


def test_demo_prompt_wins_over_prompt_info(root: Path) -> None:
    clip = read_split(root, "train").clips[2]
    assert (clip.system_id, clip.prompt_id) == ("S009", "P003")
    assert clip.prompt == "The demo's own prompt."  # not prompt_info's "Fast techno, 130 bpm."


def test_demo_prompt_only_applies_to_its_own_file(root: Path) -> None:
    (root / "sets" / "dev_mos_list.txt").write_text(f"{name('S003', 'P001')},3,3\n", encoding="utf-8")
    (root / "demo_prompt_info.txt").write_text(f"{name('S003', 'P001')[:-4]}\tDemo without .wav key\n")
    assert read_split(root, "dev").clips[0].prompt == "Demo without .wav key"
    (root / "demo_prompt_info.txt").unlink()  # the demo file is optional
    assert read_split(root, "dev").clips[0].prompt == "A calm piano piece."


def test_id_only_eval_list(root: Path) -> None:
    (root / "sets" / "test_mos_list.txt").write_text(
        f"{name('S002', 'P044')}\n{PREFIX}S003_P001\n", encoding="utf-8"
    )
    split = read_split(root, "test")
    assert split.problems == []
    assert [clip.wav_id for clip in split.clips] == [f"{PREFIX}S002_P044", f"{PREFIX}S003_P001"]
    assert all(clip.mi is None and clip.ta is None for clip in split.clips)
    assert split.clips[1].path == root / "wav" / name("S003", "P001")


def test_missing_wav_and_missing_prompt_are_reported_and_skipped(root: Path) -> None:
    (root / "sets" / "dev_mos_list.txt").write_text(
        f"{name('S001', 'P009')},3,3\n{name('S002', 'P001')},2,2\n{name('S003', 'P999')},4,4\n",
        encoding="utf-8",
    )
    write_wav(root / "wav" / name("S003", "P999"))
    split = read_split(root, "dev")
    assert split.problems == [
        "audiomos2025-track1-S001_P009.wav: wav file missing",
        "audiomos2025-track1-S003_P999.wav: no prompt for P999",
    ]
    assert [clip.wav_id for clip in split.clips] == [f"{PREFIX}S002_P001"]


def test_bad_lines_are_reported_with_their_line_numbers(root: Path) -> None:
    (root / "sets" / "dev_mos_list.txt").write_text(
        f"abc,x\n{name('S002', 'P001')},2,2\n{name('S002', 'P044')},3\n{name('S002', 'P001')},1,1\n"
        f"nonsense.wav,3,3\n{name('S002', 'P044')},nan,3\n",
        encoding="utf-8",
    )
    split = read_split(root, "dev")
    assert split.problems == [
        "line 1: cannot parse 'abc,x'",
        f"line 3: cannot parse '{name('S002', 'P044')},3'",
        f"line 4: duplicate entry {name('S002', 'P001')}",
        "nonsense.wav: cannot find system and prompt ids in the name",
        f"line 6: cannot parse '{name('S002', 'P044')},nan,3'",
    ]
    assert len(split.clips) == 1


def test_bom_crlf_blank_lines_and_spaces(root: Path) -> None:
    text = f"\r\n{name('S002', 'P044')} , 3.2 , 4.0\r\n\r\n   \r\n{name('S009', 'P003')},4.4,1.2\r\n"
    (root / "sets" / "dev_mos_list.txt").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    (root / "prompt_info.txt").write_bytes(
        b"\xef\xbb\xbfid\ttext\r\nP044\t\"Jazz, \"\"swing\"\" feel\"\r\n\r\nP003\tTechno\r\n"
    )
    split = read_split(root, "dev")
    assert split.problems == []
    assert [(clip.mi, clip.ta) for clip in split.clips] == [(3.2, 4.0), (4.4, 1.2)]
    assert split.clips[0].prompt == 'Jazz, "swing" feel'
    assert not split.clips[1].prompt.endswith("\r")


def test_list_file_overrides_the_split_list(root: Path, tmp_path: Path) -> None:
    listing = tmp_path / "my_eval.txt"
    listing.write_text(f"{name('S003', 'P001')}\n", encoding="utf-8")
    split = read_split(root, "eval", list_file=listing)
    assert split.name == "eval"
    assert [clip.system_id for clip in split.clips] == ["S003"]


def test_missing_list_file_names_the_path(root: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dev_mos_list.txt"):
        read_split(root, "dev")
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        read_split(root, "dev", list_file=root / "nowhere.txt")


def test_missing_prompt_file(root: Path) -> None:
    (root / "prompt_info.txt").unlink()
    with pytest.raises(FileNotFoundError, match="prompt_info.txt"):
        read_split(root, "train")


def test_read_prompts(root: Path) -> None:
    prompts, demo = read_prompts(root)
    assert prompts == {
        "P001": "A calm piano piece.",
        "P003": "Fast techno, 130 bpm.",
        "P044": "Jazz trio\twith brushes.",
    }
    assert demo == {name("S009", "P003"): "The demo's own prompt."}


def test_read_system_mos(root: Path) -> None:
    assert read_system_mos(root) == {"S002": {"MI": 2.9, "TA": 3.9}, "S009": {"MI": 4.4, "TA": 1.2}}


def test_read_system_mos_errors(root: Path) -> None:
    csv = root / "system_mos" / "system_mos_phase1.csv"
    csv.write_text("sysID,MI,TA\nS002,2.9,oops\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: cannot parse 'S002,2.9,oops'"):
        read_system_mos(root)
    csv.unlink()
    with pytest.raises(FileNotFoundError, match="system_mos_phase1.csv"):
        read_system_mos(root)


def test_answer_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "answer.txt"
    ids = [f"{PREFIX}S002_P044", name("S009", "P003")]  # a ".wav" is dropped on writing
    write_answer(path, ids, np.array([3.25, 4.0]), [1.5, 2.123456])
    assert path.read_text().splitlines() == [
        f"{PREFIX}S002_P044,3.25,1.5",
        f"{PREFIX}S009_P003,4.0,2.123456",
    ]
    assert read_answer(path) == {f"{PREFIX}S002_P044": (3.25, 1.5), f"{PREFIX}S009_P003": (4.0, 2.123456)}


def test_answer_keeps_the_order_of_nearly_equal_scores(tmp_path: Path) -> None:
    """Scores 1e-9 apart stay apart (six decimals made them ties, and SRCC from the file differed)."""
    path = tmp_path / "answer.txt"
    mi = np.array([3.0, 3.0 + 1e-9, 3.0 + 2e-9], dtype=np.float64)
    ta = np.array([2.0, np.nextafter(np.float32(2.0), 0), np.nextafter(np.nextafter(np.float32(2.0), 0), 0)],
                  dtype=np.float32)                          # adjacent float32 values
    write_answer(path, ["a", "b", "c"], mi, ta)
    read = read_answer(path)
    assert [read[k][0] for k in "abc"] == sorted(read[k][0] for k in "abc") and len({read[k][0] for k in "abc"}) == 3
    assert [read[k][1] for k in "abc"] == [float(x) for x in ta]     # repr round-trips: the very same values


def test_write_answer_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 ids, 1 MI and 2 TA"):
        write_answer(tmp_path / "a.txt", ["a", "b"], [1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="b: non-finite score"):
        write_answer(tmp_path / "a.txt", ["a", "b"], [1.0, float("nan")], [1.0, 2.0])


def test_read_answer_errors(tmp_path: Path) -> None:
    path = tmp_path / "answer.txt"
    path.write_text("x,1,2\r\n\r\nx,3,4\r\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 3: duplicate id x"):
        read_answer(path)
    path.write_text("x,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 1: cannot parse 'x,1'"):
        read_answer(path)

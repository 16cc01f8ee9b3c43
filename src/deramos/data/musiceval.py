"""Reader for the MusicEval (AudioMOS 2025 track 1) on-disk layout.

    <root>/wav/audiomos2025-track1-S002_P044.wav        system S002, prompt P044
    <root>/sets/{train,dev,test}_mos_list.txt           wavname.wav,MI,TA   (or ids only)
    <root>/prompt_info.txt                              id<TAB>text         (P044 -> text)
    <root>/demo_prompt_info.txt                         wavname.wav<TAB>text (wins over prompt_info)
    <root>/system_mos/system_mos_phase1.csv             sysID,MI,TA         (with a header)

Problems with single clips (a missing wav, an unknown prompt, an unparsable line) are collected
as one-line messages in ``Split.problems`` and the clip is skipped, so one bad entry does not
stop a whole set from loading. Missing files the whole set depends on raise FileNotFoundError.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "Clip",
    "Split",
    "read_split",
    "read_prompts",
    "read_system_mos",
    "parse_wav_name",
    "write_answer",
    "read_answer",
]

PathLike = str | Path

WAV_SUFFIX = ".wav"
# "audiomos2025-track1-S002_P044" -> S002, P044; the prefix before the ids may be anything.
WAV_NAME_PATTERN = re.compile(r"^(?:.*[-_])?(S\d+)_(P\d+)$")


@dataclass(frozen=True)
class Clip:
    wav_id: str  # wav file name without ".wav"
    path: Path
    system_id: str
    prompt_id: str
    prompt: str
    mi: float | None  # None in an evaluation list that carries ids only
    ta: float | None


@dataclass
class Split:
    name: str
    clips: list[Clip] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def parse_wav_name(name: str) -> tuple[str, str]:
    """("S002", "P044") from "audiomos2025-track1-S002_P044.wav" (extension and folder optional)."""
    match = WAV_NAME_PATTERN.match(_wav_id(Path(name).name))
    if match is None:
        raise ValueError(f"cannot find system and prompt ids (S…_P…) in {name!r}")
    return match.group(1), match.group(2)


def read_split(root: PathLike, split: str = "train", *, list_file: PathLike | None = None) -> Split:
    """Clips of one set list with their prompts and (when present) MI/TA scores."""
    root = Path(root)
    list_path = Path(list_file) if list_file is not None else root / "sets" / f"{split}_mos_list.txt"
    if not list_path.is_file():
        raise FileNotFoundError(f"set list not found: {list_path}")
    prompts, demo_prompts = read_prompts(root)
    result = Split(name=split)
    seen: set[str] = set()
    for number, line in _numbered_lines(list_path):
        entry = _parse_list_line(line)
        if entry is None:
            result.problems.append(f"line {number}: cannot parse {line!r}")
            continue
        wav_id, mi, ta = entry
        if wav_id in seen:
            result.problems.append(f"line {number}: duplicate entry {wav_id}{WAV_SUFFIX}")
            continue
        seen.add(wav_id)
        clip = _make_clip(root, wav_id, mi, ta, prompts, demo_prompts, result.problems)
        if clip is not None:
            result.clips.append(clip)
    return result


def read_prompts(root: PathLike) -> tuple[dict[str, str], dict[str, str]]:
    """(prompt id -> text from prompt_info.txt, wav file name -> text from demo_prompt_info.txt).

    prompt_info.txt is required; demo_prompt_info.txt is optional (empty dict when absent).
    """
    root = Path(root)
    prompt_path = root / "prompt_info.txt"
    if not prompt_path.is_file():
        raise FileNotFoundError(f"prompt file not found: {prompt_path}")
    prompts = _read_tab_file(prompt_path)
    demo_path = root / "demo_prompt_info.txt"
    demo_raw = _read_tab_file(demo_path) if demo_path.is_file() else {}
    # Keyed by the full wav file name; accept keys written without the extension too.
    demo_prompts = {_wav_id(key) + WAV_SUFFIX: text for key, text in demo_raw.items()}
    return prompts, demo_prompts


def read_system_mos(root: PathLike) -> dict[str, dict[str, float]]:
    """{"S001": {"MI": .., "TA": ..}} from system_mos/system_mos_phase1.csv."""
    path = Path(root) / "system_mos" / "system_mos_phase1.csv"
    if not path.is_file():
        raise FileNotFoundError(f"system MOS file not found: {path}")
    scores: dict[str, dict[str, float]] = {}
    for number, line in _numbered_lines(path):
        fields = [cell.strip() for cell in line.split(",")]
        parsed = _parse_scores(fields[1:]) if len(fields) == 3 else None
        if parsed is None:
            if not scores and fields[0].lower().startswith("sys"):
                continue  # the header line
            raise ValueError(f"{path}: line {number}: cannot parse {line!r}")
        scores[fields[0]] = {"MI": parsed[0], "TA": parsed[1]}
    return scores


def write_answer(
    path: PathLike,
    wav_ids: Sequence[str],
    mi: Sequence[float] | np.ndarray,
    ta: Sequence[float] | np.ndarray,
) -> None:
    """Write 'wavid,MI,TA' lines (wav id without '.wav'), the challenge's answer format.

    Scores are written in Python's shortest round-trip form, every digit kept: metrics computed
    from the file then equal the ones computed from the predictions (six decimals used to tie
    nearly equal scores, so the file ranked clips differently from the model)."""
    if not len(wav_ids) == len(mi) == len(ta):
        raise ValueError(f"got {len(wav_ids)} ids, {len(mi)} MI and {len(ta)} TA scores")
    lines = []
    for wav_id, mi_score, ta_score in zip(wav_ids, mi, ta):
        if not (math.isfinite(mi_score) and math.isfinite(ta_score)):
            raise ValueError(f"{wav_id}: non-finite score (MI={mi_score}, TA={ta_score})")
        lines.append(f"{_wav_id(str(wav_id))},{float(mi_score)!r},{float(ta_score)!r}\n")
    Path(path).write_text("".join(lines), encoding="utf-8")


def read_answer(path: PathLike) -> dict[str, tuple[float, float]]:
    """{wav id: (MI, TA)} from an answer file; a bad or repeated line raises ValueError."""
    answers: dict[str, tuple[float, float]] = {}
    for number, line in _numbered_lines(Path(path)):
        fields = [cell.strip() for cell in line.split(",")]
        parsed = _parse_scores(fields[1:]) if len(fields) == 3 else None
        if parsed is None:
            raise ValueError(f"{path}: line {number}: cannot parse {line!r}")
        wav_id = _wav_id(fields[0])
        if wav_id in answers:
            raise ValueError(f"{path}: line {number}: duplicate id {wav_id}")
        answers[wav_id] = parsed
    return answers


# --- helpers ------------------------------------------------------------------------------------


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-blank lines with 1-based line numbers; BOM and CR/LF endings removed."""
    text = path.read_text(encoding="utf-8-sig")
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line:
            yield number, line


def _wav_id(name: str) -> str:
    return name[: -len(WAV_SUFFIX)] if name.lower().endswith(WAV_SUFFIX) else name


def _parse_scores(cells: Sequence[str]) -> tuple[float, float] | None:
    try:
        mi, ta = (float(cell) for cell in cells)
    except ValueError:
        return None
    if not (math.isfinite(mi) and math.isfinite(ta)):
        return None
    return mi, ta


def _parse_list_line(line: str) -> tuple[str, float | None, float | None] | None:
    """(wav id, MI, TA) from 'name.wav,MI,TA', or (wav id, None, None) from 'name[.wav]'."""
    fields = [cell.strip() for cell in line.split(",")]
    if not fields[0]:
        return None
    if len(fields) == 1:
        return _wav_id(fields[0]), None, None
    scores = _parse_scores(fields[1:]) if len(fields) == 3 else None
    if scores is None:
        return None
    return _wav_id(fields[0]), scores[0], scores[1]


def _make_clip(
    root: Path,
    wav_id: str,
    mi: float | None,
    ta: float | None,
    prompts: dict[str, str],
    demo_prompts: dict[str, str],
    problems: list[str],
) -> Clip | None:
    file_name = wav_id + WAV_SUFFIX
    try:
        system_id, prompt_id = parse_wav_name(file_name)
    except ValueError:
        problems.append(f"{file_name}: cannot find system and prompt ids in the name")
        return None
    path = root / "wav" / file_name
    if not path.is_file():
        problems.append(f"{file_name}: wav file missing")
        return None
    prompt = demo_prompts.get(file_name, prompts.get(prompt_id))
    if prompt is None:
        problems.append(f"{file_name}: no prompt for {prompt_id}")
        return None
    return Clip(wav_id, path, system_id, prompt_id, prompt, mi, ta)


def _read_tab_file(path: Path) -> dict[str, str]:
    """'key<TAB>text' lines; the 'id<TAB>text' header line is skipped."""
    entries: dict[str, str] = {}
    for _, line in _numbered_lines(path):
        key, tab, text = line.partition("\t")
        key = key.strip()
        if not tab or (key == "id" and text.strip() == "text"):
            continue
        entries[key] = _unquote(text.strip())
    return entries


def _unquote(text: str) -> str:
    """Undo CSV-style quoting ("a ""b"" c" -> a "b" c), which spreadsheet exports add."""
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1].replace('""', '"')
    return text

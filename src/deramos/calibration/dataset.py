"""Calibration sets: what the INT8 ranges are measured on.

`--calib` accepts
- a MusicEval-layout directory (its train list; the dev list is the held-out drift set),
- a JSONL file of {"path": ..., "prompt": ...} lines,
- a folder of audio files plus `prompts.txt` (`file<TAB>prompt` lines, or one prompt per line
  used in turn for the sorted files),
- nothing: rendered synthetic music (deramos.data.synth) with matching and mismatching prompts.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..runtime.audio import AudioError, load_audio
from ..runtime.contract import seconds_to_samples

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif"}


@dataclass
class ClipSet:
    waves: list[np.ndarray]
    prompts: list[str]
    systems: list[str] | None = None
    source: str = ""
    problems: list[str] = field(default_factory=list)


def load_calibration_set(spec: str | None, sample_rate: int, window_seconds: float, limit: int, seed: int = 0) -> ClipSet:
    if spec is None:
        from .samples import sample_set

        samples = sample_set(limit, sample_rate, window_seconds, seed=seed)
        return ClipSet(samples.waves, samples.prompts, source="synthetic (rendered)")
    path = Path(spec)
    if path.is_dir() and (path / "sets").is_dir():
        train = path / "sets" / "train_mos_list.txt"
        has_train = train.is_file() and train.read_text().strip() != ""
        # a held-out corpus lists only a test split: calibrate on whatever it has
        splits = "train" if has_train else tuple(
            split for split in ("train", "dev", "test") if (path / "sets" / f"{split}_mos_list.txt").is_file())
        return _from_musiceval(path, splits, sample_rate, window_seconds, limit, seed)
    if path.is_file() and path.suffix == ".jsonl":
        return _from_jsonl(path, sample_rate, window_seconds, limit)
    if path.is_dir():
        return _from_folder(path, sample_rate, window_seconds, limit)
    raise FileNotFoundError(f"{spec}: not a MusicEval directory, a .jsonl file or a folder of audio files")


def held_out_set(spec: str | None, sample_rate: int, window_seconds: float, limit: int, seed: int = 4242) -> ClipSet:
    """The drift set: never the clips the ranges were measured on, with system ids so that
    system-level rank agreement can be reported. A MusicEval dev split smaller than `limit`
    is topped up with rendered clips (a ranking check on a handful of clips decides nothing)."""
    path = Path(spec) if spec else None
    held = ClipSet([], [], [], source="")
    if path is not None and path.is_dir() and (path / "sets" / "dev_mos_list.txt").is_file():
        held = _from_musiceval(path, "dev", sample_rate, window_seconds, limit, seed)
    missing = limit - len(held.waves)
    if missing > 0:
        rendered = _rendered_corpus(sample_rate, window_seconds, missing, seed)
        held = ClipSet(held.waves + rendered.waves, held.prompts + rendered.prompts,
                       held.systems + [f"rendered-{s}" for s in rendered.systems],
                       source=" + ".join(filter(None, [held.source and f"{held.source}: {len(held.waves)}",
                                                       f"synthetic held-out corpus: {len(rendered.waves)}"])),
                       problems=held.problems)
    return held


def _rendered_corpus(sample_rate: int, window_seconds: float, limit: int, seed: int) -> ClipSet:
    from ..data.synth import generate_corpus

    with tempfile.TemporaryDirectory() as tmp:
        systems = max(2, min(8, limit // 3))   # the synthesiser renders >= 3 clips per system
        generate_corpus(tmp, clips=max(limit, 6), systems=systems, seed=seed, min_seconds=3.0,
                        max_seconds=min(10.0, window_seconds), progress=False)
        return _from_musiceval(Path(tmp), ("train", "dev", "test"), sample_rate, window_seconds, limit, seed,
                               source="synthetic held-out corpus")


def _crop(wave: np.ndarray, window_seconds: float, sample_rate: int) -> np.ndarray:
    return wave[: seconds_to_samples(window_seconds, sample_rate)]


def _from_musiceval(root: Path, splits, sample_rate, window_seconds, limit, seed, source=None) -> ClipSet:
    from ..data.musiceval import read_split

    clips = []
    for split in ([splits] if isinstance(splits, str) else splits):
        clips += read_split(root, split).clips
    order = np.random.default_rng(seed).permutation(len(clips))[:limit]
    named = splits if isinstance(splits, str) else "+".join(splits)
    out = ClipSet([], [], [], source=source or f"{root} ({named})")
    for i in sorted(order):
        try:
            out.waves.append(_crop(load_audio(clips[i].path, sample_rate), window_seconds, sample_rate))
        except AudioError as err:
            out.problems.append(str(err))
            continue
        out.prompts.append(clips[i].prompt)
        out.systems.append(clips[i].system_id)
    return out


def _from_jsonl(path: Path, sample_rate, window_seconds, limit) -> ClipSet:
    out = ClipSet([], [], source=str(path))
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if len(out.waves) >= limit or not line.strip():
            continue
        try:
            item = json.loads(line)
            audio, prompt = Path(item["path"]), str(item["prompt"])
            audio = audio if audio.is_absolute() else path.parent / audio
            wave = _crop(load_audio(audio, sample_rate), window_seconds, sample_rate)
            out.waves.append(wave)      # both or neither: clips and prompts stay paired
            out.prompts.append(prompt)
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            out.problems.append(f"{path}:{number}: bad line ({err.__class__.__name__})")
        except AudioError as err:
            out.problems.append(str(err))
    return out


def _from_folder(folder: Path, sample_rate, window_seconds, limit) -> ClipSet:
    prompts_file = folder / "prompts.txt"
    if not prompts_file.is_file():
        raise FileNotFoundError(f"{prompts_file}: a folder of audio files needs a prompts.txt beside them")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    lines = [line for line in prompts_file.read_text().splitlines() if line.strip()]
    by_name = dict(line.split("\t", 1) for line in lines if "\t" in line)
    out = ClipSet([], [], source=str(folder))
    for index, audio in enumerate(files[:limit]):
        prompt = by_name.get(audio.name) or (lines[index % len(lines)] if not by_name else None)
        if prompt is None:
            out.problems.append(f"{audio.name}: no prompt in prompts.txt")
            continue
        try:
            out.waves.append(_crop(load_audio(audio, sample_rate), window_seconds, sample_rate))
            out.prompts.append(prompt)
        except AudioError as err:
            out.problems.append(str(err))
    return out

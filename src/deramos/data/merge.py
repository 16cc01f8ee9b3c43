"""Merge MusicEval-layout corpora (deramos-realmusic, deramos-synth) into one training directory
(`deramos-realmusic merge`):

    deramos-realmusic merge --out build/merged \\
        --corpus build/realmusic/train:repeat=3 --corpus build/synth:dev=150

deramos-train reads one directory; this writes one whose wav/ holds symbolic links to the
corpora's files. System and prompt ids stay those of the first corpus; the i-th further
corpus's become S{i}NN.. / P{i}NNNN.. (S001 -> S1001, P0042 -> P10042), so no two corpora
share a system. Per corpus:

- `repeat=K`: its training clips are listed K times (the copies are links named `rK-…` with
  the same system and prompt), so a small corpus is not drowned by a large one;
- `dev=N`: at most N of its dev clips (a seeded draw), so the dev set (which picks the
  checkpoint) is not dominated by one corpus.

Test lists are merged whole. synth_meta.jsonl is merged with the new names (counterfactual
prompts keep working); system_mos, prompt_info and demo_prompt_info are merged.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..runtime.errors import DeramosError

ID = re.compile(r"(S)(\d+)_(P)(\d+)")
SPLITS = ("train", "dev", "test")


class MergeError(DeramosError):
    """A corpus or option the merge cannot use, or an output folder that is not empty."""


def parse_corpus(text: str) -> tuple[Path, dict[str, int]]:
    path, *options = text.split(":")
    settings = {"repeat": 1, "dev": -1}
    for option in options:
        key, _, value = option.partition("=")
        if key not in settings or not value.isdigit():
            raise MergeError(f"{text!r}: options are repeat=K and dev=N (got {option!r})")
        settings[key] = int(value)
    if settings["repeat"] < 1:
        raise MergeError(f"{text!r}: repeat must be at least 1")
    return Path(path), settings


def renamer(index: int):
    """wav name / system id / prompt id of corpus `index` -> its name in the merged corpus."""
    def system(sid: str) -> str:
        return sid if index == 0 else f"S{index}{sid[1:]}"

    def prompt(pid: str) -> str:
        return pid if index == 0 else f"P{index}{pid[1:]}"

    def wav(name: str) -> str:
        return ID.sub(lambda m: f"{system('S' + m.group(2))}_{prompt('P' + m.group(4))}", name)

    return wav, system, prompt


def read_tab(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        key, tab, text = line.partition("\t")
        if tab and not (key == "id" and text == "text"):
            rows.append((key, text))
    return rows


def list_lines(root: Path, split: str) -> list[str]:
    path = root / "sets" / f"{split}_mos_list.txt"
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.is_file() else []


@dataclass
class Source:
    """One corpus being merged: where it is, how its names change, what its side files say."""
    root: Path
    settings: dict[str, int]
    wav: Callable[[str], str]
    system: Callable[[str], str]
    prompt: Callable[[str], str]
    records: dict[str, dict]      # synth_meta.jsonl by wav name
    demo_of: dict[str, str]       # demo_prompt_info.txt by wav name


def open_source(index: int, root: Path, settings: dict[str, int]) -> Source:
    if not (root / "prompt_info.txt").is_file():
        raise MergeError(f"{root}: not a MusicEval-layout corpus (no prompt_info.txt)")
    records = {}
    meta_path = root / "synth_meta.jsonl"
    if meta_path.is_file():
        for line in meta_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                records[record["wav"]] = record
    demo_of = {(k if k.endswith(".wav") else k + ".wav"): text for k, text in read_tab(root / "demo_prompt_info.txt")}
    return Source(root, settings, *renamer(index), records, demo_of)


@dataclass
class Merged:
    """The merged corpus's lists and tables, filled corpus by corpus, then written at once."""
    out: Path
    lists: dict[str, list[str]] = field(default_factory=lambda: {split: [] for split in SPLITS})
    prompts: list[tuple[str, str]] = field(default_factory=list)
    demo: list[tuple[str, str]] = field(default_factory=list)
    systems: list[str] = field(default_factory=list)
    meta: list[dict] = field(default_factory=list)
    counts: list[dict] = field(default_factory=list)
    seen_prompts: set[str] = field(default_factory=set)
    seen_systems: set[str] = field(default_factory=set)

    def add_prompts(self, source: Source) -> None:
        for pid, text in read_tab(source.root / "prompt_info.txt"):
            if source.prompt(pid) in self.seen_prompts:
                raise MergeError(f"{source.root}: prompt id {pid} collides after renaming ({source.prompt(pid)})")
            self.seen_prompts.add(source.prompt(pid))
            self.prompts.append((source.prompt(pid), text))

    def add_clip(self, source: Source, split: str, line: str, copies: int) -> int:
        """Link one listed clip (`copies` times) and list it; how many entries that made."""
        name, *scores = line.split(",")
        name = name if name.endswith(".wav") else name + ".wav"
        audio = source.root / "wav" / name
        if not audio.is_file():
            raise MergeError(f"{audio}: listed in {split}_mos_list.txt but missing")
        for copy in range(copies):
            new = source.wav(name) if copy == 0 else f"r{copy}-{source.wav(name)}"
            link = self.out / "wav" / new
            if link.exists() or link.is_symlink():
                raise MergeError(f"{new}: two corpora give the same file name")
            link.symlink_to(audio.resolve())
            self.lists[split].append(",".join([new, *scores]))
            if name in source.demo_of:
                self.demo.append((new, source.demo_of[name]))
            if name in source.records:
                record = source.records[name]
                self.meta.append(dict(record, wav=new, system=source.system(record["system"]),
                                      prompt_id=source.prompt(record["prompt_id"])))
        return copies

    def add_systems(self, source: Source) -> None:
        mos = source.root / "system_mos" / "system_mos_phase1.csv"
        if not mos.is_file():
            return
        for line in mos.read_text(encoding="utf-8").splitlines()[1:]:
            if line.strip():
                sid, rest = line.split(",", 1)
                if source.system(sid) in self.seen_systems:
                    raise MergeError(f"{source.root}: system {sid} collides after renaming ({source.system(sid)})")
                self.seen_systems.add(source.system(sid))
                self.systems.append(f"{source.system(sid)},{rest}")

    def write(self) -> None:
        for split, lines in self.lists.items():
            (self.out / "sets" / f"{split}_mos_list.txt").write_text("".join(f"{line}\n" for line in lines))
        (self.out / "prompt_info.txt").write_text("".join(f"{k}\t{t}\n" for k, t in self.prompts))
        if self.demo:
            (self.out / "demo_prompt_info.txt").write_text("".join(f"{k}\t{t}\n" for k, t in self.demo))
        (self.out / "system_mos" / "system_mos_phase1.csv").write_text(
            "sysID,MI,TA\n" + "".join(f"{s}\n" for s in self.systems))
        if self.meta:
            (self.out / "synth_meta.jsonl").write_text("".join(json.dumps(r) + "\n" for r in self.meta))
        (self.out / "merged.json").write_text(json.dumps(self.counts, indent=2) + "\n")


def chosen_lines(source: Source, split: str, rng_seed: list[int]) -> list[str]:
    """The split's list lines taken from a corpus: all, or a seeded draw of at most dev=N dev clips."""
    lines = list_lines(source.root, split)
    if split == "dev" and 0 <= source.settings["dev"] < len(lines):
        keep = np.sort(np.random.default_rng(rng_seed).permutation(len(lines))[: source.settings["dev"]])
        lines = [lines[i] for i in keep]
    return lines


def merge(corpora: list[tuple[Path, dict[str, int]]], out: Path, seed: int = 0) -> dict:
    """Write the merged corpus into `out` (new or empty); the clips taken per corpus and split."""
    if out.exists() and any(out.iterdir()):
        raise MergeError(f"{out} exists and is not empty")
    for sub in ("wav", "sets", "system_mos"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    merged = Merged(out)
    for index, (root, settings) in enumerate(corpora):
        source = open_source(index, root, settings)
        merged.add_prompts(source)
        chosen = {}
        for split in SPLITS:
            copies = settings["repeat"] if split == "train" else 1
            chosen[split] = sum(merged.add_clip(source, split, line, copies)
                                for line in chosen_lines(source, split, [seed, index]))
        merged.add_systems(source)
        merged.counts.append({"corpus": str(root), "repeat": settings["repeat"], "dev_max": settings["dev"],
                              "clips": chosen})
    merged.write()
    return {"corpora": merged.counts, "lists": {split: len(lines) for split, lines in merged.lists.items()}}

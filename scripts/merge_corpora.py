"""Merge MusicEval-layout corpora (deramos-realmusic, deramos-synth) into one training directory.

    python scripts/merge_corpora.py --out build/merged \\
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

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

ID = re.compile(r"(S)(\d+)_(P)(\d+)")
SPLITS = ("train", "dev", "test")


class MergeError(Exception):
    pass


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


def merge(corpora: list[tuple[Path, dict[str, int]]], out: Path, seed: int = 0) -> dict:
    if out.exists() and any(out.iterdir()):
        raise MergeError(f"{out} exists and is not empty")
    for sub in ("wav", "sets", "system_mos"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    lists = {split: [] for split in SPLITS}
    prompts, demo, systems, meta = [], [], [], []
    seen_prompts, seen_systems = set(), set()
    counts = []
    for index, (root, settings) in enumerate(corpora):
        if not (root / "prompt_info.txt").is_file():
            raise MergeError(f"{root}: not a MusicEval-layout corpus (no prompt_info.txt)")
        wav, system, prompt = renamer(index)
        for pid, text in read_tab(root / "prompt_info.txt"):
            if prompt(pid) in seen_prompts:
                raise MergeError(f"{root}: prompt id {pid} collides after renaming ({prompt(pid)})")
            seen_prompts.add(prompt(pid))
            prompts.append((prompt(pid), text))
        records = {}
        meta_path = root / "synth_meta.jsonl"
        if meta_path.is_file():
            for line in meta_path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    record = json.loads(line)
                    records[record["wav"]] = record
        demo_of = {(k if k.endswith(".wav") else k + ".wav"): text for k, text in read_tab(root / "demo_prompt_info.txt")}
        chosen = {}
        for split in SPLITS:
            lines = list_lines(root, split)
            if split == "dev" and 0 <= settings["dev"] < len(lines):
                keep = np.sort(np.random.default_rng([seed, index]).permutation(len(lines))[: settings["dev"]])
                lines = [lines[i] for i in keep]
            copies = settings["repeat"] if split == "train" else 1
            chosen[split] = 0
            for line in lines:
                name, *scores = line.split(",")
                name = name if name.endswith(".wav") else name + ".wav"
                source = root / "wav" / name
                if not source.is_file():
                    raise MergeError(f"{source}: listed in {split}_mos_list.txt but missing")
                for copy in range(copies):
                    new = wav(name) if copy == 0 else f"r{copy}-{wav(name)}"
                    link = out / "wav" / new
                    if link.exists() or link.is_symlink():
                        raise MergeError(f"{new}: two corpora give the same file name")
                    link.symlink_to(source.resolve())
                    lists[split].append(",".join([new, *scores]))
                    chosen[split] += 1
                    if name in demo_of:
                        demo.append((new, demo_of[name]))
                    if name in records:
                        record = dict(records[name], wav=new, system=system(records[name]["system"]),
                                      prompt_id=prompt(records[name]["prompt_id"]))
                        meta.append(record)
        mos = root / "system_mos" / "system_mos_phase1.csv"
        if mos.is_file():
            for line in mos.read_text(encoding="utf-8").splitlines()[1:]:
                if line.strip():
                    sid, rest = line.split(",", 1)
                    if system(sid) in seen_systems:
                        raise MergeError(f"{root}: system {sid} collides after renaming ({system(sid)})")
                    seen_systems.add(system(sid))
                    systems.append(f"{system(sid)},{rest}")
        counts.append({"corpus": str(root), "repeat": settings["repeat"], "dev_max": settings["dev"], "clips": chosen})
    for split, lines in lists.items():
        (out / "sets" / f"{split}_mos_list.txt").write_text("".join(f"{line}\n" for line in lines))
    (out / "prompt_info.txt").write_text("".join(f"{k}\t{t}\n" for k, t in prompts))
    if demo:
        (out / "demo_prompt_info.txt").write_text("".join(f"{k}\t{t}\n" for k, t in demo))
    (out / "system_mos" / "system_mos_phase1.csv").write_text("sysID,MI,TA\n" + "".join(f"{s}\n" for s in systems))
    if meta:
        (out / "synth_meta.jsonl").write_text("".join(json.dumps(r) + "\n" for r in meta))
    (out / "merged.json").write_text(json.dumps(counts, indent=2) + "\n")
    return {"corpora": counts, "lists": {split: len(lines) for split, lines in lists.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--corpus", action="append", required=True, help="DIR[:repeat=K][:dev=N]")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the dev draws.")
    args = parser.parse_args(argv)
    try:
        summary = merge([parse_corpus(c) for c in args.corpus], args.out, args.seed)
    except MergeError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A calibration set shipped inside the bundle: real clips that travel with it to the device.

`deramos-build B --ship-calib clips.jsonl` (and `deramos-export --ship-calib`) copies the clips a
JSONL names ({"path", "prompt"} lines, paths relative to the JSONL) into `calibration/clips/`,
with a `clips.jsonl` of its own and the source's `SOURCES.md` (their licences) when there is one.
Every file is listed and hashed in the manifest like any other, so a tampered clip is refused.
INT8 then calibrates on them when no `--calib` is named (before the probe clips), on the device,
without torch and without the corpus that made them.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

SHIPPED_DIR = "calibration/clips"
SHIPPED_INDEX = f"{SHIPPED_DIR}/clips.jsonl"
SOURCES = "SOURCES.md"


def ship_calibration(root: Path, source: str | Path) -> int:
    """Copy the clips of the JSONL `source` into the bundle at `root`; returns how many.
    The manifest is not written here: the caller lists the returned files and rewrites it."""
    source = Path(source)
    if not (source.is_file() and source.suffix == ".jsonl"):
        raise ValueError(f"--ship-calib {source}: not a .jsonl file of {{\"path\", \"prompt\"}} lines")
    target = Path(root) / SHIPPED_DIR
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    rows, names = [], set()
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        clip = source.parent / row["path"]
        if not clip.is_file():
            raise ValueError(f"--ship-calib {source}: line {number}: {clip} not found")
        if not isinstance(row.get("prompt"), str):
            raise ValueError(f"--ship-calib {source}: line {number}: needs a 'prompt' string")
        name = _unique(clip.name, names)
        shutil.copyfile(clip, target / name)
        rows.append({"path": name, "prompt": row["prompt"]})
    if not rows:
        raise ValueError(f"--ship-calib {source}: lists no clips")
    (target / "clips.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    if (source.parent / SOURCES).is_file():
        shutil.copyfile(source.parent / SOURCES, target / SOURCES)
    return len(rows)


def shipped_files(root: Path) -> list[str]:
    """The bundle-relative names of the shipped calibration files (for the manifest)."""
    folder = Path(root) / SHIPPED_DIR
    return sorted(f"{SHIPPED_DIR}/{p.name}" for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def _unique(name: str, taken: set[str]) -> str:
    stem, suffix, n = Path(name).stem, Path(name).suffix, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}{suffix}"
    taken.add(name)
    return name

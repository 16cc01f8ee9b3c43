"""Real-music examples and the default model's prompt check set, cut from a held-out corpus.

    python scripts/realmusic_examples.py --data build/realmusic/heldout \\
        --examples examples --check-set tests/data/realmusic_clean

Both come from the clean clips (no degradation) of `deramos-realmusic corpus --set heldout`: composers,
a soundfont and recordings that no training set sees.

- examples/ (`make demo`): the first two clean recordings, the first two clean renderings of
  distinct instrument families and the first two clean arrangements of distinct styles, in list
  order (a rule, not a pick by score); 16 kHz PCM16 WAV; prompts.jsonl gives each a prompt
  describing what was really rendered or recorded and a mismatching one (instrument, tempo and
  mood changed), both from the template; the demo's prompts are then rewritten by hand.
- the check set (tests/test_default_model.py): every clean clip as 16 kHz FLAC; clips.jsonl
  keeps each clip's rendered attributes, so a test can draw as many prompt pairs as it needs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import soundfile as sf

from deramos.data.musiceval import read_split
from deramos.data.realmusic.attributes import RealAttributes, mismatched, prompt_for

MISMATCH_KINDS = ("instrument", "tempo", "mood")
EXAMPLES_PER_KIND = 2


def clean_rows(data: Path) -> list[dict]:
    records = {}
    for line in (data / "synth_meta.jsonl").read_text().splitlines():
        record = json.loads(line)
        records[record["wav"]] = record
    rng = np.random.default_rng(0)
    rows = []
    for clip in read_split(data, "test").clips:
        record = records[clip.path.name]
        if record["degradations"]:
            continue
        heard = RealAttributes.from_dict(record["rendered_attributes"])
        other = mismatched(heard, rng, MISMATCH_KINDS)
        rows.append({"clip": clip, "record": record, "instrument": heard.instrument,
                     "prompt": prompt_for(heard, rng), "mismatched_prompt": prompt_for(other, rng)})
    return rows


def kind_of(record: dict) -> str:
    src = record["source"]
    return "recording" if "recording" in src else "arrangement" if "tune" in src else "rendering"


def source_of(record: dict, sources: dict) -> dict:
    src = record["source"]
    font = sources.get("soundfonts", {}).get(src.get("soundfont"), {})
    if "tune" in src:
        return {"kind": "arrangement", "tune": src["tune"], "style": src["style"], "variant": src["variant"],
                "soundfont": src.get("soundfont"),
                "licence": f"tune: {sources.get('tune_licence', '?')}; soundfont ({font.get('package', '?')}): "
                           f"{font.get('licence', '?')}"}
    if "recording" in src:
        packages = sources.get("recording_packages", {})
        package = next((p for p in packages if p.split("-")[0] in src["recording"]), "?")
        return {"kind": "recording", "file": Path(src["recording"]).name, "offset_s": src.get("offset"),
                "package": package, "licence": packages.get(package, "?")}
    return {"kind": "rendering", "piece": "/".join(Path(src["piece"]).parts[-2:]), "soundfont": src.get("soundfont"),
            "licence": f"score: {sources.get('score_licence', '?')}; soundfont ({font.get('package', '?')}): "
                       f"{font.get('licence', '?')}"}


def pick_examples(rows: list[dict]) -> list[dict]:
    recordings = [r for r in rows if kind_of(r["record"]) == "recording"][:EXAMPLES_PER_KIND]
    return recordings + _distinct(rows, "rendering", "instrument") + _distinct(rows, "arrangement", "genre")


def _distinct(rows: list[dict], kind: str, attribute: str) -> list[dict]:
    """The first EXAMPLES_PER_KIND clips of `kind` that differ in `attribute`."""
    picked, seen = [], set()
    for r in rows:
        value = r["record"]["rendered_attributes"].get(attribute)
        if kind_of(r["record"]) == kind and value not in seen:
            seen.add(value)
            picked.append(r)
    return picked[:EXAMPLES_PER_KIND]


SOURCES_HEADER = """# Where these clips come from

Cut by `scripts/realmusic_examples.py` from the clean clips of the real-music held-out corpus
(`deramos-realmusic corpus --set heldout --clips-per-system 25 --pieces 40 --arrangement-share 0.4`):
scores, tunes and recordings that no training set of the default model saw. Renderings: music21
corpus scores (public-domain works; music21 is BSD-3-Clause) through fluidsynth with the TimGM6mb
soundfont (Debian timgm6mb-soundfont, GPL-2). Arrangements: traditional tunes from music21's
essenFolksong, nottingham-dataset, airdsAirs and miscFolk collections arranged in a style
(realmusic/arrange.py: melody, chords, bass, drums) and rendered the same way. Recordings:
excerpts of Debian game-soundtrack packages, under their licences below (the full texts are in
each package's /usr/share/doc/<package>/copyright).

| file | source | licence |
|---|---|---|
"""


def describe_source(source: dict) -> str:
    if source["kind"] == "recording":
        return f"{source['package']}: {source['file']} from {source['offset_s']} s"
    if source["kind"] == "arrangement":
        return f"{source['tune']} as {source['style']} (variant {source['variant']}; {source['soundfont']})"
    return f"{source['piece']} ({source['soundfont']})"


def write(rows: list[dict], out: Path, index: str, fmt: str, sources: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines, table = [], []
    for r in rows:
        kind = kind_of(r["record"])
        label = r["record"]["rendered_attributes"]["genre"] if kind == "arrangement" else r["instrument"]
        name = f"{kind}_{label}_{r['clip'].path.stem.split('-')[-1]}.{fmt.lower()}"
        audio, rate = sf.read(r["clip"].path, dtype="int16")
        sf.write(out / name, audio, rate, format=fmt, subtype="PCM_16")
        lines.append(json.dumps({"path": name, "prompt": r["prompt"], "mismatched_prompt": r["mismatched_prompt"],
                                 "attributes": r["record"]["rendered_attributes"],
                                 "source": source_of(r["record"], sources)}))
        source = source_of(r["record"], sources)
        table.append(f"| {name} | {describe_source(source)} | {source['licence']} |")
    (out / index).write_text("\n".join(lines) + "\n")
    (out / "SOURCES.md").write_text(SOURCES_HEADER + "\n".join(table) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="deramos-realmusic corpus --set heldout output")
    parser.add_argument("--examples", type=Path, help="write the demo examples here")
    parser.add_argument("--check-set", type=Path, help="write every clean clip here (FLAC)")
    args = parser.parse_args()
    sources = json.loads((args.data / "sources.json").read_text())
    rows = clean_rows(args.data)
    if args.examples:
        write(pick_examples(rows), args.examples, "prompts.jsonl", "WAV", sources)
    if args.check_set:
        write(rows, args.check_set, "clips.jsonl", "FLAC", sources)


if __name__ == "__main__":
    main()

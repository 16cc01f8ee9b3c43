"""`make musicnn-parity`: the PyTorch port of musicnn against its TensorFlow original.

    python scripts/musicnn_parity.py clips   --out DIR          real clips, 16 kHz mono WAV
    python scripts/musicnn_parity.py compare --reference DIR    port vs scripts/musicnn_tf.py output

Clips: music21 scores rendered with fluidsynth through two soundfonts, and recordings from
Debian game-soundtrack packages when installed; lengths chosen so that full patches, a
padded last patch and a clip shorter than one patch all occur. `compare` fails (exit 1) when
any taggram differs by more than 1e-4.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

TOLERANCE = 1e-4
SCORES = (("bach/bwv66.6", 20.0), ("haydn/opus74no1/movement1", 17.3), ("monteverdi/madrigal.4.1", 9.5),
          ("schumann_clara/opus17/movement3", 2.2))
RECORDINGS = (("/usr/share/games/wesnoth/1.16/data/core/music/battle.ogg", 15.0),
              ("/usr/share/scummvm/drascula/audio/track2.ogg", 12.0))


def make_clips(out: Path) -> list[Path]:
    from music21 import corpus

    from deramos.data.realmusic.render import (
        Arrangement,
        RenderError,
        arranged_score,
        find_soundfont,
        load_recording,
        normalise,
        render_score,
        trim,
    )

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for number, (name, seconds) in enumerate(SCORES):
        score = corpus.parse(name)
        parts = tuple(range(len(score.parts)))
        arrangement = Arrangement(parts, tuple([0, 40, 73, 19][number] for _ in parts), 96.0, 100,
                                  measures=40)
        soundfont = find_soundfont(("FluidR3_GM.sf2", "TimGM6mb.sf2")[number % 2])
        audio = trim(render_score(arranged_score(score, arrangement), soundfont), seconds, 16000)
        written.append(_write(out / f"score{number}_{name.replace('/', '_')}.wav", normalise(audio, 0.9)))
    for number, (path, seconds) in enumerate(RECORDINGS):
        try:
            audio = load_recording(Path(path), 16000, offset_seconds=5.0, seconds=seconds)
        except RenderError as error:
            print(f"skipped: {error}")
            continue
        written.append(_write(out / f"recording{number}_{Path(path).stem}.wav", audio))
    return written


def _write(path: Path, audio: np.ndarray) -> Path:
    sf.write(path, audio, 16000, subtype="PCM_16")
    print(f"{path.name}: {len(audio) / 16000:.2f} s")
    return path


def compare(reference: Path, report: Path | None) -> int:
    from deramos.model.config import AudioEncoderConfig
    from deramos.model.musicnn import PATCH_FRAMES, MusicnnEncoder

    rows = []
    encoders = {}
    for entry in json.loads((reference / "index.json").read_text()):
        model = entry["model"]
        if model not in encoders:
            encoders[model] = MusicnnEncoder(AudioEncoderConfig(
                arch="musicnn", sample_rate=16000, hop_length=256, backbones=(model,),
                features=("taggram", "penultimate"), patch_hop=PATCH_FRAMES)).eval()
        wave, _ = sf.read(entry["clip"], dtype="float32")
        expected = np.load(reference / entry["file"])
        for dft_conv in (False, True):
            encoders[model].frontend.use_dft_conv = dft_conv
            with torch.no_grad():
                frames, _ = encoders[model](torch.from_numpy(wave)[None], torch.tensor([len(wave)]))
            frames = frames[0].numpy()
            rows.append({"clip": Path(entry["clip"]).name, "model": model, "patches": entry["patches"],
                         "stft": "dft-conv" if dft_conv else "torch.stft",
                         "taggram": float(np.abs(frames[:, :50] - expected["taggram"]).max()),
                         "penultimate": float(np.abs(frames[:, 50:] - expected["penultimate"]).max()),
                         "taggram_vs_musicnn_float16": _finite_max(frames[:, :50], expected["taggram_f16"])})
    for row in rows:
        print(f"{row['clip']:45s} {row['model']:12s} {row['stft']:10s} patches {row['patches']:2d}  "
              f"max|d| taggram {row['taggram']:.2e}  penultimate {row['penultimate']:.2e}  "
              f"vs musicnn's float16 log-mel {row['taggram_vs_musicnn_float16']}")
    worst = max(row["taggram"] for row in rows)
    print(f"worst taggram max|d| {worst:.2e} over {len(rows)} clip/model/STFT runs (tolerance {TOLERANCE:g})")
    if report is not None:
        report.write_text(json.dumps({"worst_taggram": worst, "tolerance": TOLERANCE, "rows": rows}, indent=1))
    return 0 if worst <= TOLERANCE else 1


def _finite_max(ours: np.ndarray, theirs: np.ndarray) -> str:
    """Over the patches where musicnn's float16 arithmetic did not overflow."""
    finite = np.isfinite(theirs).all(axis=1)
    nan_note = f" ({int((~finite).sum())} NaN patches)" if not finite.all() else ""
    if not finite.any():
        return "all NaN"
    return f"{np.abs(ours[finite] - theirs[finite]).max():.2e}{nan_note}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    clips = sub.add_parser("clips")
    clips.add_argument("--out", type=Path, required=True)
    comp = sub.add_parser("compare")
    comp.add_argument("--reference", type=Path, required=True)
    comp.add_argument("--report", type=Path)
    args = parser.parse_args(argv)
    if args.command == "clips":
        make_clips(args.out)
        return 0
    return compare(args.reference, args.report)


if __name__ == "__main__":
    sys.exit(main())

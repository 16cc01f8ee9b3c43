"""Evaluate checkpoints on a real-music held-out set (deramos-realmusic --set heldout).

    python scripts/realmusic_report.py --data build/realmusic/heldout \\
        --model default=src/deramos/default_model --model musicnn=build/runs/musicnn \\
        --json build/realmusic-report.json --markdown build/realmusic-report.md

Per model: utterance and system SRCC for MI and TA (the clips' own prompts); matched vs
mismatched prompt AUC (each clip scored with a prompt describing what it really is and with
one that gets 2-3 kinds wrong), and the paired rate of clips whose own prompt wins, with its
95 % Wilson interval; mean MI of clean clips and of heavily degraded ones (latent
MI <= 2); |dMI| between PCM16 and PCM24 / float WAV and MP3 / Ogg Vorbis of the same clip.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deramos.data.realmusic import freeform
from deramos.model.checkpoint import load_checkpoint
from deramos.training.realmusic_report import evaluate_model, markdown


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", action="append", required=True, help="name=checkpoint-or-run-directory")
    parser.add_argument("--format-clips", type=int, default=24, help="Clips re-encoded as PCM24/float/MP3/Ogg (0: skip).")
    parser.add_argument("--cache-dir", type=Path, help="Frozen-encoder feature cache (as deramos-train's).")
    parser.add_argument("--freeform", type=Path, nargs="?", const=freeform.PROMPT_SET_DIR,
                        help="Also the free-form evaluation with this hand-written prompt set [tests/data/freeform].")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    results = {}
    for spec in args.model:
        name, _, path = spec.partition("=")
        model = load_checkpoint(path)
        results[name] = evaluate_model(model, args.data, args.format_clips, args.cache_dir)
        if args.freeform:
            results[name]["freeform"] = freeform.evaluate_freeform(model, args.data, args.freeform, args.cache_dir)
        print(json.dumps({name: {k: v for k, v in results[name].items() if k != "metrics"}}), flush=True)
    table = markdown(results)
    if args.freeform:
        table += "\nFree-form prompts (hand-written, " + str(args.freeform) + "):\n\n" + \
            freeform.markdown({name: r["freeform"] for name, r in results.items()})
    print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Pick, among deramos-train runs of the same recipe with different seeds, the one whose chosen
checkpoint scored best on dev: (utterance SRCC MI + utterance SRCC TA) / 2 of that checkpoint's
epoch in the run's metrics.jsonl. Prints one line per run and links the winner as --link.

    python scripts/pick_seed.py --selection best_combined --link build/x/run build/x/run-seed*
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def dev_score(run: Path, selection: str) -> tuple[float, int]:
    epoch = json.loads((run / selection / "config.json").read_text())["epoch"]
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["epoch"] == epoch:
            dev = record["dev"]["utterance"]
            return (dev["MI"]["SRCC"] + dev["TA"]["SRCC"]) / 2, epoch
    raise ValueError(f"{run}: epoch {epoch} of {selection} is not in metrics.jsonl")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--selection", default="best_combined")
    parser.add_argument("--link", type=Path, required=True, help="Made a symlink to the winning run.")
    args = parser.parse_args()
    try:
        scored = [(dev_score(run, args.selection), run) for run in args.runs]
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for (score, epoch), run in scored:
        print(f"{run}: {args.selection} = epoch {epoch}, dev (utt MI + utt TA) / 2 = {score:.4f}")
    best = max(scored, key=lambda item: item[0][0])[1]
    if args.link.is_symlink():
        args.link.unlink()
    elif args.link.exists():
        print(f"error: {args.link}: exists and is not a link (a run of an older recipe? move it away)", file=sys.stderr)
        return 2
    os.symlink(best.resolve(), args.link)
    print(f"picked {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

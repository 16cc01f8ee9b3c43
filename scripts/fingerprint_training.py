"""Fingerprint what the training code produces for fixed seeds: SHA-256 of every file of a
synthetic corpus, of a pre-trained encoder and of two training runs (tiny preset, one thread).

Run it before and after a refactoring that must not change behaviour and diff the two outputs:

    python scripts/fingerprint_training.py > before.json    # (on the old code)
    python scripts/fingerprint_training.py > after.json
    diff before.json after.json && echo identical

Wall-clock fields (`seconds`) are left out and the temporary folder's name is replaced by TMP.
"""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

from deramos.data.synth import generate_corpus
from deramos.training.pretrain import PretrainArgs, pretrain
from deramos.training.train import TrainArgs, run_training


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def without_seconds(value):
    """JSON with every wall-clock `seconds` field dropped, re-serialised canonically."""
    if isinstance(value, dict):
        return {k: without_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [without_seconds(v) for v in value]
    return value


def fingerprint_tree(root: Path, tmp: Path) -> dict[str, str]:
    found = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = str(path.relative_to(tmp))
        if path.suffix in (".json", ".jsonl") and path.name != "synth_meta.jsonl":
            text = path.read_text().replace(str(tmp), "TMP")    # run paths differ from run to run
            if path.suffix == ".json":
                value = json.loads(text)
            else:
                value = [json.loads(line) for line in text.splitlines() if line.strip()]
            found[name] = digest(json.dumps(without_seconds(value), sort_keys=True).encode())
        else:
            found[name] = digest(path.read_bytes())
    return found


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        corpus, cache = tmp / "corpus", str(tmp / "cache")
        generate_corpus(corpus, clips=48, systems=4, seed=3, min_seconds=2.0, max_seconds=3.0, progress=False)
        pretrain(PretrainArgs(data=str(corpus), out=str(tmp / "pre"), preset="tiny", epochs=2, batch_size=8,
                              progress=False))
        common = dict(data=str(corpus), preset="tiny", epochs=2, batch_size=8, cache_dir=cache, progress=False)
        run_training(TrainArgs(out=str(tmp / "run_plain"), **common))
        run_training(TrainArgs(out=str(tmp / "run_pre_cf"), init_audio_encoder=str(tmp / "pre"),
                               counterfactual_prompts=2, audio_encoder_lr_scale=0.2, loss="pairwise", **common))
        found = {}
        for part in ("corpus", "pre", "run_plain", "run_pre_cf"):
            found.update(fingerprint_tree(tmp / part, tmp))
    json.dump(found, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

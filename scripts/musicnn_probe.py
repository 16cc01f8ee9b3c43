"""Which musicnn features should the heads see? Linear probes on a real-music corpus.

    python scripts/musicnn_probe.py --data build/realmusic/train --out build/musicnn-probe.json

Every clip goes through both backbones (3 s patches every 1.5 s); the patch features are
averaged over the clip. For each candidate feature set, a ridge probe is cross-validated
(5 folds, folds by score piece/recording so a piece never sits on both sides) on: MI (SRCC
against the label) and the attributes the clip really has (accuracy for instrument family,
ensemble, tempo word, mode, dynamics). A frozen encoder can only pass on what these probes find.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from deramos.model.config import AudioEncoderConfig
from deramos.model.musicnn import FEATURES, MODELS, MusicnnEncoder
from deramos.model.tempo_tonality import WIDTHS as EXTRA_WIDTHS
from deramos.runtime.metrics import spearman

KINDS = ("instrument", "ensemble", "tempo", "mood", "dynamics")
CANDIDATES = {
    "MTT penultimate": [("MTT_musicnn", "penultimate")],
    "MSD penultimate": [("MSD_musicnn", "penultimate")],
    "both penultimate": [(m, "penultimate") for m in MODELS],
    "both taggram": [(m, "taggram") for m in MODELS],
    "both penultimate+taggram": [(m, f) for m in MODELS for f in ("penultimate", "taggram")],
    "MTT mid-level mean": [("MTT_musicnn", "mean")],
    "both mid-level mean": [(m, "mean") for m in MODELS],
    "both mid-level mean+max": [(m, f) for m in MODELS for f in ("mean", "max")],
    "both penultimate+taggram+mean": [(m, f) for m in MODELS for f in ("penultimate", "taggram", "mean")],
    "rhythm": [("signal", "rhythm")],
    "tonality": [("signal", "tonality")],
    "rhythm+tonality": [("signal", "rhythm"), ("signal", "tonality")],
    "both penultimate+taggram+rhythm+tonality": [(m, f) for m in MODELS for f in ("penultimate", "taggram")]
    + [("signal", "rhythm"), ("signal", "tonality")],
}


def clip_features(records: list[dict], root: Path) -> dict[tuple[str, str], np.ndarray]:
    names, extras = list(FEATURES), list(EXTRA_WIDTHS)
    encoder = MusicnnEncoder(AudioEncoderConfig(arch="musicnn", sample_rate=16000, hop_length=256,
                                                backbones=MODELS, features=tuple(names + extras),
                                                patch_hop=94)).eval()
    widths = [FEATURES[n] for n in names]
    rows = []
    for record in tqdm(records, desc="encoding", unit="clip"):
        wave, _ = sf.read(root / "wav" / record["wav"], dtype="float32")
        with torch.no_grad():
            frames, _ = encoder(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))
        rows.append(frames[0].mean(0).numpy())
    table = np.stack(rows)
    out, start = {}, 0
    for model in MODELS:
        for name, width in zip(names, widths):
            out[(model, name)] = table[:, start:start + width]
            start += width
    for name in extras:
        out[("signal", name)] = table[:, start:start + EXTRA_WIDTHS[name]]
        start += EXTRA_WIDTHS[name]
    return out


def ridge_cv(x: np.ndarray, y: np.ndarray, folds: np.ndarray, alpha: float = 10.0) -> np.ndarray:
    """Out-of-fold ridge predictions (features standardised on the training folds)."""
    pred = np.zeros((len(x),) + y.shape[1:])
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        mean, std = x[train].mean(0), x[train].std(0) + 1e-6
        a, b = (x[train] - mean) / std, (x[test] - mean) / std
        a1, b1 = np.hstack([a, np.ones((len(a), 1))]), np.hstack([b, np.ones((len(b), 1))])
        weights = np.linalg.solve(a1.T @ a1 + alpha * np.eye(a1.shape[1]), a1.T @ y[train])
        pred[test] = b1 @ weights
    return pred


def probe(x: np.ndarray, records: list[dict], folds: np.ndarray) -> dict:
    result = {"dims": int(x.shape[1])}
    mi = np.array([r["mi"] for r in records])
    result["MI SRCC"] = round(float(spearman(mi, ridge_cv(x, mi, folds))), 3)
    for kind in KINDS:
        values = [_kind_value(r["rendered_attributes"], kind) for r in records]
        classes = sorted(set(values))
        onehot = np.array([[v == c for c in classes] for v in values], dtype=np.float64)
        guess = ridge_cv(x, onehot, folds).argmax(1)
        result[f"{kind} acc"] = round(float(np.mean([classes[g] == v for g, v in zip(guess, values)])), 3)
    result["attribute mean acc"] = round(float(np.mean([result[f"{k} acc"] for k in KINDS])), 3)
    return result


def _kind_value(attributes: dict, kind: str) -> str:
    from deramos.data.realmusic.attributes import RealAttributes

    return RealAttributes.from_dict(attributes).kind_value(kind)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--scores-only", action="store_true", help="Leave out recordings (attributes from tags).")
    parser.add_argument("--limit", type=int, help="Probe only the first N clips of the corpus.")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    records = [json.loads(line) for line in (args.data / "synth_meta.jsonl").read_text().splitlines()]
    if args.scores_only:
        records = [r for r in records if r["kind"] == "score"]
    records = records[:args.limit] if args.limit else records
    groups = [r["source"].get("piece") or r["source"].get("recording") for r in records]
    group_ids = {g: i for i, g in enumerate(sorted(set(groups)))}
    folds = np.array([group_ids[g] % 5 for g in groups])
    features = clip_features(records, args.data)
    results = {}
    for name, parts in CANDIDATES.items():
        x = np.hstack([features[p] for p in parts])
        results[name] = probe(x, records, folds)
        print(f"{name:32s} " + "  ".join(f"{k} {v}" for k, v in results[name].items()), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"clips": len(records), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

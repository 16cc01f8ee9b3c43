"""Held-out linear probes of a clip's rendered attributes on musicnn features: the preset's frame
(penultimate + taggram + signal features) against adding the mid-end's mean and max pools.

    python scripts/attribute_probe.py build/rm/real-train build/rm/real-heldout
    python scripts/attribute_probe.py build/rm/real-train build/rm/real-heldout --extra vgg_MTT_vgg --extra vgg_MSD_vgg

Both corpora are `deramos-realmusic corpus` directories. Each clip's frames (both backbones,
3 s patches every 1.5 s) are averaged over the clip and cached beside the corpus
(probe_features.npz). Per attribute kind and feature set: a logistic regression on standardised
features, its L2 strength picked on a fifth of the training excerpts (all versions of an excerpt
on one side), refitted on all training clips, scored on the held-out clips. Prints one row per kind.
`--extra NAME` adds clip features computed elsewhere, NAME.npy in both corpora (one row per clip of
synth_meta.jsonl; `scripts/musicnn_tf.py features` writes musicnn's VGG models' there), as a set of
their own and beside the preset's.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from deramos.model.config import AudioEncoderConfig
from deramos.model.musicnn import FEATURES, MODELS, MusicnnEncoder

NETWORK = ("penultimate", "taggram", "mean", "max")
SIGNAL = ("rhythm", "tonality", "tuning")
SETS = {"preset (penultimate + taggram + signal)": ("penultimate", "taggram", "signal"),
        "+ mid-end mean": ("penultimate", "taggram", "signal", "mean"),
        "+ mid-end mean + max": ("penultimate", "taggram", "signal", "mean", "max")}
KINDS = ("instrument", "genre", "drums", "ensemble", "tempo", "mood", "dynamics")
STRENGTHS = (0.001, 0.003, 0.01, 0.03, 0.1)


def encoder() -> MusicnnEncoder:
    return MusicnnEncoder(AudioEncoderConfig(arch="musicnn", sample_rate=16000, hop_length=256, backbones=MODELS,
                                             features=NETWORK + SIGNAL, patch_hop=94)).eval()


def columns(model: MusicnnEncoder, names) -> np.ndarray:
    """Positions in a frame of the named network features (both backbones) and, for "signal", the rest."""
    cols, offset = [], 0
    for _ in MODELS:
        for feature in NETWORK:
            if feature in names:
                cols += range(offset, offset + FEATURES[feature])
            offset += FEATURES[feature]
    if "signal" in names:
        cols += range(offset, model.cfg.hidden_size)
    return np.array(cols)


def clip_features(model: MusicnnEncoder, root: Path) -> tuple[list[dict], np.ndarray]:
    meta = [json.loads(line) for line in (root / "synth_meta.jsonl").read_text().splitlines() if line.strip()]
    cache = root / "probe_features.npz"
    if cache.exists():
        return meta, np.load(cache)["x"]
    rows = []
    for item in tqdm(meta, desc=f"encoding {root.name}"):
        wave, _ = sf.read(root / "wav" / item["wav"], dtype="float32", always_2d=True)
        wave = torch.from_numpy(wave.mean(axis=1))[None]
        with torch.no_grad():
            frames, real = model(wave, torch.tensor([wave.shape[1]]))
        rows.append(frames[0, real[0]].mean(dim=0).numpy())
    x = np.stack(rows)
    np.savez(cache, x=x)
    return meta, x


def labels(meta: list[dict], kind: str) -> np.ndarray:
    heard = [m["rendered_attributes"] for m in meta]
    if kind == "tempo":
        return np.array(["slow" if a["tempo_bpm"] < 90 else "fast" if a["tempo_bpm"] >= 130 else "moderate" for a in heard])
    return np.array([str(a["mode" if kind == "mood" else kind]) for a in heard])


def probe(train: np.ndarray, y_train: np.ndarray, groups: np.ndarray, test: np.ndarray, y_test: np.ndarray):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train)
    train, test = scaler.transform(train), scaler.transform(test)
    dev = np.isin(groups, sorted(set(groups))[::5])
    dev_accuracy = {c: (LogisticRegression(C=c, max_iter=3000).fit(train[~dev], y_train[~dev]).predict(train[dev])
                        == y_train[dev]).mean() for c in STRENGTHS}
    strength = max(dev_accuracy, key=dev_accuracy.get)
    fitted = LogisticRegression(C=strength, max_iter=3000).fit(train, y_train)
    return float((fitted.predict(test) == y_test).mean()), strength


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train", type=Path)
    parser.add_argument("heldout", type=Path)
    parser.add_argument("--extra", action="append", default=[], help="NAME.npy clip features in both corpora.")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = encoder()
    train_meta, x_train = clip_features(model, args.train)
    test_meta, x_test = clip_features(model, args.heldout)
    groups = np.array([m["prompt_id"] for m in train_meta])
    sets = {name: columns(model, names) for name, names in SETS.items()}
    if args.extra:
        width = x_train.shape[1]
        x_train = np.concatenate([x_train] + [np.load(args.train / f"{n}.npy") for n in args.extra], axis=1)
        x_test = np.concatenate([x_test] + [np.load(args.heldout / f"{n}.npy") for n in args.extra], axis=1)
        added = np.arange(width, x_train.shape[1])
        label = " + ".join(args.extra)
        sets[label + " alone"] = added
        sets["preset + " + label] = np.concatenate([sets[next(iter(SETS))], added])
    for kind in KINDS:
        y_train, y_test = labels(train_meta, kind), labels(test_meta, kind)
        majority = max((y_test == value).mean() for value in set(y_test))
        row = [f"{kind}: majority {majority:.2f}"]
        for name, cols in sets.items():
            accuracy, strength = probe(x_train[:, cols], y_train, groups, x_test[:, cols], y_test)
            row.append(f"{name} {accuracy:.2f} (C {strength})")
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()

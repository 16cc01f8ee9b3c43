"""Probe clips carried in a bundle, and the self-check that runs them.

    bundle/probes/probes.json     {"sample_rate", "clips": [{"file", "prompt", "mi", "ta"}, ...]}
    bundle/probes/NN.flac         rendered music at the model's rate (24-bit FLAC)

`mi`/`ta` are the FP32 graphs' scores for exactly these files (ONNX Runtime on the CPU, at
export). A self-check scores the files with whatever backend and precision a user chose and
compares with them (runtime/compare.py): it is how a Jetson user learns whether an engine
built on their device, or an INT8 graph on their CPU, is right.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bundle import Bundle, BundleError
from .compare import TOLERANCES, Comparison, compare_scores

PROBE_DIR = "probes"
PROBE_INDEX = f"{PROBE_DIR}/probes.json"


@dataclass
class ProbeSet:
    files: list[Path]
    prompts: list[str]
    mi: np.ndarray
    ta: np.ndarray


def write_probe_clips(root: Path, waves: list[np.ndarray], prompts: list[str], sample_rate: int) -> list[Path]:
    """The clips as FLAC files (what the FP32 reference is then computed from)."""
    import soundfile as sf

    folder = root / PROBE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for number, wave in enumerate(waves):
        path = folder / f"{number:02d}.flac"
        sf.write(path, np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_24")
        files.append(path)
    return files


def record_probes(scorer, files: list[Path], prompts: list[str]) -> Path:
    """Score the probe files with `scorer` (the FP32 reference) and write probes.json."""
    scores = scorer.score_batch([str(f) for f in files], list(prompts))
    bad = [s.error for s in scores if not s.ok]
    if bad:
        raise BundleError(f"probe clips could not be scored: {bad[0]}")
    root = scorer.bundle.root
    index = {"sample_rate": scorer.sample_rate, "reference": scorer.backend.describe(),
             "clips": [{"file": f.relative_to(root).as_posix(), "prompt": p, "mi": s.mi, "ta": s.ta}
                       for f, p, s in zip(files, prompts, scores)]}
    path = root / PROBE_INDEX
    path.write_text(json.dumps(index, indent=1))
    return path


def load_probes(bundle: Bundle) -> ProbeSet:
    path = bundle.root / PROBE_INDEX
    if PROBE_INDEX not in bundle.manifest.get("files", {}):
        raise BundleError(f"{bundle.root}: this bundle carries no probe clips (export it again to add them)")
    try:
        clips = json.loads(path.read_text())["clips"]
        files = [bundle.root / c["file"] for c in clips]
        for f in files:
            if f.relative_to(bundle.root).as_posix() not in bundle.manifest["files"]:
                raise BundleError(f"{f}: probe clip not listed (with its sha256) in manifest.json")
        return ProbeSet(files, [str(c["prompt"]) for c in clips], np.array([float(c["mi"]) for c in clips]),
                        np.array([float(c["ta"]) for c in clips]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        if isinstance(error, BundleError):
            raise
        raise BundleError(f"{path}: unreadable probe index ({type(error).__name__}: {error})") from None


def self_check(scorer) -> Comparison:
    """Score the bundle's probes with this scorer's backend and precision; compare with FP32."""
    probes = load_probes(scorer.bundle)
    precision = getattr(scorer.backend, "precision", "fp32")
    scores = scorer.score_batch([str(f) for f in probes.files], probes.prompts)
    errors = [s.error for s in scores if not s.ok]
    ok = [i for i, s in enumerate(scores) if s.ok]
    if not ok:
        raise BundleError(f"{scorer.bundle.root}: no probe clip could be scored ({errors[0]})")
    return compare_scores({"MI": probes.mi[ok], "TA": probes.ta[ok]},
                          {"MI": np.array([scores[i].mi for i in ok]), "TA": np.array([scores[i].ta for i in ok])},
                          precision=precision, candidate_name=scorer.backend.describe(),
                          reference_name="stored FP32 outputs", source=f"{len(probes.files)} probe clips",
                          tolerance=TOLERANCES.get(precision), errors=errors)

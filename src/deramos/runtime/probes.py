"""Probe clips carried in a bundle, and the self-check that runs them.

    bundle/probes/probes.json     {"sample_rate", "clips": [{"file", "prompt", "mi", "ta"}, ...]}
    bundle/probes/NN.flac         rendered music at the model's rate (24-bit FLAC)

`mi`/`ta` are the FP32 graphs' scores for exactly these files (ONNX Runtime on the CPU, at
export). A self-check scores the files with whatever backend and precision a user chose and
compares with them (runtime/compare.py): it is how a Jetson user learns whether an engine
built on their device, or an INT8 graph on their CPU, is right. Graphs that return NaN or inf
for probe clips fail the check (they are the candidate's fault, not the bundle's).

probes.json is validated on load, probe by probe: a listed file (sha256 in manifest.json), a
non-empty prompt, finite scores; a one-line BundleError names probes.json, the probe and the field.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bundle import MISSING, SCORE_LIMITS, Bundle, BundleError, _json_type, relative_path_problem
from .compare import Comparison, compare_scores
from .contract import TOLERANCES
from .errors import NON_FINITE_SCORE

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
    """probes.json, checked probe by probe (a one-line BundleError naming the file and the probe)."""
    path = bundle.root / PROBE_INDEX
    if PROBE_INDEX not in bundle.files:
        raise BundleError(f"{bundle.root}: this bundle carries no probe clips (export it again to add them)")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise BundleError(f"{path}: unreadable probe index ({error.strerror or error})") from None
    except RecursionError:
        raise BundleError(f"{path}: unreadable probe index (not valid JSON: nested too deeply)") from None
    except ValueError as error:   # JSONDecodeError, UnicodeDecodeError
        raise BundleError(f"{path}: unreadable probe index (not valid JSON: {getattr(error, 'msg', error)})") from None
    clips = index.get("clips", MISSING) if isinstance(index, dict) else MISSING
    if not isinstance(clips, list) or not clips:
        raise BundleError(f"{path}: field clips must be a non-empty list of probes, got {_json_type(clips)}")
    files, prompts, mi, ta = [], [], [], []
    for number, clip in enumerate(clips):
        file, prompt, scores = _probe(bundle, path, number, clip)
        files.append(bundle.root / file)
        prompts.append(prompt)
        mi.append(scores[0])
        ta.append(scores[1])
    return ProbeSet(files, prompts, np.array(mi), np.array(ta))


def _probe(bundle: Bundle, path: Path, number: int, clip) -> tuple[str, str, tuple[float, float]]:
    where = f"{path}: probe {number}"
    if not isinstance(clip, dict):
        raise BundleError(f"{where} must be an object, got {_json_type(clip)}")
    file = clip.get("file", MISSING)
    problem = relative_path_problem(file)
    if problem:
        raise BundleError(f"{where}: field file {problem}" if isinstance(file, str) and file
                          else f"{where}: field file must be a file name, got {_json_type(file)}")
    if file not in bundle.files:
        raise BundleError(f"{where} ({file}): probe clip not listed (with its sha256) in manifest.json")
    where = f"{where} ({file})"
    prompt = clip.get("prompt", MISSING)
    if not isinstance(prompt, str) or not prompt.strip():
        raise BundleError(f"{where}: field prompt must be a non-empty string, got {_json_type(prompt)}")
    scores = []
    for key in ("mi", "ta"):
        value = clip.get(key, MISSING)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not SCORE_LIMITS[0] <= value <= SCORE_LIMITS[1]:
            raise BundleError(f"{where}: field {key} must be a number between {SCORE_LIMITS[0]:g} and "
                              f"{SCORE_LIMITS[1]:g} (the stored FP32 score), got {_json_type(value)}")
        scores.append(float(value))
    return file, prompt, (scores[0], scores[1])


def self_check(scorer) -> Comparison:
    """Score the bundle's probes with this scorer's backend and precision; compare with FP32."""
    probes = load_probes(scorer.bundle)
    precision = getattr(scorer.backend, "precision", "fp32")
    scores = scorer.score_batch([str(f) for f in probes.files], probes.prompts)
    # NaN or inf from the graphs is the candidate failing the check (the probe audio is finite),
    # not a bundle that cannot be used: a failed comparison (deramos-run exits 1), said once.
    non_finite = [s for s in scores if not s.ok and NON_FINITE_SCORE in s.error]
    errors = [s.error for s in scores if not s.ok and NON_FINITE_SCORE not in s.error]
    ok = [i for i, s in enumerate(scores) if s.ok]
    if not ok and not non_finite:
        raise BundleError(f"{scorer.bundle.root}: no probe clip could be scored ({errors[0]})")
    problems = [f"the graph produced non-finite scores (NaN or inf) for {len(non_finite)} of "
                f"{len(scores)} probe clips"] if non_finite else []
    names = dict(precision=precision, candidate=scorer.backend.describe(), reference="stored FP32 outputs",
                 source=f"{len(probes.files)} probe clips")
    tolerance = TOLERANCES.get(precision)
    if not ok:
        return Comparison(scores={}, tolerance=tolerance, errors=errors, problems=problems, **names)
    comparison = compare_scores({"MI": probes.mi[ok], "TA": probes.ta[ok]},
                                {"MI": np.array([scores[i].mi for i in ok]), "TA": np.array([scores[i].ta for i in ok])},
                                precision=precision, candidate_name=names["candidate"],
                                reference_name=names["reference"], source=names["source"],
                                tolerance=tolerance, errors=errors)
    comparison.problems = problems
    if precision == "int8":     # what of the graphs is really INT8, as the build stage counted it
        for graph, share in (scorer.bundle.manifest.int8 or {}).get("quantized", {}).items():
            comparison.graphs[graph] = {"int8_ops": share["quantized_ops"], "of_ops": share["quantizable_ops"],
                                        "int8_weight_share": share["quantized_weight_share"]}
            if "quantized_flop_share" in share:   # bundles built before FLOPs were counted lack it
                comparison.graphs[graph]["int8_flop_share"] = share["quantized_flop_share"]
    return comparison

"""Ray Data scoring against the local Scorer on the same clips: clips/s for each.

    python -m deramos.bench.ray_throughput --clips 300 --clip-seconds 10 --cpus 2 [--bundle B]

Writes --clips rendered music clips (WAV) and a manifest, scores them once with the local
Scorer (deramos-run's path: one process, --threads ONNX Runtime threads) and once on a fresh
local Ray cluster of --cpus CPUs (one single-threaded Scorer actor per CPU), checks both give
the same scores, and reports clips/s. The cluster's start-up is timed apart from the run.
Where the difference goes (actor start-up, Ray's cost per row, several raylets):
deramos.bench.scale_overhead.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click
import numpy as np

from ..runtime.cli_common import Command


def write_clips(root: Path, clips: int, seconds: float, rate: int, seed: int = 0) -> list[tuple[str, str]]:
    import soundfile as sf

    from ..data.synth.music import SAMPLE_RATE, prompt_for, random_attributes, render_clip
    from ..runtime.audio import resample

    rng = np.random.default_rng(seed)
    pairs = []
    for index in range(clips):
        attrs = random_attributes(rng)
        path = root / f"clip{index:05d}.wav"
        sf.write(str(path), resample(render_clip(attrs, rng, SAMPLE_RATE, seconds), SAMPLE_RATE, rate), rate,
                 subtype="PCM_16")
        pairs.append((str(path), prompt_for(attrs, rng)))
    return pairs


def local_run(bundle: str, pairs, threads: int) -> tuple[float, list]:
    from ..runtime.scorer import Scorer

    with Scorer.load(bundle, backend="onnxruntime-cpu", threads=threads) as scorer:
        start = time.perf_counter()
        scores = [(round(s.mi, 4), round(s.ta, 4)) for s in scorer.iter_scores(pairs)]
        return time.perf_counter() - start, scores


def ray_run(bundle: str, pairs, cpus: int, out: Path) -> tuple[float, float, list]:
    import ray

    from ..scale.batch import Row, ScoringOptions, score_rows
    from ..scale.cluster import start_local

    start = time.perf_counter()
    start_local(num_cpus=cpus)          # on 127.0.0.1 only
    startup = time.perf_counter() - start
    rows = [Row(i + 1, {"path": p, "prompt": q}, p, q) for i, (p, q) in enumerate(pairs)]
    try:
        start = time.perf_counter()
        score_rows(rows, out, ScoringOptions(bundle, "onnxruntime-cpu"))
        seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    scores = [(r["mi"], r["ta"]) for r in map(json.loads, out.read_text().splitlines())]
    return startup, seconds, scores


@click.command(cls=Command, help=__doc__, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--bundle", type=click.Path(), help="Bundle (default: $DERAMOS_BUNDLE, else the default model).")
@click.option("--clips", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--clip-seconds", type=click.FloatRange(min=0.5), default=10.0, show_default=True)
@click.option("--cpus", type=click.IntRange(min=1), default=2, show_default=True, help="Ray CPUs = actors; local threads.")
def main(bundle, clips, clip_seconds, cpus):
    from ..runtime.default import resolve_bundle_dir

    bundle = str(resolve_bundle_dir(bundle).resolve())
    rate = json.loads((Path(bundle) / "manifest.json").read_text())["sample_rate"]
    with tempfile.TemporaryDirectory(prefix="deramos-ray-bench-") as scratch:
        pairs = write_clips(Path(scratch), clips, clip_seconds, rate)
        local_s, local_scores = local_run(bundle, pairs, cpus)
        startup_s, ray_s, ray_scores = ray_run(bundle, pairs, cpus, Path(scratch) / "out.jsonl")
    same = "identical" if local_scores == ray_scores else "DIFFERENT"
    click.echo(f"{clips} clips x {clip_seconds:g} s, {cpus} CPUs; scores {same}")
    click.echo(f"local Scorer ({cpus} threads): {clips / local_s:6.1f} clips/s ({local_s:.1f} s)")
    click.echo(f"Ray Data ({cpus} actors):      {clips / ray_s:6.1f} clips/s ({ray_s:.1f} s; cluster start {startup_s:.1f} s)")


if __name__ == "__main__":
    main()

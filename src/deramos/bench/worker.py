"""One measured backend, in its own process so that its peak resident memory is its own.

    python -m deramos.bench.worker SPEC.json  ->  one JSON line on stdout

The spec names the backend (`torch-eager` or a runtime backend + precision), the bundle or
checkpoint, the inputs (.npz written by the orchestrator, identical for every backend),
the batch sizes, the time budget and the thread count; `"mode": "reward"` measures the
reward loop (best-of-N through `Scorer.select`) instead of the bare graphs.
"""
from __future__ import annotations

import itertools
import json
import resource
import sys
import time

import numpy as np

from deramos.runtime.contract import AUDIO_ENCODER, HEADS, TEXT_ENCODER
from deramos.runtime.errors import one_line


def _batches(inputs, batch_size: int):
    """The first `batch_size` clips and prompts: waveform, lengths, token ids, attention mask."""
    return tuple(x[:batch_size] for x in (*AUDIO_ENCODER.inputs_of(inputs), *TEXT_ENCODER.inputs_of(inputs)))


def _time_loop(step, seconds: float, min_repeats: int = 3) -> list[float]:
    step()   # warm-up: allocations, graph optimisation, lazy initialisation
    times, start = [], time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def torch_step(spec, inputs):
    import torch

    from deramos.model.checkpoint import load_checkpoint
    from deramos.model.network import DeRAMOS

    torch.set_num_threads(spec["threads"])
    from deramos.model.config import ModelConfig

    # Speed does not depend on the weights: the bundle's architecture with random weights will do.
    model = load_checkpoint(spec["checkpoint"]) if spec.get("checkpoint") else \
        DeRAMOS(ModelConfig.from_dict(spec["config"])).eval()

    def make(batch_size):
        wave, lengths, ids, mask = (torch.from_numpy(x) for x in _batches(inputs, batch_size))

        @torch.no_grad()
        def step():
            frames, frame_mask = model.audio_encoder(wave, lengths)
            tokens = model.text_encoder(ids, mask)
            return model.heads(frames, frame_mask, tokens, mask.bool())["mi"]
        return step
    make.model = model
    return make


def flops_per_clip(model, inputs) -> float:
    """FLOPs of one clip through the whole model (matmuls and convolutions, 2 per MAC)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    wave, lengths, ids, mask = (torch.from_numpy(x) for x in _batches(inputs, 1))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        frames, frame_mask = model.audio_encoder(wave, lengths)
        model.heads(frames, frame_mask, model.text_encoder(ids, mask), mask.bool())
    return float(counter.get_total_flops())


def matmul_gflops(threads: int, n: int = 2048, seconds: float = 2.0) -> float:
    """The machine's fp32 matrix-multiply rate with this many threads (the ceiling to compare with)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    times = _time_loop(lambda: a @ b, seconds)
    return 2 * n ** 3 / float(np.median(times)) / 1e9


def runtime_step(spec, inputs):
    from deramos.runtime.backends import open_backend
    from deramos.runtime.bundle import load_bundle

    backend = open_backend(spec["backend"], load_bundle(spec["bundle"]), spec["precision"], spec["threads"])

    def make(batch_size):
        wave, lengths, ids, mask = _batches(inputs, batch_size)

        def step():
            mi, _ta, *_ = HEADS.outputs_of(backend.run_pipeline(wave, lengths, ids, mask))
            return mi
        return step
    return make


def reward_loop(spec: dict, inputs: dict) -> dict:
    """Best-of-N inside a generator's sampling loop: per prompt, `Scorer.select` over N candidate
    clips, through the scorer a generator would embed, once per batch size. A new prompt each
    time (cycling through the inputs' prompts, so the prompt cache is as cold as a real loop's)."""
    from deramos.runtime.scorer import Scorer

    waves, _ = AUDIO_ENCODER.inputs_of(inputs)
    pool = list(waves[: spec["candidates"]])
    prompts = [str(p) for p in inputs["prompts"]]
    results = {}
    for batch_size in spec["batch_sizes"]:
        scorer = Scorer.load(spec["bundle"], backend=spec["backend"], precision=spec["precision"],
                             threads=spec["threads"], batch_size=batch_size)
        turn = itertools.count()

        def step():
            chosen = scorer.select(pool, f"{prompts[next(turn) % len(prompts)]} ({batch_size})",
                                   sample_rate=scorer.bundle.sample_rate, k=1)
            failed = [s.error for s in chosen.all_scores if not s.ok]
            if failed:   # a loop that scores nothing would look very fast
                raise RuntimeError(f"reward loop: {len(failed)} of {len(pool)} candidates failed: {failed[0]}")
        times = _time_loop(step, spec["seconds"])
        scorer.close()
        results[str(batch_size)] = {
            "prompts": len(times), "candidates_per_second": len(pool) / float(np.mean(times)),
            "p50_ms": 1000 * float(np.percentile(times, 50)), "p95_ms": 1000 * float(np.percentile(times, 95)),
            "times_s": [round(t, 6) for t in times]}     # rounds of one row are merged from these (bench/cli.py)
    return {"backend": spec["backend"], "precision": spec["precision"], "candidates": len(pool), "batch": results,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(spec: dict) -> dict:
    inputs = dict(np.load(spec["inputs"]))
    if spec.get("mode") == "reward":
        return reward_loop(spec, inputs)
    make = torch_step(spec, inputs) if spec["backend"] == "torch-eager" else runtime_step(spec, inputs)
    results = {}
    for batch_size in spec["batch_sizes"]:
        times = _time_loop(make(batch_size), spec["seconds"])
        results[str(batch_size)] = {
            "batches": len(times), "clips_per_second": batch_size / float(np.mean(times)),
            "p50_ms": 1000 * float(np.percentile(times, 50)), "p95_ms": 1000 * float(np.percentile(times, 95))}
    report = {"backend": spec["backend"], "precision": spec.get("precision", "fp32"), "batch": results,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if spec["backend"] == "torch-eager":
        report["flops_per_clip"] = flops_per_clip(make.model, inputs)
        report["matmul_gflops"] = matmul_gflops(spec["threads"])
    return report


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    try:
        print(json.dumps(measure(spec)))
    except Exception as err:  # noqa: BLE001 - reported as a skipped row, never a crash
        print(json.dumps({"backend": spec["backend"], "precision": spec.get("precision"),
                          "error": one_line(err)[:300]}))


if __name__ == "__main__":
    main()

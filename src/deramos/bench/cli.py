"""`deramos-bench`: every backend on the same inputs, in one run, as ratios to PyTorch eager.

Rows: PyTorch eager (the training model), ONNX Runtime CPU FP32 / FP16 / INT8, and the
GPU backends (TensorRT, ONNX Runtime CUDA/TensorRT) where they load. Each row runs in its own
process (bench/worker.py) so its peak resident memory is its own. Then, in this process with
the runtime only: the cost of encoding a prompt with and without the prompt cache. Then the
reward loop (best-of-8 through `Scorer.select`, a new prompt each time) on every CPU precision
at several scorer batch sizes, each in its own worker (its peak memory is its own), optionally
also on a baseline bundle (`--baseline-bundle`) so that a speed-up is a ratio in one run. The
reward loop runs in interleaved rounds (`--rounds`): on a shared machine whose load drifts during
a run, each round's ratio is taken against the same round's baseline, and the spread of those
ratios is printed beside their median.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

from ..model.config import PRESETS
from ..runtime.cli_common import Command, errors_as_messages, stderr_line
from ..runtime.errors import DeramosError

CPU_ROWS = [("torch-eager", "fp32"), ("onnxruntime-cpu", "fp32"), ("onnxruntime-cpu", "fp16"), ("onnxruntime-cpu", "int8")]
GPU_ROWS = [("tensorrt", "fp16"), ("tensorrt", "int8"), ("onnxruntime-tensorrt", "fp16"), ("onnxruntime-cuda", "fp32"),
            ("onnxruntime-cuda", "fp16")]


def make_inputs(bundle, clips: int, seconds: float, path: Path, seed: int = 0) -> None:
    """`clips` rendered music clips of `seconds` each and their prompts, tokenised."""
    from ..data.synth.music import SAMPLE_RATE, prompt_for, random_attributes, render_clip
    from ..runtime.audio import resample
    from ..runtime.contract import AUDIO_ENCODER, TEXT_ENCODER, seconds_to_samples
    from ..runtime.text import PromptTokenizer

    rng = np.random.default_rng(seed)
    waves, prompts = [], []
    for _ in range(clips):
        attrs = random_attributes(rng)
        audio = resample(render_clip(attrs, rng, SAMPLE_RATE, seconds), SAMPLE_RATE, bundle.sample_rate)
        waves.append(np.resize(audio, seconds_to_samples(seconds, bundle.sample_rate)))
        prompts.append(prompt_for(attrs, rng))
    ids, mask = PromptTokenizer(bundle.tokenizer_file, bundle.max_tokens).encode(prompts)
    np.savez(path, **AUDIO_ENCODER.feeds(np.stack(waves).astype(np.float32), np.array([len(w) for w in waves], np.int64)),
             **TEXT_ENCODER.feeds(ids, mask), prompts=np.array(prompts))


def bundle_flops_per_clip(bundle, inputs: Path) -> float:
    """FLOPs of one clip through this bundle's FP32 audio and text encoder graphs (their MatMuls,
    Gemms and Convs on the first benchmark clip and prompt): what the ONNX Runtime rows run, where
    PyTorch eager's count is the model as this code builds it (the two differ for a bundle
    exported by other code)."""
    from ..calibration.quantize import op_flops
    from ..runtime.contract import AUDIO_ENCODER, TEXT_ENCODER

    data = np.load(inputs)
    total = 0.0
    for graph, spec in (("audio_encoder", AUDIO_ENCODER), ("text_encoder", TEXT_ENCODER)):
        feeds = {name: data[name][:1] for name in spec.input_names}
        total += sum(op_flops(bundle.graph_path(graph, "fp32"), feeds).values())
    return total


def run_worker(spec: dict, workdir: Path) -> dict:
    spec_path = workdir / f"spec-{spec['backend']}-{spec['precision']}.json"
    spec_path.write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, "-m", "deramos.bench.worker", str(spec_path)],
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = " ".join(done.stderr.split()[-30:])
        return {"backend": spec["backend"], "precision": spec["precision"], "error": f"worker failed: {tail}"}
    return json.loads(lines[-1])


def prompt_cache_cost(bundle, threads: int, repeats: int = 20) -> dict:
    """ms to encode one prompt through the text graph vs. a prompt-cache hit."""
    from ..runtime.scorer import Scorer

    scorer = Scorer.load(str(bundle.root), backend="onnxruntime-cpu", threads=threads)
    prompts = [f"a calm piano piece number {i} with soft strings" for i in range(repeats)]
    start = time.perf_counter()
    for prompt in prompts:
        scorer._prompt_tokens(prompt)          # miss: runs the text encoder
    miss = (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    for prompt in prompts:
        scorer._prompt_tokens(prompt)          # hit
    hit = (time.perf_counter() - start) / repeats
    scorer.close()
    return {"uncached_ms": 1000 * miss, "cached_ms": 1000 * hit, "speedup": miss / max(hit, 1e-9)}


def reward_rows(bundle, base: dict, workdir: Path, say, label: str, round_note: str = "") -> list[dict]:
    """The reward loop on every CPU precision the bundle has, each in its own worker process."""
    rows = []
    for backend, precision in CPU_ROWS[1:]:
        if precision in bundle.precisions():
            say(f"measuring the reward loop: {label} {backend} {precision}{round_note} ...")
            spec = dict(base, mode="reward", bundle=str(bundle.root), backend=backend, precision=precision)
            rows.append(dict(run_worker(spec, workdir), bundle=label))
    return rows


def reward_rounds(bundles: list[tuple[str, object]], base: dict, workdir: Path, say, rounds: int = 1) -> list[dict]:
    """reward_rows of every (label, bundle), `rounds` times in turn with base["seconds"] / rounds each,
    merged into one row per (label, backend, precision) in first-measured order."""
    measured: dict[tuple, list[dict]] = {}
    for index in range(rounds):
        note = f" (round {index + 1} of {rounds})" if rounds > 1 else ""
        for label, bundle in bundles:
            for row in reward_rows(bundle, dict(base, seconds=base["seconds"] / rounds), workdir, say, label, note):
                measured.setdefault((label, row["backend"], row["precision"]), []).append(row)
    return [merge_rounds(rows) for rows in measured.values()]


def merge_rounds(rows: list[dict]) -> dict:
    """Rounds of one reward-loop row -> one row: statistics over all their prompts, each round's
    candidates/s kept (`rounds_cps`) for per-round ratios; the first failed round stands for the row."""
    failed = [r for r in rows if "error" in r]
    if failed:
        return failed[0]
    merged = dict(rows[0], batch={}, peak_rss_mb=max(r["peak_rss_mb"] for r in rows), rounds=len(rows))
    for b in rows[0]["batch"]:
        times = np.concatenate([r["batch"][b]["times_s"] for r in rows])
        merged["batch"][b] = {
            "prompts": len(times), "candidates_per_second": merged["candidates"] / float(np.mean(times)),
            "p50_ms": 1000 * float(np.percentile(times, 50)), "p95_ms": 1000 * float(np.percentile(times, 95)),
            "rounds_cps": [r["batch"][b]["candidates_per_second"] for r in rows]}
    return merged


def round_ratios(row: dict, base_row: dict | None, batch: str) -> list[float]:
    """Each round's candidates/s against the same round's baseline at the same batch size."""
    if base_row is None or batch not in base_row.get("batch", {}):
        return []
    mine = row["batch"][batch].get("rounds_cps", [row["batch"][batch]["candidates_per_second"]])
    theirs = base_row["batch"][batch].get("rounds_cps", [base_row["batch"][batch]["candidates_per_second"]])
    return [a / b for a, b in zip(mine, theirs)] if len(mine) == len(theirs) else []


def embedded_preset() -> str | None:
    """The preset of the embedded default model, or None when there is none (or it is unreadable)."""
    from ..runtime.paths import default_checkpoint_dir

    found = default_checkpoint_dir()
    try:
        return json.loads((found / "config.json").read_text())["model"]["name"] if found else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def default_checkpoint_of(preset_name: str) -> Path | None:
    """The embedded default checkpoint when it is of this preset (its trained weights), else None."""
    from ..runtime.paths import default_checkpoint_dir

    return default_checkpoint_dir() if embedded_preset() == preset_name else None


def ensure_bundle(bundle_dir: str | None, preset_name: str, workdir: Path, say) -> Path:
    if bundle_dir:
        return Path(bundle_dir)
    out = workdir / f"bundle-{preset_name}"
    cmd = [sys.executable, "-m", "deramos.export.cli", "--out", str(out), "--fp16", "--int8",
           "--calib-clips", "8", "--validate-clips", "16"]
    checkpoint = default_checkpoint_of(preset_name)
    cmd += ["--checkpoint", str(checkpoint)] if checkpoint else ["--preset", preset_name, "--no-validate"]
    say(f"exporting a {preset_name} bundle for the benchmark: {' '.join(cmd[2:])}")
    done = subprocess.run(cmd)
    # exit 1: a precision missed its check against FP32 and was left out; the rest is measured
    if done.returncode not in (0, 1) or not (out / "manifest.json").is_file():
        raise DeramosError(f"{out}: exporting the benchmark bundle failed (exit {done.returncode})")
    return out


def format_table(report: dict) -> str:
    rows = report["rows"]
    base = {b: r["batch"][b]["clips_per_second"] for r in rows if r["backend"] == "torch-eager" and "batch" in r
            for b in r["batch"]}
    flops = report.get("flops_per_clip")
    graph_flops = report.get("bundle_flops_per_clip") or flops      # what the non-eager rows run
    lines = [f"{'backend':22s} {'prec':5s} {'batch':>5s} {'clips/s':>8s} {'p50 ms':>9s} {'p95 ms':>9s} "
             f"{'peak MB':>8s} {'x eager':>7s} {'GFLOP/s':>8s}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['backend']:22s} {r['precision']:5s}  skipped: {r['error'][:90]}")
            continue
        for b, m in r["batch"].items():
            ratio = m["clips_per_second"] / base[b] if b in base else float("nan")
            count = flops if r["backend"] == "torch-eager" else graph_flops
            gflops = count * m["clips_per_second"] / 1e9 if count else float("nan")
            lines.append(f"{r['backend']:22s} {r['precision']:5s} {b:>5s} {m['clips_per_second']:8.2f} {m['p50_ms']:9.1f} "
                         f"{m['p95_ms']:9.1f} {r['peak_rss_mb']:8.0f} {ratio:7.2f} {gflops:8.1f}")
    if report.get("matmul_gflops"):
        lines.append(f"machine fp32 matmul: {report['matmul_gflops']:.1f} GFLOP/s ({report['threads']} threads); "
                     f"model: {flops / 1e9:.1f} GFLOP per {report['clip_seconds']:g} s clip")
    if report.get("bundle_flops_per_clip"):
        lines.append(f"this bundle's audio and text encoder graphs: {report['bundle_flops_per_clip'] / 1e9:.1f} GFLOP per "
                     f"clip (the GFLOP/s of the rows other than PyTorch eager)")
    if "prompt_cache" in report:
        p = report["prompt_cache"]
        lines.append(f"prompt encoding: {p['uncached_ms']:.2f} ms uncached, {p['cached_ms']:.4f} ms cached "
                     f"({p['speedup']:.0f}x)")
    if report.get("reward_loop"):
        lines += format_reward(report["reward_loop"], report["clip_seconds"])
    return "\n".join(lines)


def format_reward(rows: list[dict], clip_seconds: float) -> list[str]:
    """Reward-loop rows; 'x base' is candidates/s against the baseline bundle's FP32 at the same
    batch size: the median of the rounds' ratios, each round against its own baseline, with their
    range when there were several rounds."""
    base_row = next((r for r in rows if r.get("bundle") == "baseline" and r["precision"] == "fp32" and "batch" in r), None)
    shown = next((r["candidates"] for r in rows if "candidates" in r), "N")
    rounds = max((r.get("rounds", 1) for r in rows), default=1)
    lines = [f"reward loop: best-of-{shown}, {clip_seconds:g} s clips, a new prompt each time"
             + (f"; {rounds} interleaved rounds" if rounds > 1 else ""),
             f"{'bundle':8s} {'backend':16s} {'prec':5s} {'batch':>5s} {'cand/s':>8s} {'p50 ms':>9s} {'p95 ms':>9s} "
             f"{'peak MB':>8s} {'x base':>7s}" + ("  rounds" if rounds > 1 else "")]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['bundle']:8s} {r['backend']:16s} {r['precision']:5s}  skipped: {r['error'][:80]}")
            continue
        for b, m in r["batch"].items():
            ratios = round_ratios(r, base_row, b)
            ratio = float(np.median(ratios)) if ratios else float("nan")
            spread = f"  {min(ratios):.2f}-{max(ratios):.2f}" if len(ratios) > 1 else ""
            lines.append(f"{r['bundle']:8s} {r['backend']:16s} {r['precision']:5s} {b:>5s} {m['candidates_per_second']:8.2f} "
                         f"{m['p50_ms']:9.0f} {m['p95_ms']:9.0f} {r['peak_rss_mb']:8.0f} {ratio:7.2f}{spread}")
    return lines


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--preset", "preset_name", type=click.Choice(sorted(PRESETS)), default=lambda: embedded_preset() or "small",
              show_default="the default model's",
              help="Model to measure when no --bundle is given: the embedded default model's weights for its preset, "
                   "random weights for the others (speed does not depend on them).")
@click.option("--bundle", type=click.Path(exists=True, file_okay=False), help="Measure this bundle instead.")
@click.option("--batch-sizes", default="1,8", show_default=True, help="Comma-separated batch sizes.")
@click.option("--seconds", default=10.0, show_default=True, help="Time budget per backend and batch size.")
@click.option("--clip-seconds", type=float, help="Length of each input clip [the model's window].")
@click.option("--threads", type=int, default=lambda: os.cpu_count(), show_default="all cores", help="Same for every backend.")
@click.option("--gpu/--no-gpu", default=True, show_default=True, help="Try the GPU backends.")
@click.option("--no-extras", is_flag=True, help="Skip the prompt-cache and reward-loop measurements.")
@click.option("--reward-batch-sizes", default="1,4,8,16", show_default=True,
              help="Scorer batch sizes for the reward loop (best-of-N through Scorer.select, one row per CPU precision).")
@click.option("--candidates", type=click.IntRange(min=2), default=8, show_default=True,
              help="Candidates per prompt in the reward loop.")
@click.option("--baseline-bundle", type=click.Path(exists=True, file_okay=False),
              help="Also run the reward loop on this bundle (e.g. the previous release's export): ratios in one run.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Interleaved rounds of the reward loop (each row gets --seconds in all): every round's ratio is "
                   "against the same round's baseline, so load that drifts during the run touches both alike.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the full report here.")
def main(preset_name, bundle, batch_sizes, seconds, clip_seconds, threads, gpu, no_extras, reward_batch_sizes,
         candidates, baseline_bundle, rounds, json_path):
    """Throughput, latency and memory of every backend on the same inputs, vs PyTorch eager.

    \b
    Examples:
      deramos-bench --batch-sizes 1,8 --json bench.json
      deramos-bench --preset paper --batch-sizes 4 --clip-seconds 30 --seconds 60
    """
    from ..runtime.bundle import load_bundle, plain

    say = stderr_line
    sizes = [int(s) for s in batch_sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="deramos-bench-") as tmp, errors_as_messages(ValueError, OSError):
        workdir = Path(tmp)
        bundle_obj = load_bundle(ensure_bundle(bundle, preset_name, workdir, say))
        clip_seconds = clip_seconds or bundle_obj.window_seconds
        make_inputs(bundle_obj, max(*sizes, candidates), clip_seconds, workdir / "inputs.npz")
        base = {"inputs": str(workdir / "inputs.npz"), "batch_sizes": sizes, "seconds": seconds, "threads": threads,
                "bundle": str(bundle_obj.root), "config": plain(bundle_obj.manifest.model_config)}
        rows = []
        for backend, precision in CPU_ROWS + (GPU_ROWS if gpu else []):
            if precision not in bundle_obj.precisions():
                continue
            say(f"measuring {backend} {precision} ...")
            rows.append(run_worker(dict(base, backend=backend, precision=precision), workdir))
        eager = next((r for r in rows if r["backend"] == "torch-eager" and "error" not in r), {})
        report = {"bundle": str(bundle), "model": bundle_obj.manifest.model_name, "threads": threads,
                  "clip_seconds": clip_seconds, "batch_sizes": sizes, "rows": rows,
                  "flops_per_clip": eager.get("flops_per_clip"), "matmul_gflops": eager.get("matmul_gflops"),
                  "bundle_flops_per_clip": bundle_flops_per_clip(bundle_obj, workdir / "inputs.npz")}
        if not no_extras:
            say("measuring the prompt cache ...")
            report["prompt_cache"] = prompt_cache_cost(bundle_obj, threads)
            reward = dict(base, batch_sizes=[int(b) for b in reward_batch_sizes.split(",")], candidates=candidates)
            bundles = [("this", bundle_obj)] + ([("baseline", load_bundle(baseline_bundle))] if baseline_bundle else [])
            report["reward_loop"] = reward_rounds(bundles, reward, workdir, say, rounds)
    click.echo(format_table(report))
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2))
        say(f"report written to {json_path}")


if __name__ == "__main__":
    main()

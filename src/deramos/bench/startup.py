"""How long `deramos-run clip.wav "prompt"` takes warm, against the floor of any Python scorer.

    python -m deramos.bench.startup [--bundle B] [--runs 7] [--json out.json]

Warm: the bundle already exported and its files already verified once. Each round runs, as
fresh processes and interleaved so machine load hits them alike:
  floor      python -c "import numpy, onnxruntime, soundfile, tokenizers"  (imports only)
  run        deramos-run CLIP PROMPT                       (hash memo, parallel session opening)
  run-full   the same with DERAMOS_VERIFY=full             (every bundle byte hashed again)
and reports medians, run/floor, and where the time of one load goes in this process
(import, bundle verification with and without the memo, sessions one by one and side by side,
tokenizer, the first score).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click

from ..runtime.cli_common import Command, stderr_line
from ..runtime.errors import DeramosError

FLOOR = "import numpy, onnxruntime, soundfile, tokenizers"


def _wall(cmd: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise DeramosError(f"{' '.join(cmd[:3])} failed: {' '.join(done.stderr.split()[-20:])}")
    return elapsed


def process_rounds(bundle: str | None, clip: str, prompt: str, runs: int) -> dict:
    """bundle None: the default bundle, found as `deramos-run` finds it (checkpoint hash included)."""
    run = [sys.executable, "-m", "deramos.runtime.cli", *(["--bundle", bundle] if bundle else []), clip, prompt]
    full_env = dict(os.environ, DERAMOS_VERIFY="full")
    _wall(run)                                      # warms the memo and the page cache
    times = {"floor": [], "run": [], "run-full": []}
    for _ in range(runs):
        times["floor"].append(_wall([sys.executable, "-c", FLOOR]))
        times["run"].append(_wall(run))
        times["run-full"].append(_wall(run, full_env))
    return {name: statistics.median(values) for name, values in times.items()}


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def load_breakdown(bundle_dir: str, clip: str, prompt: str) -> dict:
    """Seconds for each step of Scorer.load + one score, in this process."""
    from ..runtime.backends import OrtBackend
    from ..runtime.bundle import load_bundle, verify_files
    from ..runtime.contract import GRAPHS
    from ..runtime.scorer import Scorer
    from ..runtime.text import PromptTokenizer

    bundle, verify_memo = _timed(lambda: load_bundle(bundle_dir, verify=True))
    _, verify_full = _timed(lambda: verify_files(bundle.root, bundle.files, memo=False))
    backend = OrtBackend(bundle)   # ORT's one-time set-up happens here, before graphs are timed
    per_graph = {g: _timed(lambda g=g: backend._open(g))[1] for g in GRAPHS}
    with ThreadPoolExecutor(len(GRAPHS)) as pool:
        _, side_by_side = _timed(lambda: list(pool.map(backend._open, GRAPHS)))
    _, tokenizer = _timed(lambda: PromptTokenizer(bundle.tokenizer_file, bundle.max_tokens))
    scorer, load = _timed(lambda: Scorer.load(bundle_dir, backend="onnxruntime-cpu"))
    _, first = _timed(lambda: scorer.score(clip, prompt))
    return {"verify_memo_s": verify_memo, "verify_full_s": verify_full,
            **{f"open_{g}_s": t for g, t in per_graph.items()}, "open_sequential_s": sum(per_graph.values()),
            "open_side_by_side_s": side_by_side, "tokenizer_s": tokenizer, "scorer_load_s": load,
            "first_score_s": first}


def format_report(report: dict) -> str:
    p = report["processes"]
    lines = [f"warm deramos-run, median of {report['runs']} fresh processes per row (interleaved):",
             f"  floor (imports only)     {p['floor']:.3f} s",
             f"  deramos-run              {p['run']:.3f} s   {p['run'] / p['floor']:.2f}x floor",
             f"  deramos-run, full hash   {p['run-full']:.3f} s   {p['run-full'] / p['floor']:.2f}x floor",
             "one load in this process:"]
    lines += [f"  {name[:-2]:22s} {value:.3f} s" for name, value in report["breakdown"].items()]
    return "\n".join(lines)


@click.command(cls=Command, help=__doc__.split("\n\n")[0])
@click.option("--bundle", "bundle_dir", default=None, help="Bundle to start (default: the default bundle).")
@click.option("--clip", default=None, help="Clip to score (default: the first of examples/prompts.jsonl in the checkout).")
@click.option("--prompt", default="calm piano", show_default=True, help="Prompt for --clip.")
@click.option("--runs", default=7, show_default=True, help="Fresh processes per row.")
@click.option("--json", "json_out", default=None, help="Also write the report as JSON here.")
def main(bundle_dir, clip, prompt, runs, json_out):
    from ..runtime.default import resolve_bundle_dir

    resolved = str(resolve_bundle_dir(bundle_dir, say=stderr_line))
    if clip is None:   # the first of the checkout's examples, with its matching prompt
        examples = Path(__file__).resolve().parents[1] / "examples"
        first = json.loads((examples / "prompts.jsonl").read_text(encoding="utf-8").splitlines()[0])
        clip, prompt = str(examples / first["path"]), first["prompt"]
    report = {"bundle": resolved, "clip": clip, "runs": runs,
              "processes": process_rounds(bundle_dir, clip, prompt, runs),
              "breakdown": load_breakdown(resolved, clip, prompt)}
    click.echo(format_report(report))
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

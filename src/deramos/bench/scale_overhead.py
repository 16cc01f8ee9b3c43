"""Where Ray pays: one manifest scored locally and on Ray clusters of 1 and 2 raylets on loopback.

    python -m deramos.bench.scale_overhead --clips 120 --clip-seconds 4 --nodes 1,2 [--bundle B] [--json F]

Writes --clips rendered music clips and scores them, all in one run, with:

  local    the Scorer in this process (deramos-run's path) with --cpus ONNX Runtime threads
           (and with 1 thread, the per-actor setting);
  ray N    deramos.scale.score_rows on a LoopbackCluster of N raylets (ray start --head plus
           N-1 `ray start --address` nodes, every process on 127.0.0.1), --cpus CPUs in all,
           one single-threaded Scorer actor per CPU.

For each Ray cluster it measures: the cluster's start; one actor's start-up (a Scorer actor
created and ready, against Scorer.load in this process); the memory probe that sizes the pool;
the run (rows/s overall, the time to the first result, and rows/s from the first result to the
last, the first task's rows not counted); and Ray's own cost, from the same pipeline with an actor that scores nothing
(from_items -> map_batches -> iter_batches -> the result writer) over --noop-rows and 4x as
many rows: the difference gives the cost per row, the rest the fixed cost of a run (the pool's
start). Scores must be identical in every run. Timings are ratios against the local run
measured in the same process, minutes apart: the machine's load moves them all.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click

from ..runtime.cli_common import Command


@dataclass
class RayMeasure:
    nodes: int
    cluster_start_s: float
    actor_startup_s: list[float]
    memory_probe_s: float
    actor_memory_gib: float         # requested per actor (the probe's peak x the margin)
    actor_peak_rss_gib: float       # the largest resident size an actor process reached in the run
    actors: int
    run_s: float
    first_result_s: float
    rows_per_s: float
    steady_rows_per_s: float
    noop_fixed_s: float
    overhead_ms_per_row: float
    identical: bool


@dataclass
class Report:
    clips: int
    clip_seconds: float
    cpus: int
    local_load_s: float
    local_s: float
    local_rows_per_s: float
    local_1thread_s: float
    local_1thread_rows_per_s: float
    ray: list[RayMeasure] = field(default_factory=list)


class NoopScorer:
    """The score_rows actor without the scoring: what Ray Data costs per row."""

    def __init__(self, options):
        pass

    def __call__(self, batch):
        import pyarrow as pa

        return pa.table({"row": batch.column("row"),
                         "outcome": pa.array(["[3.0, 3.0, null]"] * batch.num_rows, pa.string())})


class _ActorMemory:
    """The peak resident size of the scoring actors' processes (psutil, every 0.2 s)."""

    def __init__(self):
        self.peak, self._stop, self._thread = 0, threading.Event(), None

    def _sample(self) -> None:
        import psutil

        while not self._stop.wait(0.2):
            for process in psutil.process_iter(["cmdline", "memory_info"]):
                command = " ".join(process.info["cmdline"] or [])
                if "MapWorker" in command and "PackedScorer" in command and process.info["memory_info"]:
                    self.peak = max(self.peak, process.info["memory_info"].rss)

    def __enter__(self) -> "_ActorMemory":
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _local(bundle: str, pairs, threads: int) -> tuple[float, float, list]:
    from ..runtime.scorer import Scorer

    start = time.perf_counter()
    scorer = Scorer.load(bundle, backend="onnxruntime-cpu", threads=threads)
    load = time.perf_counter() - start
    with scorer:
        start = time.perf_counter()
        scores = [(round(s.mi, 4), round(s.ta, 4)) for s in scorer.iter_scores(pairs)]
        return load, time.perf_counter() - start, scores


def _actor_startup(options, repeats: int) -> list[float]:
    """Seconds from creating a Scorer actor to its being ready (the Scorer loaded), each a new
    worker process."""
    import ray

    from ..scale.batch import PackedScorer

    times = []
    remote = ray.remote(num_cpus=1, max_restarts=0)(PackedScorer)
    for _ in range(repeats):
        start = time.perf_counter()
        actor = remote.remote(options)
        ray.get(actor.__ray_ready__.remote())
        times.append(time.perf_counter() - start)
        ray.kill(actor)
    return times


def _ray(bundle: str, pairs, nodes: int, cpus: int, scratch: Path, local_scores: list, noop_rows: int) -> RayMeasure:
    from ..scale.batch import Row, ScoringOptions, measure_actor_memory, plan_pool, score_rows
    from ..scale.cluster import LoopbackCluster

    rows = [Row(i + 1, {"path": p, "prompt": q}, p, q) for i, (p, q) in enumerate(pairs)]
    if cpus % nodes:
        raise click.BadParameter(f"--cpus {cpus} does not split evenly over {nodes} nodes")
    start = time.perf_counter()
    with LoopbackCluster(nodes=nodes, cpus_per_node=cpus // nodes):
        cluster_start = time.perf_counter() - start
        start = time.perf_counter()          # measured every time here (a run takes it from the cache)
        options = ScoringOptions(bundle, "onnxruntime-cpu",
                                 actor_memory=measure_actor_memory(ScoringOptions(bundle, "onnxruntime-cpu")))
        memory_probe = time.perf_counter() - start
        options, shape = plan_pool(options)
        startup = _actor_startup(options, 2)

        times = []
        out = scratch / f"ray{nodes}.jsonl"
        with _ActorMemory() as actor_rss:
            run_start = time.perf_counter()
            score_rows(rows, out, options, on_result=lambda row, result: times.append(time.perf_counter()))
            run = time.perf_counter() - run_start
        scores = [(r["mi"], r["ta"]) for r in map(json.loads, out.read_text().splitlines())]
        # Results come back a task at a time: the rows of the first task are not counted.
        first_task = sum(t - times[0] < 0.05 for t in times)
        steady = ((len(times) - first_task) / (times[-1] - times[0]) if times[-1] - times[0] > 0.05
                  else float("nan"))

        # The same pipeline with the scoring left out, at two sizes: Ray Data's own cost per row
        # (the slope) and per run (the rest: the pool's start, the first tasks).
        noop = {}
        for count in (noop_rows, 4 * noop_rows):
            filler = [Row(i + 1, {"path": "x.wav", "prompt": "p"}, "x.wav", "p") for i in range(count)]
            start = time.perf_counter()
            score_rows(filler, scratch / f"noop{nodes}-{count}.jsonl", options, actor=NoopScorer)
            noop[count] = time.perf_counter() - start
        per_row = (noop[4 * noop_rows] - noop[noop_rows]) / (3 * noop_rows)
    return RayMeasure(nodes, cluster_start, startup, memory_probe, options.actor_memory / 2**30,
                      actor_rss.peak / 2**30, shape.actors, run,
                      times[0] - run_start, len(rows) / run, steady, noop[noop_rows] - per_row * noop_rows,
                      1000 * per_row, scores == local_scores)


@click.command(cls=Command, help=__doc__, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--bundle", type=click.Path(), help="Bundle (default: $DERAMOS_BUNDLE, else the default model).")
@click.option("--clips", type=click.IntRange(min=1), default=120, show_default=True)
@click.option("--clip-seconds", type=click.FloatRange(min=0.5), default=4.0, show_default=True)
@click.option("--cpus", type=click.IntRange(min=1), default=2, show_default=True,
              help="CPUs in each Ray cluster (= actors) and threads of the local run.")
@click.option("--nodes", default="1,2", show_default=True, help="Raylets per Ray cluster, comma-separated.")
@click.option("--noop-rows", type=click.IntRange(min=10), default=1000, show_default=True,
              help="Rows of the scoring-free runs (and 4x as many) that time Ray Data's own cost.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the measures here.")
def main(bundle, clips, clip_seconds, cpus, nodes, noop_rows, json_out):
    from ..runtime.default import resolve_bundle_dir
    from .ray_throughput import write_clips

    bundle = str(resolve_bundle_dir(bundle).resolve())
    rate = json.loads((Path(bundle) / "manifest.json").read_text())["sample_rate"]
    node_counts = [int(n) for n in nodes.split(",") if n.strip()]
    with tempfile.TemporaryDirectory(prefix="deramos-scale-bench-") as scratch:
        pairs = write_clips(Path(scratch), clips, clip_seconds, rate)
        load, local_s, local_scores = _local(bundle, pairs, cpus)
        _, local1_s, _ = _local(bundle, pairs, 1)
        report = Report(clips, clip_seconds, cpus, load, local_s, clips / local_s, local1_s, clips / local1_s)
        for count in node_counts:
            report.ray.append(_ray(bundle, pairs, count, cpus, Path(scratch), local_scores, noop_rows))
    _print(report)
    if json_out:
        Path(json_out).write_text(json.dumps(asdict(report), indent=2) + "\n")


def _print(report: Report) -> None:
    echo = click.echo
    echo(f"{report.clips} clips x {report.clip_seconds:g} s, {report.cpus} CPUs")
    echo(f"local Scorer, {report.cpus} threads: {report.local_rows_per_s:6.2f} rows/s ({report.local_s:.1f} s; "
         f"Scorer.load {report.local_load_s:.2f} s)")
    echo(f"local Scorer, 1 thread:  {report.local_1thread_rows_per_s:6.2f} rows/s ({report.local_1thread_s:.1f} s)")
    echo("| raylets | actors | rows/s (x local) | steady rows/s (x local) | first result s | cluster start s "
         "| actor start-up s | memory probe s | GiB/actor requested (peak RSS) | Ray ms/row | Ray s/run | scores |")
    echo("|---|---|---|---|---|---|---|---|---|---|---|---|")
    local = report.local_rows_per_s
    for m in report.ray:
        echo(f"| {m.nodes} | {m.actors} | {m.rows_per_s:.2f} ({m.rows_per_s / local:.2f}) "
             f"| {m.steady_rows_per_s:.2f} ({m.steady_rows_per_s / local:.2f}) | {m.first_result_s:.1f} "
             f"| {m.cluster_start_s:.1f} | {statistics.median(m.actor_startup_s):.2f} "
             f"(Scorer.load {report.local_load_s:.2f}) | {m.memory_probe_s:.1f} | {m.actor_memory_gib:.2f} "
             f"({m.actor_peak_rss_gib:.2f}) "
             f"| {m.overhead_ms_per_row:.2f} | {m.noop_fixed_s:.1f} | {'identical' if m.identical else 'DIFFERENT'} |")


if __name__ == "__main__":
    main()

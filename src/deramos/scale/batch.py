"""Score a manifest of (path, prompt) rows with Ray Data: an actor pool of Scorers.

    import ray
    from deramos.scale import score_dataset
    ray.init()
    scored = score_dataset(ray.data.read_json("clips.jsonl"), ScoringOptions(bundle="bundle/"))
    scored.write_parquet("scores/")          # or iterate: scored.iter_rows()

Each actor holds one Scorer (its own ONNX Runtime sessions, prompt cache and decoder threads)
and takes one CPU slot, or one GPU when the cluster has GPUs, plus a memory request: the peak
memory of a worker that loaded the same Scorer and scored a full batch, measured on the cluster
before the pool starts (ScoringOptions.actor_memory overrides it) and kept in
~/.cache/deramos/ray-actor-memory.json for the same bundle and settings (delete it to measure
again). The pool is as large as the CPU (or GPU) slots and the cluster's memory both allow.
A row never stops the run: it is turned into what the Scorer scores, and its score into a
result, by deramos.runtime.rows, the code deramos-run uses on one machine, so a bad row fails
with the same one-line error here as there.
Actors that die are restarted by Ray and their batches run again: a lost worker costs time,
not rows.

`score_rows` adds what a long job needs on top: results written in input order to JSONL or to
a Parquet folder while the run goes on, and a restart that skips the rows already written.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..runtime import rows as shared
from ..runtime.errors import one_line
from ..runtime.paths import cache_home

MEMORY_MARGIN = 1.25      # the request is the measured peak times this (longer clips decode into more)
MEMORY_QUANTUM = 64 << 20


@dataclass(frozen=True)
class ScoringOptions:
    """How each actor loads its Scorer (the same meaning as deramos-run's options), and the
    memory each actor requests (bytes; None: measured on the cluster when the run starts)."""

    bundle: str | None = None
    backend: str = "auto"
    precision: str = "fp32"
    batch_size: int = 8
    threads: int = 1            # ONNX Runtime threads per actor: one actor per CPU slot
    actor_memory: int | None = None


def _load_scorer(options: ScoringOptions):
    from ..runtime.scorer import Scorer

    return Scorer.load(options.bundle, backend=options.backend, precision=options.precision,
                       threads=options.threads, batch_size=options.batch_size)


class ScorerActor:
    """Ray Data calls one instance per actor on batches of a Dataset's rows (Arrow tables)
    with `path` and `prompt` columns; it appends `mi`, `ta` (null for a failed row) and
    `error` (null, or the one-line reason, a lone surrogate written as its \\u escape)."""

    def __init__(self, options: ScoringOptions):
        self.scorer = _load_scorer(options)

    def __call__(self, batch):
        import pyarrow as pa

        records = batch.to_pylist()
        jobs = [shared.item_of(record, _where(record)) for record in records]
        scores = list(self.scorer.iter_scores(jobs))
        for name, values, kind in (("mi", [s.mi for s in scores], pa.float64()),
                                   ("ta", [s.ta for s in scores], pa.float64()),
                                   ("error", [None if s.error is None else shared.text(s.error) for s in scores],
                                    pa.string())):
            if name in batch.column_names:
                batch = batch.drop_columns([name])
            batch = batch.append_column(name, pa.array(values, kind))
        return batch


def _where(record: dict) -> str:
    row = record.get("row")
    return f"row {row}" if isinstance(row, int) and not isinstance(row, bool) else "a row"


class PackedScorer:
    """The actor of score_rows: batches of (row, job) where job is rows.pack's ASCII text;
    returns (row, outcome) with outcome rows.outcome's ASCII text. Arrow only ever holds ASCII,
    whatever a row's types and strings are."""

    def __init__(self, options: ScoringOptions):
        self.scorer = _load_scorer(options)

    def __call__(self, batch):
        import pyarrow as pa

        jobs = [shared.unpack(wire) for wire in batch.column("job").to_pylist()]
        scores = self.scorer.iter_scores((item, prompt) for item, prompt, _ in jobs)
        outcomes = [shared.outcome(score, given, item if isinstance(item, str) else None)
                    for score, (item, _, given) in zip(scores, jobs)]
        return pa.table({"row": batch.column("row"), "outcome": pa.array(outcomes, pa.string())})


# --- the pool: CPU (or GPU) slots and memory --------------------------------------------------------


def measure_actor_memory(options: ScoringOptions, gpus: float = 0.0) -> int:
    """Bytes to request per actor: the peak resident memory of a Ray worker that loaded the
    Scorer and scored a full batch of windows (one task on the cluster; its process exits
    afterwards), times MEMORY_MARGIN, rounded up to 64 MiB."""
    import ray

    task = ray.remote(num_cpus=0 if gpus else 1, num_gpus=gpus, max_calls=1)(_peak_memory)
    peak = ray.get(task.remote(options))
    return int(math.ceil(peak * MEMORY_MARGIN / MEMORY_QUANTUM) * MEMORY_QUANTUM)


def _peak_memory(options: ScoringOptions) -> int:
    """(Runs on a worker.) Peak RSS of this process after loading and using a Scorer."""
    import resource

    import numpy as np

    scorer = _load_scorer(options)
    window = scorer.bundle.window_samples
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, 2 * window).astype(np.float32)
    scorer.score_batch([noise] * max(2, options.batch_size), "a calm piano melody", sample_rate=scorer.sample_rate)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scorer.close()
    return int(peak if sys.platform == "darwin" else peak * 1024)


MEMORY_CACHE = "ray-actor-memory.json"


def _memory_key(options: ScoringOptions, gpus: float) -> str | None:
    """The bundle (its manifest's sha256, which lists every file's) and the settings that
    change a Scorer's memory."""
    try:
        digest = hashlib.sha256((Path(options.bundle) / "manifest.json").read_bytes()).hexdigest()[:16]
    except (OSError, TypeError):
        return None
    return f"{digest} {options.backend} {options.precision} batch={options.batch_size} threads={options.threads} " \
           f"gpus={gpus:g}"


def _cached_actor_memory(options: ScoringOptions, gpus: float) -> int | None:
    """The request measured for the same bundle and settings before (deleting the file
    measures again)."""
    key = _memory_key(options, gpus)
    try:
        value = json.loads((cache_home() / MEMORY_CACHE).read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _remember_actor_memory(options: ScoringOptions, gpus: float) -> None:
    key = _memory_key(options, gpus)
    if key is None:
        return
    path = cache_home() / MEMORY_CACHE
    try:
        known = json.loads(path.read_text()) if path.exists() else {}
        known = known if isinstance(known, dict) else {}
        known[key] = options.actor_memory
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")
        os.replace(temporary, path)
    except (OSError, ValueError):     # a read-only home: measured again next time
        pass


@dataclass(frozen=True)
class PoolShape:
    actors: int
    gpus_per_actor: float
    memory_per_actor: int | None

    def describe(self) -> str:
        memory = f", {self.memory_per_actor / 2**30:.2f} GiB each" if self.memory_per_actor else ""
        device = f"{self.gpus_per_actor:g} GPU" if self.gpus_per_actor else "1 CPU"
        return f"{self.actors} actor{'s' if self.actors != 1 else ''} ({device}{memory})"


def pool_shape(resources: dict, actors: int | None = None, gpus_per_actor: float | None = None,
               memory_per_actor: int | None = None, largest_node_memory: float | None = None) -> PoolShape:
    """A whole GPU per actor when the cluster has GPUs, else a CPU slot each; as many actors
    as those slots and the cluster's memory resource (memory_per_actor each) allow."""
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
    if memory_per_actor is not None:
        fits = largest_node_memory if largest_node_memory is not None else resources.get("memory", 0)
        if memory_per_actor > fits:
            raise ValueError(f"one Scorer actor needs {memory_per_actor / 2**30:.2f} GiB of memory, more than "
                             f"any node of the cluster offers ({fits / 2**30:.2f} GiB)")
    if actors is None:
        slots = resources.get("GPU", 0) / gpus_per_actor if gpus_per_actor else resources.get("CPU", 1)
        if memory_per_actor:
            slots = min(slots, resources.get("memory", 0) // memory_per_actor)
        actors = max(1, int(slots))
    if actors < 1:
        raise ValueError(f"actors must be >= 1, got {actors}")
    return PoolShape(actors, gpus_per_actor, memory_per_actor)


def plan_pool(options: ScoringOptions, actors: int | None = None, gpus_per_actor: float | None = None,
              say: Callable[[str], None] | None = None) -> tuple[ScoringOptions, PoolShape]:
    """The options with the bundle resolved and the memory request measured, and the pool."""
    import ray

    from ..runtime.default import resolve_bundle_dir

    say = say or (lambda line: None)
    if options.bundle is None:      # the default model is exported here, once, not on every worker
        options = replace(options, bundle=str(resolve_bundle_dir(None).resolve()))
    resources = ray.cluster_resources()
    gpus = gpus_per_actor if gpus_per_actor is not None else (1.0 if resources.get("GPU", 0) >= 1 else 0.0)
    if options.actor_memory is None:
        cached = _cached_actor_memory(options, gpus)
        if cached is not None:
            say(f"actor memory: {cached / 2**30:.2f} GiB, as measured before ({cache_home() / MEMORY_CACHE})")
            options = replace(options, actor_memory=cached)
        else:
            say("measuring one Scorer actor's memory on the cluster ...")
            options = replace(options, actor_memory=measure_actor_memory(options, gpus))
            _remember_actor_memory(options, gpus)
    nodes = [node["Resources"].get("memory", 0) for node in ray.nodes() if node.get("Alive")]
    shape = pool_shape(resources, actors, gpus, options.actor_memory, max(nodes) if nodes else None)
    return options, shape


def _mapped(dataset, actor, options: ScoringOptions, shape: PoolShape, rows_per_task: int,
            rows_in_memory: bool = False):
    import ray

    dataset.context.execution_options.preserve_order = True
    # The whole pool from the start, one task in flight per actor, when the rows are in memory
    # already: tasks spread over every actor and each result comes back when its task ends
    # (with Ray Data's defaults the first actor up queued most tasks, and 120 rows of the
    # default model came back all at once, after 22 s).
    # Otherwise min_size=1 leaves CPU slots for the stages before (a read_json's tasks) until
    # they are done; a fixed pool of every slot would wait forever for rows that cannot be read.
    pool = (ray.data.ActorPoolStrategy(min_size=1, max_size=shape.actors, initial_size=shape.actors,
                                       max_tasks_in_flight_per_actor=1) if rows_in_memory
            else ray.data.ActorPoolStrategy(min_size=1, max_size=shape.actors))
    return dataset.map_batches(
        actor, fn_constructor_args=(options,), batch_size=rows_per_task, batch_format="pyarrow",
        # Ray Data's actors default to max_restarts=-1, max_task_retries=-1: a dead actor is
        # restarted and its batch runs again, so no row is lost.
        compute=pool,
        num_cpus=0 if shape.gpus_per_actor else 1, num_gpus=shape.gpus_per_actor,
        **({"memory": shape.memory_per_actor} if shape.memory_per_actor else {}))


def rows_per_call(options: ScoringOptions) -> int:
    """Rows per actor call: one chunk of the Scorer's (4 batches), so that a task's rows are
    batched exactly as a local run batches them and the scores agree to the last bit; results
    stream back this often per actor (32 rows: ~10 s with the default model on one core)."""
    return max(4 * options.batch_size, 16)


def score_dataset(dataset, options: ScoringOptions | None = None, *, actors: int | None = None,
                  gpus_per_actor: float | None = None, rows_per_task: int | None = None):
    """A lazy Dataset: `dataset`'s rows (columns `path`, `prompt`, any others) with `mi`, `ta`
    and `error` added, in input order. actors: pool size (default: what the CPU or GPU slots and
    the memory allow). Without options.actor_memory, one task measures it now."""
    options, shape = plan_pool(options or ScoringOptions(), actors, gpus_per_actor)
    return _mapped(dataset, ScorerActor, options, shape, rows_per_task or rows_per_call(options))


# --- a resumable run: rows in, results written in input order ------------------------------------


@dataclass
class Row:
    """One manifest row: `row` numbers it (the manifest's line number, stable across restarts);
    `record` is echoed; `item` is a path or an Unscorable (a row known to be bad already)."""

    row: int
    record: dict
    item: object
    prompt: str | None


@dataclass
class RunSummary:
    skipped: int        # already in the output (resume)
    scored: int = 0
    failed: int = 0
    pool: PoolShape | None = None


def score_rows(rows: Iterable[Row], out: str | os.PathLike, options: ScoringOptions | None = None, *,
               actors: int | None = None, rows_per_task: int | None = None, on_result=None,
               say: Callable[[str], None] | None = None, actor=None) -> RunSummary:
    """Score `rows` on the connected Ray cluster into `out` (JSONL, or a Parquet folder when the
    name ends in .parquet), in input order, skipping rows `out` already holds; no cluster is
    used when there is nothing left to score. Through Ray Client (ray://) the pipeline runs in
    a RemoteDriver actor on the cluster and only the results travel back. on_result(row, result) is called for each new
    result once it is written; say(line) gets what the run is doing. actor: the actor class
    (PackedScorer; the scale-out bench passes one that scores nothing, to time Ray alone)."""
    say = say or (lambda line: None)
    writer = open_writer(out)
    done = writer.done_rows()
    todo = [row for row in rows if row.row not in done]
    summary = RunSummary(skipped=len(done))
    say(f"{len(todo)} rows to score, {len(done)} already in {out}")
    if not todo:
        return summary
    options, summary.pool = plan_pool(options or ScoringOptions(), actors, say=say)
    say(f"pool: up to {summary.pool.describe()}; the first results come once an actor has loaded the Scorer")
    records = {row.row: row.record for row in todo}
    items = [{"row": row.row, "job": shared.pack(row.item, row.prompt)} for row in todo]
    stream = _outcomes_through_client if _client_mode() else _outcomes
    with writer:
        for row, wire in stream(items, options, summary.pool, rows_per_task or rows_per_call(options),
                                actor or PackedScorer):
            record = records.pop(row)
            result = shared.result_of(record, shared.read_outcome(wire))
            writer.write(row, record, result)
            summary.scored += 1
            summary.failed += result["error"] is not None
            if on_result is not None:
                on_result(row, result)
    return summary


def _outcomes(items: list[dict], options: ScoringOptions, shape: PoolShape, rows_per_task: int,
              actor) -> Iterator[tuple[int, str]]:
    """(row, outcome text) in input order, from the actor pool."""
    import pyarrow as pa
    import ray

    # One block of exactly rows_per_task rows per task. An actor's results come back when its
    # task ends, and Ray Data merges blocks smaller than a batch into one task: from_items' own
    # blocks (120 rows in 4 blocks of 30) became 2 tasks of 60, every result arriving at the end.
    blocks = [pa.Table.from_pylist(items[start:start + rows_per_task])
              for start in range(0, len(items), rows_per_task)]
    scored = _mapped(ray.data.from_arrow(blocks), actor, options, shape, rows_per_task, rows_in_memory=True)
    for batch in scored.iter_batches(batch_format="pyarrow", batch_size=None):
        yield from zip(batch.column("row").to_pylist(), batch.column("outcome").to_pylist())


def _client_mode() -> bool:
    try:
        from ray.util.client import ray as client
    except ImportError:
        return False
    return client.is_connected()


class RemoteDriver:
    """Ray Data's executor cannot run in a Ray Client (ray://) process (it needs the core
    worker a driver on the cluster has): through Ray Client, this actor, on the cluster, runs
    the pipeline and hands the outcomes over in order, a task's worth at a time."""

    def __init__(self, items, options, shape, rows_per_task, actor):
        from .cluster import quiet_console

        quiet_console()
        self._outcomes = _outcomes(items, options, shape, rows_per_task, actor)

    def take(self, count: int) -> list[tuple[int, str]]:
        import itertools

        return list(itertools.islice(self._outcomes, count))


def _outcomes_through_client(items, options, shape, rows_per_task, actor) -> Iterator[tuple[int, str]]:
    import ray

    driver = ray.remote(num_cpus=0, max_restarts=0)(RemoteDriver).remote(items, options, shape, rows_per_task,
                                                                          actor)
    try:
        while True:
            chunk = ray.get(driver.take.remote(rows_per_task))
            if not chunk:
                return
            yield from chunk
    finally:
        ray.kill(driver)


# --- output files --------------------------------------------------------------------------------


def open_writer(out: str | os.PathLike):
    out = Path(out)
    return ParquetWriter(out) if out.suffix == ".parquet" else JsonlWriter(out)


class JsonlWriter:
    """deramos-run's JSON lines with "row" first, flushed per line; a restart first drops a
    torn last line."""

    def __init__(self, path: Path):
        self.path = path
        self._handle = None

    def done_rows(self) -> set[int]:
        if self.path.is_dir():
            raise ValueError(f"{self.path}: is a directory; JSONL output is a file (a folder of Parquet "
                             f"parts needs a name ending in .parquet)")
        if not self.path.exists():
            return set()
        data = self.path.read_bytes()
        complete = data[:data.rfind(b"\n") + 1]
        if len(complete) != len(data):     # the previous run died mid-line
            with open(self.path, "r+b") as handle:
                handle.truncate(len(complete))
        return {_row_of(line, number, self.path)
                for number, line in enumerate(complete.decode("utf-8", "replace").splitlines(), start=1)
                if line.strip()}

    def write(self, row: int, record: dict, result: dict) -> None:
        line = {"row": row, **{key: value for key, value in result.items() if key != "row"}}
        self._handle.write(shared.json_text(line) + "\n")
        self._handle.flush()

    def __enter__(self):
        self._handle = open(self.path, "a", encoding="utf-8")
        return self

    def __exit__(self, *exc):
        self._handle.close()


def _row_of(line: str, number: int, path: Path) -> int:
    try:
        row = json.loads(line).get("row")
    except (json.JSONDecodeError, AttributeError):
        row = None
    if not isinstance(row, int) or isinstance(row, bool):
        raise ValueError(f"{path}: line {number} is not a result line with a \"row\" number; "
                         f"refusing to resume into it (choose another --out)")
    return row


PARQUET_COLUMNS = ("row", "path", "prompt", "mi", "ta", "error", "record")


def parquet_schema():
    """row, then the row's path and prompt (null when not strings), mi, ta, error, and the
    whole input object as JSON text (`record`). Every string is valid UTF-8: a lone surrogate
    is stored as its \\u escape (JSON's, which json.loads reads back in `record`)."""
    import pyarrow as pa

    return pa.schema([("row", pa.int64()), ("path", pa.string()), ("prompt", pa.string()), ("mi", pa.float64()),
                      ("ta", pa.float64()), ("error", pa.string()), ("record", pa.string())])


class ParquetWriter:
    """A folder of part files, each written whole (temporary name, then renamed), so a run
    stopped at any point leaves only complete parts; reading the folder gives input order.
    The schema is fixed (parquet_schema), whatever types a row's fields have."""

    def __init__(self, path: Path, rows_per_part: int = 256):
        self.path, self.rows_per_part = path, rows_per_part
        self._pending: list[dict] = []

    def done_rows(self) -> set[int]:
        import pyarrow.parquet as pq

        if not self.path.exists():
            return set()
        if not self.path.is_dir():
            raise ValueError(f"{self.path}: Parquet output is a folder of parts; this is a file")
        for stale in self.path.glob("*.tmp"):
            stale.unlink()
        done = set()
        for part in self._parts():
            try:
                done.update(pq.read_table(part, columns=["row"]).column("row").to_pylist())
            except Exception as error:
                raise ValueError(f"{part}: not a readable part of a deramos Parquet output "
                                 f"({type(error).__name__}: {one_line(error)}); refusing to resume into it "
                                 f"(choose another --out)") from None
        return done

    def _parts(self) -> list[Path]:
        return sorted(p for p in self.path.glob("part-*.parquet") if p.stem[5:].isdigit())

    def write(self, row: int, record: dict, result: dict) -> None:
        path, prompt = record.get("path"), record.get("prompt")
        self._pending.append({
            "row": row,
            "path": shared.text(path) if isinstance(path, str) else None,
            "prompt": shared.text(prompt) if isinstance(prompt, str) else None,
            "mi": result["mi"], "ta": result["ta"],
            "error": None if result["error"] is None else shared.text(result["error"]),
            "record": shared.json_text(record),
        })
        if len(self._pending) >= self.rows_per_part:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._pending:
            return
        table = pa.Table.from_pylist(self._pending, schema=parquet_schema())
        parts = self._parts()
        index = int(parts[-1].stem[5:]) + 1 if parts else 0
        target = self.path / f"part-{index:06d}.parquet"
        temporary = target.with_suffix(".tmp")
        pq.write_table(table, temporary)
        os.replace(temporary, target)
        self._pending = []

    def __enter__(self):
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc):
        self._flush()

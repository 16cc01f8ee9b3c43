"""Score a manifest of (path, prompt) rows with Ray Data: an actor pool of Scorers.

    import ray
    from deramos.scale import score_dataset
    ray.init()
    scored = score_dataset(ray.data.read_json("clips.jsonl"), bundle="bundle/")
    scored.write_parquet("scores/")          # or iterate: scored.iter_rows()

Each actor holds one Scorer (its own ONNX Runtime sessions, prompt cache and decoder threads)
and takes one CPU slot, or one GPU when the cluster has GPUs. The rows keep every input
column and gain `mi`, `ta` (NaN for a failed row) and `error` (None, or a one-line reason):
a bad row never stops the run. Actors that die are restarted by Ray and their batches run
again, so a lost worker costs time, not rows.

`score_rows` adds what a long job needs on top: results written in input order to JSONL or to
a Parquet folder while the run goes on, and a restart that skips the rows already written.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator

from ..runtime.scorer import Unscorable

ROWS_PER_TASK = 32        # rows one actor scores per call: small enough to spread 500 rows over the pool


@dataclass(frozen=True)
class ScoringOptions:
    """How each actor loads its Scorer (the same meaning as deramos-run's options)."""

    bundle: str | None = None
    backend: str = "auto"
    precision: str = "fp32"
    batch_size: int = 8
    threads: int = 1            # ONNX Runtime threads per actor: one actor per CPU slot


class ScorerActor:
    """Ray Data calls one instance per actor on batches of rows (Arrow tables)."""

    def __init__(self, options: ScoringOptions):
        from ..runtime.scorer import Scorer

        self.scorer = Scorer.load(options.bundle, backend=options.backend, precision=options.precision,
                                  threads=options.threads, batch_size=options.batch_size)

    def __call__(self, batch):
        import pyarrow as pa

        def column(name: str) -> list:
            return batch.column(name).to_pylist() if name in batch.column_names else [None] * batch.num_rows

        items = [_item(*fields) for fields in zip(column("path"), column("invalid_name"), column("invalid_cause"))]
        scores = list(self.scorer.iter_scores(zip(items, column("prompt"))))
        for name, values, kind in (("mi", [s.mi for s in scores], pa.float64()),
                                   ("ta", [s.ta for s in scores], pa.float64()),
                                   ("error", [s.error for s in scores], pa.string())):
            if name in batch.column_names:
                batch = batch.drop_columns([name])
            batch = batch.append_column(name, pa.array(values, kind))
        return batch


def _item(path, invalid_name, invalid_cause):
    """A row's input for the Scorer: its path, or why it is already known to be bad."""
    if invalid_cause is not None:
        return Unscorable(str(invalid_name), str(invalid_cause))
    if not isinstance(path, str) or not path:
        return Unscorable(str(path), 'missing "path" (a string)')
    return path


def score_dataset(dataset, options: ScoringOptions | None = None, *, actors: int | None = None,
                  gpus_per_actor: float | None = None, rows_per_task: int = ROWS_PER_TASK):
    """A lazy Dataset: `dataset`'s rows (columns `path`, `prompt`, any others) with `mi`, `ta`
    and `error` added, in input order. actors: pool size (default: one per CPU slot, or one per
    GPU when the cluster has GPUs)."""
    import ray

    from ..runtime.default import resolve_bundle_dir

    options = options or ScoringOptions()
    if options.bundle is None:      # the default model is exported here, once, not on every worker
        options = replace(options, bundle=str(resolve_bundle_dir(None).resolve()))
    dataset.context.execution_options.preserve_order = True
    gpus, pool = _pool_shape(ray.cluster_resources(), actors, gpus_per_actor)
    return dataset.map_batches(
        ScorerActor, fn_constructor_args=(options,), batch_size=rows_per_task, batch_format="pyarrow",
        # Ray Data's actors default to max_restarts=-1, max_task_retries=-1: a dead actor is
        # restarted and its batch runs again, so no row is lost.
        # min_size=1 leaves CPU slots for the stages before (a read_json's tasks) until they are
        # done; a fixed pool of every slot would wait forever for rows that cannot be read.
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=pool), num_cpus=1 if not gpus else 0,
        num_gpus=gpus)


def _pool_shape(resources: dict, actors: int | None, gpus_per_actor: float | None) -> tuple[float, int]:
    """(GPUs per actor, pool size): a whole GPU each when the cluster has GPUs, else a CPU slot each."""
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
    if actors is None:
        slots = resources.get("GPU", 0) / gpus_per_actor if gpus_per_actor else resources.get("CPU", 1)
        actors = max(1, int(slots))
    if actors < 1:
        raise ValueError(f"actors must be >= 1, got {actors}")
    return gpus_per_actor, actors


# --- a resumable run: rows in, results written in input order ------------------------------------


@dataclass
class Row:
    """One manifest row: `row` numbers it (1-based, stable across restarts); `record` is echoed."""

    row: int
    record: dict
    path: str | None
    prompt: str | None
    invalid: Unscorable | None = None    # a row known to be bad before scoring (e.g. not JSON)


@dataclass
class RunSummary:
    skipped: int        # already in the output (resume)
    scored: int
    failed: int


def score_rows(rows: Iterable[Row], out: str | os.PathLike, options: ScoringOptions | None = None, *,
               actors: int | None = None, on_result=None) -> RunSummary:
    """Score `rows` on the connected Ray cluster into `out` (JSONL, or a Parquet folder when the
    name ends in .parquet), in input order, skipping rows `out` already holds.
    on_result(result_dict) is called for each new result as it is written."""
    import ray

    writer = open_writer(out)
    done = writer.done_rows()
    todo = [row for row in rows if row.row not in done]
    summary = RunSummary(skipped=len(done), scored=0, failed=0)
    if todo:
        dataset = ray.data.from_items([_as_item(row) for row in todo])
        with writer:
            for result in _results(score_dataset(dataset, options, actors=actors)):
                writer.write(result)
                summary.scored += 1
                summary.failed += result["error"] is not None
                if on_result is not None:
                    on_result(result)
    return summary


def _as_item(row: Row) -> dict:
    return {"row": row.row, "record": json.dumps(row.record, ensure_ascii=False), "path": row.path,
            "prompt": row.prompt, "invalid_name": row.invalid and row.invalid.name,
            "invalid_cause": row.invalid and row.invalid.cause}


def _results(scored) -> Iterator[dict]:
    for batch in scored.iter_batches(batch_format="pyarrow", batch_size=None):
        for row in batch.to_pylist():
            yield {"row": row["row"], **json.loads(row["record"]), "mi": _rounded(row["mi"]),
                   "ta": _rounded(row["ta"]), "error": row["error"]}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# --- output files --------------------------------------------------------------------------------


def open_writer(out: str | os.PathLike):
    out = Path(out)
    return ParquetWriter(out) if out.suffix == ".parquet" else JsonlWriter(out)


class JsonlWriter:
    """One JSON object per line, flushed per line; a restart first drops a torn last line."""

    def __init__(self, path: Path):
        self.path = path
        self._handle = None

    def done_rows(self) -> set[int]:
        if not self.path.exists():
            return set()
        data = self.path.read_bytes()
        complete = data[:data.rfind(b"\n") + 1]
        if len(complete) != len(data):     # the previous run died mid-line
            with open(self.path, "r+b") as handle:
                handle.truncate(len(complete))
        return {_row_of(line, number, self.path)
                for number, line in enumerate(complete.decode("utf-8").splitlines(), start=1) if line.strip()}

    def write(self, result: dict) -> None:
        self._handle.write(json.dumps(result, ensure_ascii=False) + "\n")
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
    if not isinstance(row, int):
        raise ValueError(f"{path}: line {number} is not a result line with a \"row\" number; "
                         f"refusing to resume into it (choose another --out)")
    return row


class ParquetWriter:
    """A folder of part files, each written whole (temporary name, then renamed), so a run
    stopped at any point leaves only complete parts; reading the folder gives input order."""

    COLUMNS = ("row", "path", "prompt", "mi", "ta", "error", "record")

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
        parts = sorted(self.path.glob("part-*.parquet"))
        return {int(r) for part in parts for r in pq.read_table(part, columns=["row"]).column("row").to_pylist()}

    def write(self, result: dict) -> None:
        self._pending.append(result)
        if len(self._pending) >= self.rows_per_part:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._pending:
            return
        columns = {name: [r.get(name) for r in self._pending] for name in self.COLUMNS[:-1]}
        columns["record"] = [json.dumps({k: v for k, v in r.items() if k not in self.COLUMNS}, ensure_ascii=False)
                             for r in self._pending]
        table = pa.table(columns, schema=_parquet_schema())
        index = len(list(self.path.glob("part-*.parquet")))
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


def _parquet_schema():
    import pyarrow as pa

    return pa.schema([("row", pa.int64()), ("path", pa.string()), ("prompt", pa.string()), ("mi", pa.float64()),
                      ("ta", pa.float64()), ("error", pa.string()), ("record", pa.string())])

"""`deramos-run --jsonl FILE --ray [auto|local|ADDRESS] --out OUT`: the manifest scored on Ray.

deramos-run parses the command line and the manifest; this module connects to the cluster,
runs the job and reports on the terminal like the local run does (one "error: ..." line per
failed item, exit status 0 / 1).
"""
from __future__ import annotations

import sys
from typing import Iterable

from .batch import Row, ScoringOptions, score_rows

EXIT_OK, EXIT_ITEM_FAILED = 0, 1


def run(jobs: Iterable, out: str | None, address: str, *, bundle: str | None, backend: str, precision: str,
        batch_size: int, threads: int | None, quiet: bool) -> int:
    """jobs: deramos-run's parsed manifest lines (.record, .item, .prompt)."""
    from ..runtime.default import resolve_bundle_dir

    if not out:
        raise ValueError("--ray needs --out FILE (.jsonl, or a .parquet folder): the results are "
                         "written there in input order, and a rerun resumes from it")
    rows = rows_of(jobs)
    say = (lambda line: None) if quiet else (lambda line: print(line, file=sys.stderr))
    # Resolved here, once: the actors may run elsewhere, in another working directory, without torch.
    options = ScoringOptions(str(resolve_bundle_dir(bundle, say=say).resolve()), backend, precision, batch_size,
                             threads or 1)
    connect(address)

    def report(result: dict) -> None:
        if result["error"] is not None and not quiet:
            print(f"error: {result['error']}", file=sys.stderr, flush=True)

    summary = score_rows(rows, out, options, on_result=report)
    if not quiet:
        print(f"ray: {summary.scored} scored ({summary.failed} failed), {summary.skipped} already in {out}",
              file=sys.stderr)
    return EXIT_ITEM_FAILED if summary.failed else EXIT_OK


def rows_of(jobs: Iterable) -> list[Row]:
    """deramos-run's parsed manifest lines as numbered rows (a malformed line stays a row)."""
    from ..runtime.scorer import Unscorable

    return [Row(number, job.record, None if isinstance(job.item, Unscorable) else str(job.item), job.prompt,
                job.item if isinstance(job.item, Unscorable) else None)
            for number, job in enumerate(jobs, start=1)]


def connect(address: str) -> None:
    """auto: the cluster in $RAY_ADDRESS or a running `ray start`, else a local one; local: a new
    local cluster; anything else: that cluster's address (host:6379 or ray://host:10001).
    A process already connected (ray.init called earlier) keeps its connection."""
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs Ray: pip install 'deramos[ray]'") from None

    if not ray.is_initialized():
        ray.init(address=None if address == "auto" else address, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    # Ray Data's progress log on the console would bury the per-item error lines printed here;
    # its log file in the Ray session folder keeps everything.
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False

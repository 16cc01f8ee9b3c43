"""`deramos-run --jsonl FILE --ray [auto|local|ADDRESS] --out OUT`: the manifest scored on Ray.

deramos-run parses the command line and the manifest; this module connects to the cluster,
runs the job and reports on the terminal like the local run does: "ray: ..." lines saying what
it is doing (a progress bar on a terminal), one "error: ..." line per failed row, and the exit
status 0 / 1 (2: the run could not start; 130 / 143: interrupted / terminated, the rows written
until then kept for a rerun to resume from).
"""
from __future__ import annotations

import io
import os
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Iterable

from ..runtime.cli_common import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, Terminated, error_line,
                                  printable, say_error, stderr_line)
from .batch import Row, ScoringOptions, open_writer, score_rows
STOP_GRACE_S = 4.0          # after SIGTERM: the output closed and the cluster stopped within this, or killed
PROGRESS_EVERY_S = 30.0     # a progress line this often when stderr is not a terminal


def run(jobs: Iterable, out: str | None, address: str, *, bundle: str | None, backend: str, precision: str,
        batch_size: int, threads: int | None, quiet: bool) -> int:
    """jobs: deramos-run's parsed manifest lines (.record, .item, .prompt, and .line when
    they come from a JSONL file: the row number is that line's number)."""
    from ..runtime.default import resolve_bundle_dir

    if not out:
        raise ValueError("--ray needs --out FILE (.jsonl, or a .parquet folder): the results are "
                         "written there in input order, and a rerun resumes from it")
    rows = rows_of(jobs)
    say = (lambda line: None) if quiet else (lambda line: stderr_line(f"ray: {line}"))
    done = open_writer(out).done_rows()      # a foreign or broken --out fails before anything starts
    if all(row.row in done for row in rows):
        say(f"0 scored (0 failed), {len(done)} already in {out}")
        return EXIT_OK
    # Resolved here, once: the actors may run elsewhere, in another working directory, without torch.
    options = ScoringOptions(str(resolve_bundle_dir(bundle, say=say).resolve()), backend, precision, batch_size,
                             threads or 1)
    with _StopOnSignal() as stopper, _ray_output_to_file() as ray_log:
        progress = _Progress(len(rows) - len(done), quiet)
        if not quiet:
            say = lambda line: progress.say(f"ray: {line}")      # noqa: E731
        try:
            summary = _run(rows, out, address, options, say, progress, stopper)
        except Exception:
            ray_log.keep = True
            raise
        except (KeyboardInterrupt, Terminated) as stop:
            ray_log.discard = True          # what Ray says now is about the actors being stopped
            progress.close()
            written = progress.count
            reason = "terminated" if isinstance(stop, Terminated) else "interrupted"
            say_error(f"{reason}: {written} new row{'s' if written != 1 else ''} written to {out}; "
                      f"rerun the same command to resume")
            return EXIT_TERMINATED if isinstance(stop, Terminated) else EXIT_INTERRUPTED
        finally:
            progress.close()
            stopper.shutdown_cluster()
    say(f"{summary.scored} scored ({summary.failed} failed), {summary.skipped} already in {out}")
    return EXIT_FAILED if summary.failed else EXIT_OK


def _run(rows, out, address, options, say, progress, stopper):
    from .cluster import connect, describe_error

    say(f"starting a local Ray cluster on {LOOPBACK} ..." if address == "local"
        else f"connecting to Ray ({address}) ...")
    connection = connect(address)
    stopper.connected(connection.started, connection.new)
    say(connection.describe())

    def report(row: int, result: dict) -> None:
        if result["error"] is not None:
            progress.error(error_line(result["error"]))
        progress.update()

    try:
        return score_rows(rows, out, options, on_result=report, say=say)
    except (KeyboardInterrupt, Terminated, ValueError, OSError):
        raise
    except Exception as error:      # a Ray failure (an actor that cannot start, a lost cluster)
        if type(error).__module__.startswith("ray"):
            raise RuntimeError(f"ray: {describe_error(error)}") from None
        raise


LOOPBACK = "127.0.0.1"


def rows_of(jobs: Iterable) -> list[Row]:
    """deramos-run's parsed manifest lines as numbered rows: the manifest's line number (blank
    lines count), or the position for clips given as arguments; a malformed line stays a row."""
    return [Row(getattr(job, "line", None) or position, job.record, job.item, job.prompt)
            for position, job in enumerate(jobs, start=1)]


# --- progress ------------------------------------------------------------------------------------


class _Progress:
    """From the first result on, a tqdm bar on a terminal; elsewhere (a log file) a line every
    PROGRESS_EVERY_S. Other lines go through it, so that the bar is redrawn below them."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet, self.count, self.failed = total, quiet, 0, 0
        self.started = self.last = time.monotonic()
        self.bar = None
        self.terminal = not quiet and _isatty(sys.stderr)

    def say(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(printable(line), file=sys.stderr)
        else:
            stderr_line(line)

    def error(self, line: str) -> None:
        self.failed += 1
        self.say(line)

    def update(self) -> None:
        if self.count == 0:
            self.started = self.last = time.monotonic()
            if self.terminal:
                from tqdm import tqdm

                self.bar = tqdm(total=self.total, unit="row", file=sys.stderr, dynamic_ncols=True, desc="ray")
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)
        elif not self.quiet and time.monotonic() - self.last >= PROGRESS_EVERY_S:
            self.last = time.monotonic()
            rate = self.count / max(self.last - self.started, 1e-9)
            stderr_line(f"ray: {self.count}/{self.total} rows ({self.failed} failed), {rate:.1f} rows/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _isatty(stream) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def _ray_output_to_file():
    """Ray's C++ core writes its warnings and errors straight to file descriptor 2 (e.g. one
    'constructor arguments in the object store' line per actor pool: Ray Data passes its own
    object refs), and the driver prints the raylets' reports ("(raylet) A worker died ...") on
    sys.stdout, which a --ray run does not use. While Ray runs both go to a log file; this
    module's lines (and tqdm's) reach the terminal through a duplicate of the original
    descriptor 2. Afterwards the log is deleted, unless the run failed or a raylet reported
    something: then one line names it."""
    log = _RayLog()
    try:
        real = sys.stderr is not None and sys.stderr.fileno() == 2
    except (AttributeError, ValueError, io.UnsupportedOperation):
        real = False
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
        saved = os.dup(2)
        handle = tempfile.NamedTemporaryFile(prefix="deramos-ray-", suffix=".log", delete=False)
    except OSError:     # no descriptor 2 (closed), or no temporary folder: leave everything as it is
        yield log
        return
    log.path = handle.name
    os.dup2(handle.fileno(), 2)
    handle.close()
    previous_stderr, previous_stdout = sys.stderr, sys.stdout
    if real:
        sys.stderr = io.TextIOWrapper(io.FileIO(saved, "w", closefd=False), encoding=previous_stderr.encoding,
                                      errors="backslashreplace", line_buffering=True)
    sys.stdout = open(log.path, "a", encoding="utf-8", errors="backslashreplace", buffering=1)
    try:
        yield log
    finally:
        if real:
            sys.stderr.flush()
        sys.stdout.close()
        sys.stderr, sys.stdout = previous_stderr, previous_stdout
        os.dup2(saved, 2)
        os.close(saved)
        log.close()


class _RayLog:
    def __init__(self):
        self.path, self.keep, self.discard = None, False, False

    def close(self) -> None:
        if self.path is None:
            return
        if self.discard:
            os.unlink(self.path)
            return
        with open(self.path, encoding="utf-8", errors="replace") as handle:
            reports = sum("(raylet)" in line for line in handle)
        if reports:
            stderr_line(f"ray: Ray reported {reports} problem{'s' if reports != 1 else ''} on the cluster (e.g. a worker "
                   f"that died and was replaced); its messages are in {self.path}")
        elif self.keep and os.path.getsize(self.path):
            stderr_line(f"ray: Ray's own messages from this run are in {self.path}")
        else:
            os.unlink(self.path)


# --- stopping ------------------------------------------------------------------------------------


class _StopOnSignal:
    """SIGTERM raises Terminated in the main thread (once); the output is closed with the rows
    written so far, and the cluster this process started is stopped, with SIGTERM held off
    meanwhile (a shutdown cut short leaves Ray's agents behind). Should all that take longer
    than STOP_GRACE_S (the main thread stuck in Ray's C++ code, which runs Python's handlers
    only when it returns), a watcher thread, woken through the signal wakeup fd, kills the
    cluster's processes and exits with 143 itself. ray.init() installs Ray's own SIGTERM
    handler (for a cluster it starts, one that waits up to 30 s for the node to drain): ours
    is put back after connecting."""

    def __init__(self):
        self._started_cluster = self._connected_here = False
        self._finished = threading.Event()
        self._terminated = self._active = False
        self._previous = None
        self._wakeup = None

    def __enter__(self) -> "_StopOnSignal":
        if threading.current_thread() is not threading.main_thread():
            return self
        self._previous = signal.getsignal(signal.SIGTERM)
        self._active = True
        self._install()
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        try:
            previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        except ValueError:
            os.close(read_end)
            os.close(write_end)
            return self
        self._wakeup = (read_end, write_end, previous_fd)
        threading.Thread(target=self._watch, args=(read_end,), name="deramos-sigterm", daemon=True).start()
        return self

    def _install(self) -> None:
        def handler(signum, frame):
            if self._terminated:        # a second SIGTERM: the first one is being handled
                return
            self._terminated = True
            raise Terminated()

        signal.signal(signal.SIGTERM, handler)

    def connected(self, started_cluster: bool, connected_here: bool) -> None:
        self._started_cluster, self._connected_here = started_cluster, connected_here
        if self._active:
            self._install()

    def _watch(self, read_end: int) -> None:
        while True:
            try:
                data = os.read(read_end, 64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGTERM in data:
                break
        if self._finished.wait(STOP_GRACE_S):
            return
        self._kill_cluster()
        say_error("terminated: Ray did not stop in time; its processes were killed "
                  "(the rows written so far are kept; rerun the same command to resume)")
        os._exit(EXIT_TERMINATED)

    def _kill_cluster(self) -> None:
        if not self._started_cluster:
            return
        try:
            from ray._private import worker

            if worker._global_node is not None:
                worker._global_node.kill_all_processes(check_alive=False, allow_graceful=False)
        except Exception:
            pass

    def shutdown_cluster(self) -> None:
        """ray.shutdown() (which stops a cluster this process started), when this run connected;
        a process that was connected before (ray.init by its caller) stays connected. SIGTERM
        is only noted meanwhile."""
        if not self._connected_here or "ray" not in sys.modules:
            return
        import ray

        if self._active:
            signal.signal(signal.SIGTERM, lambda signum, frame: setattr(self, "_terminated", True))
        if ray.is_initialized():
            ray.shutdown()

    def __exit__(self, *exc) -> None:
        self._finished.set()
        if self._wakeup is not None:
            read_end, write_end, previous_fd = self._wakeup
            signal.set_wakeup_fd(previous_fd)
            os.close(write_end)
            os.close(read_end)
        if self._active:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)

"""deramos-run: score text-to-music clips (MI = music impression, TA = text alignment, 1-5)."""
from __future__ import annotations

import codecs
import contextlib
import json
import os
import signal
import stat
import sys
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator

import click

from .backends import BACKENDS
from .bundle import PRECISIONS
from .cli_common import (EXIT_FAILED, EXIT_OK, Command, ReaderGone, Terminated, error_line, errors_as_messages, fail,
                         printable, stderr_line)
from .errors import one_line as _one_line

# A JSONL line nested deeper is an item error, from a file and from stdin alike (json's own limit
# depends on how deep the reader's stack already is); the output echoes it back within that limit.
MAX_JSON_DEPTH = 100

HELP = """Score text-to-music clips: MI (music impression) and TA (text alignment), 1 to 5.

\b
  deramos-run clip.wav "calm solo piano"
  deramos-run --json clip.wav "calm solo piano"
  deramos-run --prompt "upbeat funk with slap bass" a.wav b.flac c.ogg
  deramos-run --jsonl items.jsonl --out scores.jsonl
  cat items.jsonl | deramos-run --jsonl - > scores.jsonl

\b
JSONL input: one object per line, {"path": "a.wav", "prompt": "calm solo piano"}
(UTF-8; a relative path is relative to the JSONL file's folder, or for stdin to the
current directory); the output repeats each object with "mi", "ta" and "error" added,
in input order, one line written (and flushed) per clip. Two clips without --prompt
are refused, as is a second argument that is or looks like an audio file: it would be
taken for the prompt. --out never overwrites an input clip or the JSONL file.

\b
Any audio libsndfile reads, at any rate and channel count; clips longer than the
model's window are scored in windows and averaged. Without --bundle the bundle is
$DERAMOS_BUNDLE, else the default model (exported to ~/.cache/deramos on first use).

\b
A clip that cannot be scored is reported on stderr ("error: b.wav: file not found")
and in the "error" field; the others are still scored.
\b
  deramos-run --bundle B --precision int8 --self-check
scores the bundle's probe clips with the chosen backend and precision and
compares them with their stored FP32 scores (exit 1 when outside tolerance).

Exit status: 0 all scored, 1 some item failed, 2 usage, bundle or backend error,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 141 the reader of stdout went away;
the lines written until then are kept.
"""


@dataclass
class Job:
    record: dict            # echoed in JSON output
    item: object            # path or Unscorable
    prompt: str | None
    line: int | None = None     # the JSONL line it came from (--ray numbers its rows by it)


@click.command(cls=Command, help=HELP, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("args", nargs=-1, metavar="[CLIP PROMPT | CLIPS...]")
@click.option("-p", "--prompt", help="Prompt for every clip given as an argument.")
@click.option("--jsonl", "jsonl", metavar="FILE", help='Read {"path", "prompt"} lines from FILE ("-": stdin).')
@click.option("-o", "--out", type=click.Path(writable=True),
              help="Write results here instead of stdout (with --ray: a JSONL file, or a folder whose name ends in "
                   ".parquet).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per clip instead of text.")
@click.option("--bundle", type=click.Path(), help="Exported bundle directory, or bundle archive (model.tar: unpacked into the cache once) "
              "(default: $DERAMOS_BUNDLE, else the default model).")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="auto tries tensorrt, onnxruntime-tensorrt, onnxruntime-cuda, onnxruntime-cpu in that order.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Windows per inference batch.")
@click.option("--threads", type=click.IntRange(min=1),
              help="CPU threads per ONNX Runtime session (at most the machine's CPU cores).")
@click.option("--self-check", is_flag=True,
              help="Score the bundle's probe clips with this --backend/--precision and compare with their stored "
                   "FP32 scores (max |Δ|, rank agreement); exit 0 within tolerance, 1 outside. Takes no clips.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no messages; errors still go to stderr.")
@click.option("-v", "--verbose", is_flag=True, help="Say which backend runs and why the others were skipped.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="auto", metavar="[auto|local|ADDRESS]",
              help="Score on a Ray cluster (pip install 'deramos[ray]'): an actor pool of Scorers writes --out "
                   "(JSONL, or a .parquet folder) in input order, with \"row\" = the manifest's line number; a rerun "
                   "skips the rows already there. local: a new cluster on 127.0.0.1; HOST:PORT: a cluster's GCS; "
                   "ray://HOST:PORT: Ray Client; auto: $RAY_ADDRESS, else the cluster `ray start` recorded on "
                   "this machine, else local. An address that does not answer fails within ~20 s.")
def main(args, prompt, jsonl, out, as_json, bundle, backend, precision, batch_size, threads, self_check, quiet, verbose,
         ray_address):
    _tolerant_streams()
    if threads is not None:
        _check_threads(threads)
    if self_check:
        if args or prompt is not None or jsonl is not None:
            raise click.UsageError("--self-check scores the bundle's own probe clips; give no clips, --prompt or --jsonl")
        sys.exit(_guarded(lambda: _self_check(bundle, backend, precision, threads, as_json, quiet, verbose)))
    jobs, total = _jobs(args, prompt, jsonl)
    if out is not None and ray_address is None and os.path.isdir(out):   # --ray writes a .parquet folder
        raise click.BadParameter(f"File {printable(repr(out))} is a directory.", param_hint="'-o' / '--out'")
    if out is None and sys.stdout is None:
        fail("stdout is closed: nowhere to write the scores; give --out FILE")
    if out is not None:
        jobs = _check_out(out, jobs, jsonl)
    if ray_address is not None:
        run = _plugin("ray")
        sys.exit(_guarded(lambda: run(jobs, out, ray_address, bundle=bundle, backend=backend, precision=precision,
                                      batch_size=batch_size, threads=threads, quiet=quiet)))
    code = _guarded(lambda: _score(jobs, total, out, as_json or jsonl is not None, bundle, backend, precision,
                                   batch_size, threads, quiet, verbose))
    sys.exit(code)


def _plugin(name: str):
    """A runner another folder registers under the `deramos.run` entry points (deramos.scale
    for --ray): the runtime offers the option without importing what serves it."""
    from importlib.metadata import entry_points

    found = list(entry_points(group="deramos.run", name=name))
    if not found:
        raise click.UsageError(f"--{name} is not available in this installation (reinstall deramos)")
    return found[0].load()


def _guarded(run) -> int:
    """What a user can cause (a bundle, a backend, a file; BundleError is a ValueError) ends in
    its error line and exit status 2; Ctrl-C, SIGTERM, a reader gone and anything unexpected end
    as every command's do (cli_common.exits_as_documented)."""
    from .backends import BackendUnavailable

    with errors_as_messages(BackendUnavailable, ValueError, OSError):
        return run()


def _score(jobs, total, out, as_json, bundle, backend, precision, batch_size, threads, quiet, verbose) -> int:
    from .scorer import Scorer

    say = (lambda line: None) if quiet else stderr_line
    with _stop_on_sigterm():
        _quiet_onnxruntime(backend)
        scorer = Scorer.load(bundle, backend=backend, precision=precision, threads=threads,
                             batch_size=batch_size, say=say)
        try:
            if verbose:
                stderr_line(str(scorer.backend_report))
            sink = open(out, "w", encoding="utf-8") if out else sys.stdout
            ascii_json = _ascii_only(sink)
            failed = 0
            try:
                with _progress(total, quiet) as bar:
                    for job, score in _scored(scorer, jobs):
                        if not score.ok:
                            failed += 1
                            _emit(bar, sys.stderr, printable(error_line(score.error)))
                        line = _json_line(job, score, ascii_json) if as_json else _text_line(job, score)
                        if line is not None:
                            _emit(bar, sink, line)
                        bar.update(1)
            finally:
                if out:
                    sink.close()
        finally:
            scorer.close()
    return EXIT_FAILED if failed else EXIT_OK


@contextlib.contextmanager
def _stop_on_sigterm():
    """SIGTERM (kill, a job scheduler, docker stop) ends the run as Ctrl-C does: the output is
    closed with every line scored so far, and the exit status is 143. A second SIGTERM during
    that cleanup ends the process at once (the lines are already on disk: each is flushed)."""
    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:   # not the main thread (main() called from an embedding): leave it alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _quiet_onnxruntime(backend: str) -> None:
    """ONNX Runtime's own (coloured) log lines never reach stderr: deramos reports what matters
    in one line. Its default logger (used outside a session's options) passes errors only."""
    if backend == "tensorrt":
        return
    try:
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)
    except Exception:   # not installed or broken: Scorer.load says so
        pass


def _emit(bar, stream, line: str) -> None:
    """One whole line, written and flushed at once, so that what was scored is on disk (or in
    the pipe) whenever the run stops, even by SIGKILL. A closed stream (`2>&-`) is skipped."""
    if stream is None:
        return
    try:
        if isinstance(bar, _NoBar) or stream not in (sys.stdout, sys.stderr):
            stream.write(line + "\n")
        else:
            bar.write(line, file=stream)     # clears and redraws the bar around the line
        stream.flush()
    except BrokenPipeError:
        if stream is sys.stdout:
            raise ReaderGone() from None
        sys.stderr = None                    # stderr's reader is gone: the scores still go on


def _self_check(bundle, backend, precision, threads, as_json, quiet, verbose) -> int:
    from .scorer import Scorer

    say = (lambda line: None) if quiet else stderr_line
    with Scorer.load(bundle, backend=backend, precision=precision, threads=threads, say=say) as scorer:
        if verbose:
            stderr_line(str(scorer.backend_report))
        from .probes import self_check

        report = self_check(scorer)
    print(json.dumps(report.to_dict(), ensure_ascii=False) if as_json else report.format())
    return EXIT_OK if report.passed else EXIT_FAILED


def _scored(scorer, jobs: Iterable[Job]) -> Iterator[tuple]:
    """Pairs (job, score) in input order, with the scorer decoding ahead of the output."""
    waiting: deque[Job] = deque()

    def pairs():
        for job in jobs:
            waiting.append(job)
            yield job.item, job.prompt

    for score in scorer.iter_scores(pairs()):
        yield waiting.popleft(), score


# --- inputs ----------------------------------------------------------------------------------


def _jobs(args: tuple[str, ...], prompt: str | None, jsonl: str | None) -> tuple[Iterable[Job], int | None]:
    if jsonl is not None:
        if args or prompt is not None:
            raise click.UsageError("--jsonl reads clips and prompts from the file; give no clips or --prompt with it")
        return _jsonl_jobs(jsonl)
    if prompt is not None:
        if not args:
            raise click.UsageError("--prompt given but no clips to score")
        return [Job({"path": path, "prompt": prompt}, path, prompt) for path in args], len(args)
    if len(args) != 2:
        raise click.UsageError('give one clip and its prompt (deramos-run clip.wav "prompt"), '
                               'or --prompt "..." with several clips, or --jsonl FILE')
    if _is_audio_file(args[1]) or _has_audio_suffix(args[1]):
        what = "is an audio file" if _is_audio_file(args[1]) else "looks like an audio file name (no such file)"
        raise click.UsageError(f'the prompt {printable(repr(args[1]))} {what}; to score several clips '
                               f'give their prompt with --prompt (deramos-run --prompt "..." CLIPS...)')
    return [Job({"path": args[0], "prompt": args[1]}, args[0], args[1])], 1


def _is_audio_file(text: str) -> bool:
    """A second argument that names an existing audio file is a clip, not a prompt: a regular
    file with an audio suffix, or one libsndfile opens (a clip saved without an extension)."""
    try:
        if not stat.S_ISREG(os.stat(text).st_mode):
            return False
    except (OSError, ValueError):   # no such file, a name too long or with a NUL: a prompt
        return False
    if _has_audio_suffix(text):
        return True
    import soundfile

    try:
        soundfile.info(os.fsencode(text))
    except Exception:   # libsndfile cannot open it (a text file): it may well be a prompt
        return False
    return True


def _has_audio_suffix(text: str) -> bool:
    """"b.wav", "take 2.flac": a name, not a description of music."""
    suffix = os.path.splitext(text)[1].lstrip(".").upper()
    return bool(suffix) and suffix in _audio_suffixes()


def _audio_suffixes() -> set[str]:
    import soundfile

    return set(soundfile.available_formats()) | {"MP3", "OGA", "OPUS", "AIF", "M4A", "AAC", "WMA"}


def _jsonl_jobs(source: str) -> tuple[Iterable[Job], int | None]:
    """A file and stdin are read alike: as bytes, line by line, so that a line that is not
    UTF-8 fails alone, and a UTF-8 BOM before line 1 is skipped."""
    if source == "-":
        stream = getattr(sys.stdin, "buffer", None)
        if stream is None and sys.stdin is None:
            raise click.BadParameter("stdin is closed", param_hint="--jsonl")
        lines = stream if stream is not None else (line.encode("utf-8", "surrogateescape") for line in sys.stdin)
        return (_parse_numbered(n, line) for n, line in _numbered(lines) if line.strip()), None
    try:
        with open(source, "rb") as handle:
            lines = [(n, line) for n, line in _numbered(handle) if line.strip()]
    except OSError as error:
        raise click.BadParameter(f"{printable(source)}: {_one_line(error.strerror or error)}",
                                 param_hint="--jsonl") from None
    folder = os.path.dirname(source)    # relative paths are the file's own: deramos-build --calib reads them so
    return [_parse_numbered(n, line, folder) for n, line in lines], len(lines)


def _numbered(lines) -> Iterator[tuple[int, bytes]]:
    for number, line in enumerate(lines, start=1):
        yield number, (line.removeprefix(b"\xef\xbb\xbf") if number == 1 else line)


def _parse_line(number: int, raw: bytes, folder: str = "") -> Job:
    """A JSONL line as a job; a malformed one becomes an item that fails with the reason.
    A relative "path" is taken relative to `folder` (the JSONL file's; "" for stdin: the
    current directory); the output echoes it as given."""
    from .rows import item_of
    from .scorer import Unscorable

    where = f"line {number}"
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return Job({"line": number}, Unscorable(where, f"not UTF-8 text (byte 0x{raw[error.start]:02x} at "
                                                       f"byte {error.start}; save the file as UTF-8)"), None)
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        return Job({"line": number}, Unscorable(where, f"not valid JSON ({error.msg})"), None)
    except RecursionError:   # [[[[...]]]] 100 000 deep
        record = None
    except ValueError:       # an integer longer than Python converts (sys.get_int_max_str_digits)
        return Job({"line": number}, Unscorable(where, f"holds a number of more than "
                                                       f"{sys.get_int_max_str_digits()} digits"), None)
    if record is None or _deeper_than(record, MAX_JSON_DEPTH):   # the same limit from a file or stdin
        return Job({"line": number}, Unscorable(where, f"JSON nested more than {MAX_JSON_DEPTH} levels deep"), None)
    if not isinstance(record, dict):
        return Job({"line": number}, Unscorable(where, 'expected an object like {"path": ..., "prompt": ...}'), None)
    path, prompt = item_of(record, where)      # the check deramos.scale applies to a Dataset's rows
    if isinstance(path, Unscorable):
        return Job(record, path, None)
    return Job(record, os.path.join(folder, path) if folder else path, prompt)


def _parse_numbered(number: int, raw: bytes, folder: str = "") -> Job:
    job = _parse_line(number, raw, folder)
    job.line = number
    return job


def _deeper_than(value, limit: int) -> bool:
    """Whether lists and objects nest more than `limit` levels (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def _check_threads(threads: int) -> None:
    from .threads import cpu_cores

    if threads > cpu_cores():
        fail(f"--threads {threads}: more than this machine's {cpu_cores()} CPU cores (give 1 to {cpu_cores()})")


def _check_out(out: str, jobs, jsonl: str | None):
    """--out must be none of the inputs: opening it for writing would erase that clip (or the
    JSONL file) before it is read. Inputs known now are checked now, before anything is scored
    (same file by device and inode, or by resolved path: symlinks and ./ are seen through);
    a line read from stdin later, when it comes (a failed item)."""
    from .scorer import Unscorable

    is_out = _SameFile(out)
    if jsonl is not None and is_out(sys.stdin if jsonl == "-" else jsonl):
        fail(f"--out {out} is the --jsonl input{' (stdin)' if jsonl == '-' else ''}; refusing to overwrite it")
    if isinstance(jobs, list):
        for job in jobs:
            if isinstance(job.item, str) and is_out(job.item):
                fail(f"--out {out} is the input clip {job.item}; refusing to overwrite it (choose another --out)")
        return jobs

    def checked(job: Job) -> Job:
        if isinstance(job.item, str) and is_out(job.item):
            return Job(job.record, Unscorable(job.item, "is the --out file (being written); not read as a clip"),
                       None, job.line)
        return job
    return (checked(job) for job in jobs)


class _SameFile:
    """Whether a path (or an open stream) is the file `path` names."""

    def __init__(self, path: str):
        self.identity, self.real = _identity(path), _real(path)

    def __call__(self, other) -> bool:
        if self.identity is not None and _identity(other) == self.identity:
            return True
        return isinstance(other, str) and self.real is not None and _real(other) == self.real


def _identity(target) -> tuple[int, int] | None:
    try:
        info = os.stat(target) if isinstance(target, str) else os.fstat(target.fileno())
    except (OSError, ValueError, AttributeError):   # missing, an odd name, a closed stream
        return None
    return info.st_dev, info.st_ino


def _real(path: str) -> str | None:
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return None


# --- outputs ---------------------------------------------------------------------------------


def _text_line(job: Job, score) -> str | None:
    if not score.ok:
        return None   # the error line on stderr says it all
    return printable(f"{job.record.get('path', score.name)}  MI {score.mi:.2f}  TA {score.ta:.2f}")


def _json_line(job: Job, score, ascii_only: bool = False) -> str:
    # The result object deramos.scale writes too (runtime/rows.py). Lone surrogates (from
    # "\ud800" in the input, or a file name that is not UTF-8) cannot be written as UTF-8: JSON's
    # own escape keeps them, and reading the line back restores them. A stream that is not
    # UTF-8 (PYTHONIOENCODING=ascii) gets JSON's escapes for all non-ASCII.
    from .rows import json_text, result_of

    return json_text(result_of(job.record, score), ascii_only)


def _ascii_only(stream) -> bool:
    """Whether `stream` cannot take every character (its encoding is not a UTF)."""
    try:
        return not codecs.lookup(getattr(stream, "encoding", None) or "utf-8").name.startswith("utf")
    except LookupError:
        return True


class _NoBar:
    def update(self, n: int) -> None:
        pass

    @staticmethod
    def write(line: str, file=None) -> None:
        print(line, file=file or sys.stdout, flush=file is sys.stderr)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def _progress(total: int | None, quiet: bool):
    """A tqdm bar on stderr for long inputs when stderr is a terminal."""
    interactive = sys.stderr is not None and sys.stderr.isatty()
    if quiet or not interactive or (total is not None and total < 8):
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="clip", file=sys.stderr, dynamic_ncols=True)


def _tolerant_streams() -> None:
    """A character the terminal's encoding lacks (PYTHONIOENCODING=ascii, a latin-1 locale and
    an emoji in a name) is written as a backslash escape instead of stopping the run."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):   # closed (None), or not a text stream of io's
            pass


def _open_standard_fds() -> None:
    """A standard descriptor closed at start (`>&-`, `2>&-`) is opened on /dev/null: the next file
    opened (the --out file, a graph) would otherwise get number 1 or 2, and what a library writes
    there (ONNX Runtime logs to fd 2) would land in it. sys.stdout / sys.stderr stay None."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            try:
                null = os.open(os.devnull, os.O_RDWR)
                if null != fd:
                    os.dup2(null, fd)
                    os.close(null)
            except OSError:
                pass



def entry() -> None:
    """The `deramos-run` console script: main(), then an exit without interpreter teardown.
    By then every output is flushed and closed; what teardown would do is free the ONNX Runtime
    sessions and modules one by one, ~0.06 s of a 0.5 s warm run. A --ray run exits normally:
    Ray's own exit handlers stop the processes of a local cluster."""
    _open_standard_fds()
    _tolerant_streams()   # before click parses: its own usage errors may echo an argument
    try:
        main()
        code = 0
    except SystemExit as done:
        code = done.code
    if "ray" in sys.modules:
        sys.exit(code)
    if isinstance(code, str):
        stderr_line(code)
        code = 1          # as Python does for sys.exit("message")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):   # a closed pipe (... | head), a closed stream (>&-)
            pass
    os._exit(code or 0)


if __name__ == "__main__":
    entry()

"""deramos-run: score text-to-music clips (MI = music impression, TA = text alignment, 1-5)."""
from __future__ import annotations

import json
import os
import re
import sys
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator

import click

from .backends import BACKENDS
from .bundle import PRECISIONS
from .errors import one_line as _one_line

EXIT_OK, EXIT_ITEM_FAILED, EXIT_USAGE = 0, 1, 2
_SURROGATE = re.compile("[\ud800-\udfff]")

HELP = """Score text-to-music clips: MI (music impression) and TA (text alignment), 1 to 5.

\b
  deramos-run clip.wav "calm solo piano"
  deramos-run --json clip.wav "calm solo piano"
  deramos-run --prompt "upbeat funk with slap bass" a.wav b.flac c.ogg
  deramos-run --jsonl items.jsonl --out scores.jsonl
  cat items.jsonl | deramos-run --jsonl - > scores.jsonl

\b
JSONL input: one object per line, {"path": "a.wav", "prompt": "calm solo piano"}
(UTF-8, paths relative to the current directory); the output repeats each object
with "mi", "ta" and "error" added, in input order. Two clips without --prompt are
refused: the second would be taken for the prompt.

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

Exit status: 0 all scored, 1 some item failed, 2 usage, bundle or backend error.
"""


@dataclass
class Job:
    record: dict            # echoed in JSON output
    item: object            # path or Unscorable
    prompt: str | None


@click.command(help=HELP, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("args", nargs=-1, metavar="[CLIP PROMPT | CLIPS...]")
@click.option("-p", "--prompt", help="Prompt for every clip given as an argument.")
@click.option("--jsonl", "jsonl", metavar="FILE", help='Read {"path", "prompt"} lines from FILE ("-": stdin).')
@click.option("-o", "--out", type=click.Path(dir_okay=False, writable=True), help="Write results here instead of stdout.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per clip instead of text.")
@click.option("--bundle", type=click.Path(), help="Exported bundle directory, or bundle archive (model.tar: unpacked into the cache once) "
              "(default: $DERAMOS_BUNDLE, else the default model).")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="auto tries tensorrt, onnxruntime-tensorrt, onnxruntime-cuda, onnxruntime-cpu in that order.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Windows per inference batch.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads per ONNX Runtime session.")
@click.option("--self-check", is_flag=True,
              help="Score the bundle's probe clips with this --backend/--precision and compare with their stored "
                   "FP32 scores (max |Δ|, rank agreement); exit 0 within tolerance, 1 outside. Takes no clips.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no messages; errors still go to stderr.")
@click.option("-v", "--verbose", is_flag=True, help="Say which backend runs and why the others were skipped.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="auto", metavar="[auto|local|ADDRESS]",
              help="Score on a Ray cluster (pip install 'deramos[ray]'): an actor pool of Scorers writes --out "
                   "(JSONL, or a .parquet folder) in input order; a rerun skips the rows already there. "
                   "auto: $RAY_ADDRESS or a running cluster, else a local one.")
def main(args, prompt, jsonl, out, as_json, bundle, backend, precision, batch_size, threads, self_check, quiet, verbose,
         ray_address):
    if self_check:
        if args or prompt is not None or jsonl is not None:
            raise click.UsageError("--self-check scores the bundle's own probe clips; give no clips, --prompt or --jsonl")
        sys.exit(_guarded(lambda: _self_check(bundle, backend, precision, threads, as_json, quiet, verbose)))
    jobs, total = _jobs(args, prompt, jsonl)
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
    """Everything a user can cause ends in one line on stderr, never a traceback."""
    from .backends import BackendUnavailable
    from .bundle import BundleError

    try:
        return run()
    except (BundleError, BackendUnavailable, ValueError, OSError) as error:
        _error(_one_line(error))
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except Exception as error:
        if os.environ.get("DERAMOS_DEBUG"):
            raise
        _error(f"unexpected {type(error).__name__}: {_one_line(error)} (set DERAMOS_DEBUG=1 for a traceback)")
    return EXIT_USAGE


def _score(jobs, total, out, as_json, bundle, backend, precision, batch_size, threads, quiet, verbose) -> int:
    from .scorer import Scorer

    say = (lambda line: None) if quiet else _error_stream_line
    scorer = Scorer.load(bundle, backend=backend, precision=precision, threads=threads,
                         batch_size=batch_size, say=say)
    if verbose:
        _error_stream_line(str(scorer.backend_report))
    sink = open(out, "w", encoding="utf-8") if out else sys.stdout
    failed = 0
    try:
        with _progress(total, quiet) as bar:
            for job, score in _scored(scorer, jobs):
                if not score.ok:
                    failed += 1
                    bar.write(_printable(f"error: {score.error}"), file=sys.stderr)
                line = _json_line(job, score) if as_json else _text_line(job, score)
                if line is not None:
                    bar.write(line, file=sink)
                bar.update(1)
    finally:
        if out:
            sink.close()
        scorer.close()
    return EXIT_ITEM_FAILED if failed else EXIT_OK


def _self_check(bundle, backend, precision, threads, as_json, quiet, verbose) -> int:
    from .scorer import Scorer

    say = (lambda line: None) if quiet else _error_stream_line
    with Scorer.load(bundle, backend=backend, precision=precision, threads=threads, say=say) as scorer:
        if verbose:
            _error_stream_line(str(scorer.backend_report))
        from .probes import self_check

        report = self_check(scorer)
    print(json.dumps(report.to_dict(), ensure_ascii=False) if as_json else report.format())
    return EXIT_OK if report.passed else EXIT_ITEM_FAILED


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
    if _is_audio_file(args[1]):
        raise click.UsageError(f'the prompt {_printable(repr(args[1]))} is an audio file; to score several clips '
                               f'give their prompt with --prompt (deramos-run --prompt "..." CLIPS...)')
    return [Job({"path": args[0], "prompt": args[1]}, args[0], args[1])], 1


def _is_audio_file(text: str) -> bool:
    """A second argument that names an existing audio file is a clip, not a prompt."""
    suffix = os.path.splitext(text)[1].lstrip(".").upper()
    return bool(suffix) and (suffix in _audio_suffixes()) and os.path.isfile(text)


def _audio_suffixes() -> set[str]:
    import soundfile

    return set(soundfile.available_formats()) | {"MP3", "OGA", "OPUS", "AIF", "M4A", "AAC", "WMA"}


def _jsonl_jobs(source: str) -> tuple[Iterable[Job], int | None]:
    """A file and stdin are read alike: as bytes, line by line, so that a line that is not
    UTF-8 fails alone, and a UTF-8 BOM before line 1 is skipped."""
    if source == "-":
        stream = getattr(sys.stdin, "buffer", None)
        lines = stream if stream is not None else (line.encode("utf-8", "surrogateescape") for line in sys.stdin)
        return (_parse_line(n, line) for n, line in _numbered(lines) if line.strip()), None
    try:
        with open(source, "rb") as handle:
            lines = [(n, line) for n, line in _numbered(handle) if line.strip()]
    except OSError as error:
        raise click.BadParameter(f"{_printable(source)}: {_one_line(error.strerror or error)}",
                                 param_hint="--jsonl") from None
    return [_parse_line(n, line) for n, line in lines], len(lines)


def _numbered(lines) -> Iterator[tuple[int, bytes]]:
    for number, line in enumerate(lines, start=1):
        yield number, (line.removeprefix(b"\xef\xbb\xbf") if number == 1 else line)


def _parse_line(number: int, raw: bytes) -> Job:
    """A JSONL line as a job; a malformed one becomes an item that fails with the reason."""
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
    if not isinstance(record, dict):
        return Job({"line": number}, Unscorable(where, 'expected an object like {"path": ..., "prompt": ...}'), None)
    path, prompt = record.get("path"), record.get("prompt")
    if not isinstance(path, str) or not path:
        return Job(record, Unscorable(where, 'missing "path" (a string)'), None)
    if not isinstance(prompt, str):
        return Job(record, Unscorable(f"{where} ({path})", 'missing "prompt" (a string)'), None)
    return Job(record, path, prompt)


# --- outputs ---------------------------------------------------------------------------------


def _text_line(job: Job, score) -> str | None:
    if not score.ok:
        return None   # the error line on stderr says it all
    return _printable(f"{job.record.get('path', score.name)}  MI {score.mi:.2f}  TA {score.ta:.2f}")


def _json_line(job: Job, score) -> str:
    result = dict(job.record)
    result.update(mi=_rounded(score.mi), ta=_rounded(score.ta), error=score.error)
    # Lone surrogates (from "\ud800" in the input, or a file name that is not UTF-8) cannot be
    # written as UTF-8: JSON's own escape keeps them, and reading the line back restores them.
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(result, ensure_ascii=False))


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


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
    interactive = sys.stderr.isatty()
    if quiet or not interactive or (total is not None and total < 8):
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="clip", file=sys.stderr, dynamic_ncols=True)


def _error(message: str) -> None:
    print(_printable(f"error: {message}"), file=sys.stderr)


def _error_stream_line(message: str) -> None:
    print(_printable(message), file=sys.stderr)


def _printable(text: str) -> str:
    """Text for a terminal: a character the stream cannot encode (a lone surrogate) becomes
    a backslash escape instead of failing the whole run."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8") if _SURROGATE.search(text) else text



def entry() -> None:
    """The `deramos-run` console script: main(), then an exit without interpreter teardown.
    By then every output is flushed and closed; what teardown would do is free the ONNX Runtime
    sessions and modules one by one, ~0.06 s of a 0.5 s warm run. A --ray run exits normally:
    Ray's own exit handlers stop the processes of a local cluster."""
    try:
        main()
        code = 0
    except SystemExit as done:
        code = done.code
    if "ray" in sys.modules:
        sys.exit(code)
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):   # a closed pipe (deramos-run ... | head): nothing left to say
            pass
    os._exit(code or 0)


if __name__ == "__main__":
    entry()

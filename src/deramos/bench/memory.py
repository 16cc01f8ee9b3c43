"""Peak memory of deramos-run where issue 20 bounds it, each case in a process of its own:

    python -m deramos.bench.memory [--bundle B] [--long-minutes 60] [--rows 10000] [--batch-clips 32] [--export] [--json F]

  long    one --long-minutes file, 44.1 kHz stereo 16-bit WAV, scored by `deramos-run B file prompt`
          (decoding runs ahead within the Scorer's decode budget; the file is never held whole);
  rows    a JSONL of --rows lines over --distinct-clips clips of --row-seconds, every line with a
          prompt of its own (the prompt cache must stay bounded), `deramos-run --jsonl`; its resident
          size is sampled against the lines written, so growth shows as MB per 1000 rows;
  batch   --batch-clips clips of 10 s (one window each) scored 8 at a time, `deramos-run --jsonl
          --batch-size 8`: the resident size of batch-8 scoring;
  export  the first use of the default model: `deramos-run` with an empty cache, which runs the
          export (deramos-export, a child process) before scoring.

Peak RSS is what `/usr/bin/time -v` reports for the command: the kernel's ru_maxrss of the child
and of the processes it waited for (the export child included), the largest one, not their sum.
The targets are the issue's (2-core CPU): long <= 1.5 GB, rows <= 1 GB and flat, batch-8 scoring
<= 0.8 GB, export <= 3 GB.
Memory, not time: the machine's load does not move these numbers, but the timings printed beside
them are only for orientation.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import numpy as np

from ..runtime.cli_common import EXIT_FAILED, Command, errors_as_messages, stderr_line

TARGETS_GB = {"long": 1.5, "rows": 1.0, "batch": 0.8, "export": 3.0}
BATCH = 8
BATCH_CLIP_SECONDS = 10.0
RUN = [sys.executable, "-m", "deramos.runtime.cli"]
SAMPLE_EVERY_S = 0.2


@dataclass
class Measure:
    case: str
    what: str
    peak_rss_gb: float
    target_gb: float
    seconds: float
    exit_status: int
    # rows only: (lines written, resident GB) samples, and the growth between the first and last tenth
    samples: list[tuple[int, float]] = field(default_factory=list)
    growth_mb_per_1000_rows: float | None = None

    @property
    def met(self) -> bool:
        flat = self.growth_mb_per_1000_rows is None or self.growth_mb_per_1000_rows <= 5.0
        return self.exit_status == 0 and self.peak_rss_gb <= self.target_gb and flat


# The command runs as the child of a small launcher, which reports the command's ru_maxrss: a child
# forked straight from this process would start its record at our own resident size (the kernel
# keeps the larger of the pre-exec and post-exec peaks), and a test runner is over 1 GB.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def run_measured(command: list[str], env: dict | None = None, lines_of: Path | None = None):
    """Run `command`; -> (exit status, peak RSS in GB as /usr/bin/time -v gives it, seconds, samples
    of (lines in `lines_of`, the command's own RSS in GB))."""
    import psutil

    start = time.monotonic()
    with tempfile.NamedTemporaryFile("r", suffix=".maxrss") as report:
        launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, report.name, *command], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        samples: list[tuple[int, float]] = []
        done = threading.Event()
        lines = LineCounter(lines_of)

        def sample():
            while not done.wait(SAMPLE_EVERY_S):
                try:
                    (process,) = psutil.Process(launcher.pid).children() or (None,)
                    rss = process.memory_info().rss / 1e9 if process else 0.0
                except (psutil.Error, ValueError):
                    continue
                if rss > 0:   # not started yet, or exited and not yet reaped
                    samples.append((lines.count(), rss))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stderr = launcher.stderr.read()
        status = launcher.wait()
        done.set()
        sampler.join()
        peak_kb = int(report.read() or 0)
    if status != 0:
        sys.stderr.write(stderr.decode(errors="replace")[-2000:])
    return status, peak_kb * 1024 / 1e9, time.monotonic() - start, samples


class LineCounter:
    """Lines written so far to a file that only grows, reading each byte once (0 without a file)."""

    def __init__(self, path: Path | None):
        self.path, self.offset, self.lines = path, 0, 0

    def count(self) -> int:
        if self.path is None or not self.path.exists():
            return self.lines
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            for block in iter(lambda: f.read(1 << 20), b""):
                self.lines += block.count(b"\n")
                self.offset += len(block)
        return self.lines


def write_long_file(path: Path, minutes: int, rate: int = 44100) -> Path:
    """A stereo 16-bit WAV of `minutes`, written a minute at a time (this process stays small)."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=rate, channels=2, subtype="PCM_16") as out:
        for minute in range(minutes):
            t = np.arange(rate * 60) / rate
            tone = 0.2 * np.sin(2 * np.pi * (220 + 55 * (minute % 7)) * t) + 0.02 * rng.standard_normal(t.size)
            out.write(np.stack([tone, 0.8 * tone], 1).astype(np.float32))
    return path


def render_clips(folder: Path, count: int, seconds: float) -> list[tuple[Path, str]]:
    """`count` rendered synthetic clips (WAV) in `folder`, each with a prompt describing it."""
    import soundfile as sf

    from ..data.synth.music import SAMPLE_RATE, prompt_for, random_attributes, render_clip

    rng = np.random.default_rng(7)
    clips = []
    for i in range(count):
        attributes = random_attributes(rng)
        path = folder / f"clip{i:03d}.wav"
        sf.write(path, render_clip(attributes, rng, SAMPLE_RATE, seconds), SAMPLE_RATE)
        clips.append((path, prompt_for(attributes, rng)))
    return clips


def write_rows(folder: Path, rows: int, distinct: int, seconds: float) -> Path:
    """`distinct` rendered clips and a JSONL of `rows` lines cycling over them, each with its own prompt."""
    clips = render_clips(folder, distinct, seconds)
    manifest = folder / "rows.jsonl"
    with open(manifest, "w", encoding="utf-8") as out:
        for row in range(rows):
            path, prompt = clips[row % distinct]
            out.write(json.dumps({"path": path.name, "prompt": f"{prompt} (take {row})"}) + "\n")
    return manifest


def growth_per_1000(samples: list[tuple[int, float]], rows: int) -> float | None:
    """MB per 1000 rows between the first tenth of the rows (start-up done) and the end."""
    settled = [(n, rss) for n, rss in samples if n >= rows // 10]
    if len(settled) < 2 or settled[-1][0] == settled[0][0]:
        return None
    first = [rss for n, rss in settled if n <= settled[0][0] + rows // 20]
    last = [rss for n, rss in settled if n >= settled[-1][0] - rows // 20]
    return (max(last) - max(first)) * 1e3 / ((settled[-1][0] - settled[0][0]) / 1000)


def measure_long(bundle: str, minutes: int, scratch: Path) -> Measure:
    clip = write_long_file(scratch / "long.wav", minutes)
    status, peak, seconds, _ = run_measured(RUN + ["--bundle", bundle, "-q", str(clip), "calm piano"])
    return Measure("long", f"{minutes} min, 44.1 kHz stereo WAV", peak, TARGETS_GB["long"], seconds, status)


def measure_rows(bundle: str, rows: int, distinct: int, seconds: float, scratch: Path) -> Measure:
    manifest = write_rows(scratch, rows, distinct, seconds)
    out = scratch / "scores.jsonl"
    status, peak, took, samples = run_measured(RUN + ["--bundle", bundle, "-q", "--jsonl", str(manifest),
                                                      "--out", str(out)], lines_of=out)
    measure = Measure("rows", f"{rows} rows of {seconds:g} s, {distinct} clips, a prompt per row", peak,
                      TARGETS_GB["rows"], took, status, samples)
    measure.growth_mb_per_1000_rows = growth_per_1000(samples, rows)
    return measure


def measure_batch(bundle: str, clips: int, scratch: Path) -> Measure:
    manifest = write_rows(scratch, clips, min(clips, BATCH), BATCH_CLIP_SECONDS)
    status, peak, took, _ = run_measured(RUN + ["--bundle", bundle, "-q", "--jsonl", str(manifest), "--batch-size",
                                                str(BATCH), "--out", str(scratch / "scores.jsonl")])
    return Measure("batch", f"{clips} clips of {BATCH_CLIP_SECONDS:g} s, --batch-size {BATCH}", peak, TARGETS_GB["batch"],
                   took, status)


def measure_export(scratch: Path) -> Measure:
    """The default model's first use, in an empty cache (the export runs in a child process)."""
    ((clip, _),) = render_clips(scratch, 1, 10.0)
    env = {**os.environ, "XDG_CACHE_HOME": str(scratch / "cache")}
    env.pop("DERAMOS_BUNDLE", None)
    status, peak, seconds, _ = run_measured(RUN + ["-q", str(clip), "calm piano"], env=env)
    return Measure("export", "first use of the default model (export + score)", peak, TARGETS_GB["export"],
                   seconds, status)


def table(measures: list[Measure]) -> str:
    lines = ["| case | what | peak RSS (GB) | target (GB) | growth (MB / 1000 rows) | met | seconds |",
             "|---|---|---|---|---|---|---|"]
    for m in measures:
        growth = "—" if m.growth_mb_per_1000_rows is None else f"{m.growth_mb_per_1000_rows:.1f}"
        lines.append(f"| {m.case} | {m.what} | {m.peak_rss_gb:.2f} | {m.target_gb:.1f} | {growth} | "
                     f"{'yes' if m.met else 'NO'} | {m.seconds:.0f} |")
    return "\n".join(lines)


@click.command(cls=Command, help=__doc__.split("\n\n")[0], context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bundle", help="Bundle to score with (default: the default model's, exported on first use).")
@click.option("--long-minutes", type=click.IntRange(0), default=60, show_default=True, help="0: skip the long file.")
@click.option("--rows", type=click.IntRange(0), default=10_000, show_default=True, help="0: skip the JSONL run.")
@click.option("--row-seconds", type=click.FloatRange(1.6), default=2.0, show_default=True,
              help="Seconds per clip (the default model needs 1.5 s at least).")
@click.option("--distinct-clips", type=click.IntRange(1), default=64, show_default=True)
@click.option("--batch-clips", type=click.IntRange(0), default=32, show_default=True,
              help="10 s clips scored at --batch-size 8; 0: skip.")
@click.option("--export/--no-export", default=True, show_default=True,
              help="Measure the first use of the default model (an export, minutes).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the measures here.")
def main(bundle, long_minutes, rows, row_seconds, distinct_clips, batch_clips, export, json_out):
    from ..runtime.default import resolve_bundle_dir

    measures = []
    with errors_as_messages(), tempfile.TemporaryDirectory(prefix="deramos-memory-") as scratch:
        scratch = Path(scratch)
        if export:
            (scratch / "export").mkdir()
            measures.append(measure_export(scratch / "export"))
        bundle = str(resolve_bundle_dir(bundle, say=stderr_line))
        if long_minutes:
            measures.append(measure_long(bundle, long_minutes, scratch))
        if rows:
            (scratch / "rows").mkdir()
            measures.append(measure_rows(bundle, rows, distinct_clips, row_seconds, scratch / "rows"))
        if batch_clips:
            (scratch / "batch").mkdir()
            measures.append(measure_batch(bundle, batch_clips, scratch / "batch"))
    click.echo(table(measures))
    if json_out:
        json_out.write_text(json.dumps([asdict(m) | {"met": m.met} for m in measures], indent=1) + "\n")
    if not all(m.met for m in measures):
        raise SystemExit(EXIT_FAILED)   # a target missed: the table says which


if __name__ == "__main__":
    main()

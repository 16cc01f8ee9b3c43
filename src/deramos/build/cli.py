"""deramos-build: add FP16 / INT8 graphs to an FP32 bundle, on the machine that will serve it."""
from __future__ import annotations

import shutil
import sys
from dataclasses import fields
from pathlib import Path

import click

from ..calibration.quantize import METHODS, QUANTIZABLE_GRAPHS
from ..runtime.targets import INT8_TARGETS, cpu_kind, default_int8_target
from .stage import BuildOptions

DEFAULTS = {f.name: f.default for f in fields(BuildOptions) if not callable(f.default_factory)}
TARGET_HELP = "; ".join(f"{name}: {means}" for name, (_, means) in INT8_TARGETS.items())


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--fp16", is_flag=True, help="Add FP16 graphs (the mel front-end stays FP32).")
@click.option("--int8", is_flag=True, help="Add INT8 QDQ graphs, calibrated.")
@click.option("--int8-target", type=click.Choice(list(INT8_TARGETS)), default=default_int8_target, show_default=True,
              help=f"Processor the INT8 graphs are for ({TARGET_HELP}).")
@click.option("--calib", metavar="DATA", help="Calibration data: MusicEval dir, JSONL of {path, prompt}, audio folder + "
              "prompts.txt, or 'probes' (the bundle's probe clips). Optional [rendered synthetic music].")
@click.option("--calib-method", type=click.Choice(METHODS), default=DEFAULTS["calib_method"], show_default=True)
@click.option("--calib-clips", type=click.IntRange(min=1), default=DEFAULTS["calib_clips"], show_default=True)
@click.option("--int8-graphs", default=",".join(DEFAULTS["int8_graphs"]), show_default=True,
              help=f"Graphs to quantise (comma-separated, of {', '.join(QUANTIZABLE_GRAPHS)}); the rest stay FP32.")
@click.option("--check-clips", type=click.IntRange(min=1), default=DEFAULTS["check_clips"], show_default=True,
              help="Held-out clips each new precision is compared with FP32 on (at least 64).")
@click.option("--trt", is_flag=True, help="Also build TensorRT engines for this GPU (one set per precision in the "
              "bundle), each compared with FP32 like the graphs (needs tensorrt + CUDA).")
@click.option("--max-batch", type=click.IntRange(min=1), default=DEFAULTS["trt_max_batch"], show_default=True,
              help="TensorRT profile: largest batch.")
@click.option("--recalibrate", is_flag=True, help="Ignore the calibration cache in the bundle.")
@click.option("--int8-search", is_flag=True, help="When INT8 misses its drift target, keep the layers that cost the most "
              "ranking agreement in FP32 until it meets it (per-layer sensitivity on the calibration clips).")
@click.option("--int8-search-margin", type=click.FloatRange(0.0, 1.0, max_open=True),
              default=DEFAULTS["int8_search_margin"], show_default=True,
              help="The search asks this much more than the held-out check (0.3: 30 percent of each allowance taken "
                   "away), because it judges on the clips it calibrated on.")
@click.option("--threads", type=click.IntRange(min=1), help="ONNX Runtime CPU threads for the checks.")
@click.option("--speed/--no-speed", default=DEFAULTS["speed"], show_default=True,
              help="Time each kept precision against FP32 on this machine and say which does not pay here.")
@click.option("--out", type=click.Path(file_okay=False), help="Write a new bundle here (a copy) instead of in place.")
def main(bundle, fp16, int8, int8_target, calib, calib_method, calib_clips, int8_graphs, check_clips, trt, max_batch,
         recalibrate, int8_search, int8_search_margin, threads, speed, out):
    """Add FP16 / INT8 graphs and TensorRT engines to an FP32 bundle (from deramos-export), without PyTorch.

    Every new precision is compared with the bundle's FP32 graphs through the runtime's own
    backends; one that misses its tolerance is left out (the bundle keeps what passed, the
    manifest keeps the failed report) and the exit status is 1.

    \b
    Examples:
      deramos-build deramos-bundle --fp16 --int8
      deramos-build deramos-bundle --int8 --calib clips.jsonl --out bundle-int8
    """
    from ..runtime.bundle import BundleError
    from .stage import build_bundle

    if not (fp16 or int8 or trt):
        raise click.UsageError("nothing to build: give --fp16, --int8 and/or --trt")
    say = lambda text: click.echo(text, err=True)  # noqa: E731
    root = Path(bundle)
    options = BuildOptions(fp16=fp16, int8=int8, calib=calib, calib_method=calib_method, calib_clips=calib_clips,
                           check_clips=check_clips, int8_graphs=tuple(g.strip() for g in int8_graphs.split(",") if g.strip()),
                           int8_target=int8_target, recalibrate=recalibrate, int8_search=int8_search,
                           int8_search_margin=int8_search_margin,
                           threads=threads, speed=speed, trt=trt, trt_max_batch=max_batch)
    try:
        if out:
            root = Path(shutil.copytree(root, out, dirs_exist_ok=False))
        if int8:
            say(f"this CPU: {cpu_kind()}; INT8 target: {int8_target}")
        result = build_bundle(root, options, say)
    except (BundleError, ValueError, OSError) as error:
        say(f"error: {' '.join(str(error).split())}")
        sys.exit(2)
    for precision, check in result.checks.items():
        say(f"{precision}: {'PASS' if check.passed else 'FAIL (left out of the bundle)'}")
    sys.exit(1 if result.failed else 0)


if __name__ == "__main__":
    main()

"""The build stage's command-line options, declared once.

deramos-build takes them, and deramos-export takes the same ones for the build it hands the FP32
bundle to (--fp16, --int8, --trt, ...): one declaration, so an option, its default and its
checks cannot differ between the two doors. Each option is passed to the command under its
BuildOptions field's name, and defaults come from BuildOptions.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import click

from ..calibration.quantize import METHODS
from ..runtime.contract import INT8_GRAPHS
from ..runtime.targets import INT8_TARGETS, default_int8_target
from .stage import BuildOptions

DEFAULTS = {f.name: f.default for f in fields(BuildOptions) if not callable(f.default_factory)}
TARGET_HELP = "; ".join(f"{name}: {means}" for name, (_, means) in INT8_TARGETS.items())


def _graph_list(ctx, param, value: str) -> tuple[str, ...]:
    return tuple(g.strip() for g in value.split(",") if g.strip())


def _calibration_data(ctx, param, value: str | None) -> str | None:
    if value and value != "probes" and not Path(value).exists():
        raise click.BadParameter(f"{value!r} does not exist (give a path, or 'probes')")
    return value


BUILD_OPTIONS = (
    click.option("--fp16", is_flag=True, help="Add FP16 graphs (the mel front-end stays FP32)."),
    click.option("--int8", is_flag=True, help="Add INT8 QDQ graphs, calibrated."),
    click.option("--int8-target", type=click.Choice(list(INT8_TARGETS)), default=default_int8_target,
                 show_default=True, help=f"Processor the INT8 graphs are for ({TARGET_HELP})."),
    click.option("--calib", metavar="DATA", callback=_calibration_data,
                 help="Calibration data: MusicEval dir, JSONL of {path, prompt}, audio folder + prompts.txt, or "
                      "'probes' (the bundle's probe clips). Optional [the bundle's probe clips; rendered synthetic "
                      "music for a bundle without them]."),
    click.option("--calib-method", type=click.Choice(METHODS), default=DEFAULTS["calib_method"], show_default=True),
    click.option("--calib-clips", type=click.IntRange(min=1), default=DEFAULTS["calib_clips"], show_default=True,
                 help="Clips used to calibrate."),
    click.option("--int8-graphs", default=",".join(DEFAULTS["int8_graphs"]), show_default=True, callback=_graph_list,
                 help=f"Graphs to quantise (comma-separated, of {', '.join(INT8_GRAPHS)}); the rest stay FP32."),
    click.option("--int8-ops", default="", callback=_graph_list,
                 help="What INT8 quantises (comma-separated): matmul (MatMul/Gemm, QDQ), conv (convolutions, QDQ), "
                      "conv-gemm (a convolution over one channel whose maximum over frequency is all that is "
                      "kept, as one integer GEMM; CPU targets). [the target's: matmul,conv-gemm on CPUs, where QDQ "
                      "convolutions ran slower than FP32; matmul,conv for tensorrt]"),
    click.option("--check-clips", type=click.IntRange(min=1), default=DEFAULTS["check_clips"], show_default=True,
                 help="Held-out clips each new precision is compared with FP32 on (at least 64)."),
    click.option("--trt", is_flag=True, help="Also build TensorRT engines for this GPU (one set per precision in the "
                 "bundle), each compared with FP32 like the graphs (needs tensorrt + CUDA)."),
    click.option("--max-batch", "trt_max_batch", type=click.IntRange(min=1), default=DEFAULTS["trt_max_batch"],
                 show_default=True, help="TensorRT profile: largest batch."),
    click.option("--recalibrate", is_flag=True, help="Ignore the calibration cache in the bundle."),
    click.option("--int8-search", is_flag=True, help="When INT8 misses its drift target, keep the layers that cost the "
                 "most ranking agreement in FP32 until it meets it (per-layer sensitivity on the calibration clips)."),
    click.option("--int8-search-margin", type=click.FloatRange(0.0, 1.0, max_open=True),
                 default=DEFAULTS["int8_search_margin"], show_default=True,
                 help="The search asks this much more than the held-out check (0.3: 30 percent of each allowance "
                      "taken away), because it judges on the clips it calibrated on."),
    click.option("--int8-min-flop-share", type=click.FloatRange(0.0, 1.0), default=DEFAULTS["int8_min_flop_share"],
                 show_default=True, help="The search fails unless at least this share of the graph's FLOPs stays INT8 "
                                         "(a graph that passes by keeping the work in FP32 is not INT8)."),
    click.option("--ship-calib", metavar="JSONL", type=click.Path(exists=True, dir_okay=False),
                 help="Copy the clips of this JSONL ({path, prompt}; e.g. real music with its SOURCES.md) into the "
                      "bundle (calibration/clips/, hashed): INT8 calibrates on them by default, here and on any "
                      "device the bundle is copied to, without torch."),
    click.option("--threads", type=click.IntRange(min=1), help="ONNX Runtime CPU threads for the checks."),
    click.option("--speed/--no-speed", default=DEFAULTS["speed"], show_default=True,
                 help="Time each kept precision against FP32 on this machine and say which does not pay here."),
)


def build_options(command):
    """Declare the build stage's options on a click command."""
    for option in reversed(BUILD_OPTIONS):
        command = option(command)
    return command


# The BuildOptions fields the options above set (the others, seed and check, are the library's).
OPTION_FIELDS = tuple(param.name for param in build_options(click.command()(lambda **_: None)).params)


def take_build_options(params: dict) -> BuildOptions:
    """The BuildOptions of a command's parameters; the build stage's are taken out of `params`."""
    return BuildOptions(**{name: params.pop(name) for name in OPTION_FIELDS})

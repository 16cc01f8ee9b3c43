"""`deramos-export`: a checkpoint (default: the embedded model) -> a validated bundle."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from ..calibration.quantize import METHODS, QUANTIZABLE_GRAPHS
from ..config import PRESETS
from ..runtime.paths import default_checkpoint_dir
from ..runtime.targets import INT8_TARGETS, default_int8_target
from .api import ExportOptions

DEFAULTS = ExportOptions()


def _load_model(checkpoint: str | None, preset_name: str | None):
    if preset_name:
        from ..config import preset
        from ..model import DeRAMOS

        return DeRAMOS(preset(preset_name)).eval(), f"preset {preset_name} (random weights)"
    from ..checkpoint import load_checkpoint

    source = checkpoint or default_checkpoint_dir()
    if source is None or not Path(source).exists():
        raise click.ClickException("no embedded default model in this installation yet; "
                                   "pass --checkpoint RUN (a deramos-train run or checkpoint directory)")
    return load_checkpoint(source), str(source)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", type=click.Path(exists=True), help="Run or checkpoint directory [embedded default model].")
@click.option("--preset", "preset_name", type=click.Choice(list(PRESETS)),
              help="Export a preset with random weights instead (benchmarks, paper-size checks).")
@click.option("--out", default="deramos-bundle", show_default=True, type=click.Path(file_okay=False))
@click.option("--fp16", is_flag=True, help="Also write FP16 graphs (the build stage, deramos-build, checked against FP32).")
@click.option("--int8", is_flag=True, help="Also write INT8 QDQ graphs, calibrated, checked against FP32.")
@click.option("--int8-target", type=click.Choice(list(INT8_TARGETS)), default=default_int8_target, show_default=True,
              help="Processor the INT8 graphs are for (see deramos-build --help).")
@click.option("--calib", type=click.Path(exists=True), help="Optional calibration data: MusicEval dir, audio folder + prompts.txt, or JSONL [rendered synthetic music].")
@click.option("--calib-method", type=click.Choice(METHODS), default=DEFAULTS.calib_method, show_default=True)
@click.option("--calib-clips", type=click.IntRange(min=1), default=DEFAULTS.calib_clips, show_default=True, help="Clips used to calibrate.")
@click.option("--recalibrate", is_flag=True, help="Ignore the calibration cache in the bundle.")
@click.option("--int8-graphs", default=",".join(DEFAULTS.int8_graphs), show_default=True,
              help=f"Graphs to quantise (comma-separated, of {', '.join(QUANTIZABLE_GRAPHS)}); the rest stay FP32.")
@click.option("--trt", is_flag=True, help="Also build TensorRT engines for this GPU, one set per precision, each checked "
              "against FP32 (needs tensorrt + CUDA).")
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True, help="TensorRT profile: largest batch.")
@click.option("--opset", default=DEFAULTS.opset, show_default=True)
@click.option("--no-validate", is_flag=True, help="Skip the checks against PyTorch and FP32 (benchmark bundles only).")
@click.option("--validate-clips", type=click.IntRange(min=1), default=DEFAULTS.validate_clips, show_default=True,
              help="Clips compared in validation (FP16/INT8 checks use at least 64).")
def main(checkpoint, preset_name, out, fp16, int8, int8_target, calib, calib_method, calib_clips, recalibrate, int8_graphs,
         trt, max_batch, opset, no_validate, validate_clips):
    """Export DeRA-MOS to ONNX (FP32, optionally FP16 / INT8) and TensorRT, validated against PyTorch.

    \b
    Examples:
      deramos-export --fp16                          # embedded default model -> ./deramos-bundle
      deramos-export --checkpoint runs/r1 --int8 --calib corpus --out bundle   # corpus: a MusicEval-layout dir
      deramos-export --preset paper --fp16 --out paper-bundle   # random weights, full size
    """
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .api import ExportFailed, ExportOptions, export_bundle

    model, source = _load_model(checkpoint, preset_name)
    say = lambda text: click.echo(text, err=True)  # noqa: E731
    say(f"exporting {source} -> {out}")
    options = ExportOptions(fp16=fp16, int8=int8, calib=calib, calib_method=calib_method, recalibrate=recalibrate,
                            opset=opset, validate=not no_validate, validate_clips=validate_clips, calib_clips=calib_clips,
                            int8_graphs=tuple(g.strip() for g in int8_graphs.split(",") if g.strip()),
                            int8_target=int8_target)
    try:
        manifest = export_bundle(model, out, options, say=say)
    except ExportFailed as err:
        say(f"error: {err}")
        sys.exit(1)
    except (ValueError, OSError) as err:   # unusable input to the build stage (e.g. --calib)
        state = f"; the FP32 bundle in {out} is complete" if (Path(out) / "manifest.json").is_file() else ""
        say(f"error: {err}{state}")
        sys.exit(2)
    sizes = {name: (Path(out) / name).stat().st_size for name in manifest["files"]}
    say(f"bundle written: {out} ({sum(sizes.values()) / 1e6:.1f} MB, {len(sizes)} files; "
        f"times {manifest['export_seconds']})")
    if trt:
        _build_trt(out, max_batch, say)


def _build_trt(out: str, max_batch: int, say) -> None:
    from ..build.stage import BuildOptions, build_bundle

    try:
        result = build_bundle(out, BuildOptions(trt=True, trt_max_batch=max_batch), say)
    except ValueError as err:
        say(f"error: {err}; the ONNX bundle in {out} is complete")
        sys.exit(3)
    if result.failed:
        say(f"error: TensorRT engines missed their check against FP32: {', '.join(result.failed)} (left unlisted)")
        sys.exit(1)


if __name__ == "__main__":
    main()

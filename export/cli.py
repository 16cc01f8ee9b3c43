"""`deramos-export`: a checkpoint (default: the embedded model) -> a validated bundle."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from ..paths import default_checkpoint_dir


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
@click.option("--preset", "preset_name", type=click.Choice(["paper", "small", "musicnn", "tiny"]),
              help="Export a preset with random weights instead (benchmarks, paper-size checks).")
@click.option("--out", default="deramos-bundle", show_default=True, type=click.Path(file_okay=False))
@click.option("--fp16", is_flag=True, help="Also write FP16 graphs (front-end and sensitive reductions stay FP32).")
@click.option("--int8", is_flag=True, help="Also write INT8 QDQ graphs, calibrated, with a drift report.")
@click.option("--calib", type=click.Path(exists=True), help="Calibration data: MusicEval dir, audio folder + prompts.txt, or JSONL [synthetic].")
@click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax", show_default=True)
@click.option("--calib-clips", default=64, show_default=True, help="Clips used to calibrate.")
@click.option("--recalibrate", is_flag=True, help="Ignore the calibration cache in the bundle.")
@click.option("--int8-graphs", default="audio_encoder", show_default=True,
              help="Graphs to quantise (comma-separated: audio_encoder,text_encoder); the rest stay FP32.")
@click.option("--trt", is_flag=True, help="Also build TensorRT engines for this GPU (needs tensorrt + CUDA).")
@click.option("--trt-precision", type=click.Choice(["fp32", "fp16", "int8"]), help="Graph the engines are built from [int8 if --int8, else fp16 if --fp16, else fp32].")
@click.option("--max-batch", default=8, show_default=True, help="TensorRT profile: largest batch.")
@click.option("--opset", default=17, show_default=True)
@click.option("--no-validate", is_flag=True, help="Skip the PyTorch-vs-ONNX Runtime checks (experts).")
@click.option("--validate-clips", default=64, show_default=True, help="Clips compared in validation.")
def main(checkpoint, preset_name, out, fp16, int8, calib, calib_method, calib_clips, recalibrate, int8_graphs, trt,
         trt_precision, max_batch, opset, no_validate, validate_clips):
    """Export DeRA-MOS to ONNX (FP32, optionally FP16 / INT8) and TensorRT, validated against PyTorch.

    \b
    Examples:
      deramos-export --fp16                          # embedded default model -> ./deramos-bundle
      deramos-export --checkpoint runs/r1 --int8 --calib data/musiceval --out bundle
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
                            int8_graphs=tuple(g.strip() for g in int8_graphs.split(",") if g.strip()))
    try:
        manifest = export_bundle(model, out, options, say=say)
    except ExportFailed as err:
        say(f"error: {err}")
        sys.exit(1)
    sizes = {name: (Path(out) / name).stat().st_size for name in manifest["files"]}
    say(f"bundle written: {out} ({sum(sizes.values()) / 1e6:.1f} MB, {len(sizes)} files; "
        f"times {manifest['export_seconds']})")
    if trt:
        _build_trt(out, trt_precision or ("int8" if int8 else "fp16" if fp16 else "fp32"), max_batch, say)


def _build_trt(out: str, precision: str, max_batch: int, say) -> None:
    from .tensorrt import Profiles, TensorRTUnavailable, build_engines

    try:
        build_engines(out, precision, Profiles(batch=(1, min(4, max_batch), max_batch)), say=say)
    except TensorRTUnavailable as err:
        say(f"error: --trt: {err}; the ONNX bundle in {out} is complete")
        sys.exit(3)


if __name__ == "__main__":
    main()

"""`deramos-export`: a checkpoint (default: the embedded model) -> a validated bundle."""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import click

from ..build.options import build_options, take_build_options
from ..build.stage import BuildOptions
from ..model.config import PRESETS
from ..runtime.cli_common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Command, say_error, stderr_line
from ..runtime.errors import DeramosError
from ..runtime.paths import default_checkpoint_dir
from .api import ExportOptions

DEFAULTS = ExportOptions()


def _load_model(checkpoint: str | None, preset_name: str | None):
    if preset_name:
        from ..model.config import preset
        from ..model.network import DeRAMOS

        return DeRAMOS(preset(preset_name)).eval(), f"preset {preset_name} (random weights)"
    from ..model.checkpoint import load_checkpoint

    source = checkpoint or default_checkpoint_dir()
    if source is None or not Path(source).exists():
        raise DeramosError("no embedded default model in this installation yet; "
                           "pass --checkpoint RUN (a deramos-train run or checkpoint directory)")
    return load_checkpoint(source), str(source)


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", type=click.Path(exists=True), help="Run or checkpoint directory [embedded default model].")
@click.option("--preset", "preset_name", type=click.Choice(list(PRESETS)),
              help="Export a preset with random weights instead (benchmarks, paper-size checks).")
@click.option("--out", default="deramos-bundle", show_default=True, type=click.Path(),
              help="Bundle folder to write, or a bundle archive (.tar, .tar.gz, .tgz): one file to copy to the "
                   "machine that serves (deramos-run --bundle model.tar).")
@click.option("--archive", type=click.Path(dir_okay=False),
              help="Also pack the bundle folder into this archive (.tar, .tar.gz, .tgz).")
@build_options
@click.option("--opset", default=DEFAULTS.opset, show_default=True)
@click.option("--no-validate", is_flag=True, help="Skip the checks against PyTorch and FP32 (benchmark bundles only).")
@click.option("--validate-clips", type=click.IntRange(min=1), default=DEFAULTS.validate_clips, show_default=True,
              help="Clips the FP32 graphs are compared with PyTorch on (FP16/INT8 against FP32: --check-clips).")
def main(checkpoint, preset_name, out, archive, opset, no_validate, validate_clips, **build):
    """Export DeRA-MOS to ONNX (FP32, optionally FP16 / INT8) and TensorRT, validated against PyTorch.

    \b
    Examples:
      deramos-export --fp16                          # embedded default model -> ./deramos-bundle
      deramos-export --fp16 --out model.tar          # the same bundle as one file (deramos-run --bundle model.tar)
      deramos-export --checkpoint runs/r1 --int8 --calib corpus --out bundle   # corpus: a MusicEval-layout dir
      deramos-export --preset paper --fp16 --out paper-bundle   # random weights, full size
    """
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ..runtime.archive import SUFFIXES, is_archive_name

    options = ExportOptions(build=take_build_options(build), opset=opset, validate=not no_validate,
                            validate_clips=validate_clips)
    if archive and not is_archive_name(archive):
        raise click.BadParameter(f"{archive!r}: an archive's name ends in {', '.join(SUFFIXES)}", param_hint="'--archive'")
    to_archive = is_archive_name(out) and not Path(out).is_dir()
    if to_archive and archive:
        raise click.UsageError("--out names an archive already: give --out DIR --archive FILE for both, or one archive")
    if not options.build.ship_calib:                  # shipped clips are chosen once shipped (build stage)
        # the clips the bundle ships, as deramos-build does
        options.build.calib = options.build.calib or ("probes" if options.build.int8 else None)
    model, source = _load_model(checkpoint, preset_name)
    say = stderr_line
    say(f"exporting {source} -> {out}")
    if not to_archive:
        code = _export(model, Path(out), options, say, shown=out)
        if archive and _complete(Path(out)):      # what the messages call complete is packed, whatever failed
            code = _pack(Path(out), archive, say) or code
        sys.exit(code)
    # --out model.tar: the bundle is written to a scratch folder beside the archive, packed, removed.
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{Path(out).name}.", dir=Path(out).parent))
    try:
        code = _export(model, scratch / "deramos-bundle", options, say, shown=out)
        if _complete(scratch / "deramos-bundle"):
            code = _pack(scratch / "deramos-bundle", out, say) or code
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    sys.exit(code)


def _export(model, folder: Path, options: ExportOptions, say, shown: str) -> int:
    """Export into `folder`; the exit status (0 done, 1 a check failed, 2 unusable input or --trt impossible).
    `shown` is what messages call the output (the archive, when the folder is a scratch one)."""
    from .api import ExportFailed, export_bundle

    try:
        manifest = export_bundle(model, folder, options, say=say)
    except ExportFailed as err:
        say_error(_keep_report(str(err), folder, shown))
        return EXIT_FAILED
    except (ValueError, OSError) as err:   # unusable input to the build stage (e.g. --calib)
        state = f"; the FP32 bundle in {shown} is complete" if _complete(folder) else ""
        say_error(f"{_shown(str(err), folder, shown)}{state}")
        return EXIT_USAGE
    sizes = {name: (folder / name).stat().st_size for name in manifest["files"]}
    what = f"bundle written: {shown}" if str(folder) == str(shown) else "bundle exported"
    say(f"{what} ({sum(sizes.values()) / 1e6:.1f} MB, {len(sizes)} files; "
        f"times {manifest['export_seconds']})")
    return _build_trt(folder, options.build, say, shown) if options.build.trt else EXIT_OK


def _complete(folder: Path) -> bool:
    return (folder / "manifest.json").is_file()


def _shown(text: str, folder: Path, shown: str) -> str:
    return text if str(folder) == str(shown) else text.replace(str(folder), str(shown))


def _keep_report(message: str, folder: Path, shown: str) -> str:
    """A failed validation's report, kept beside the archive when the folder is a scratch one."""
    report = folder / "validation_report.json"
    if str(folder) == str(shown) or not report.is_file():
        return _shown(message, folder, shown)
    kept = Path(f"{shown}.validation_report.json")
    shutil.copyfile(report, kept)
    return message.replace(str(report), str(kept))


def _pack(folder: Path, archive: str, say) -> int:
    from ..runtime.archive import write_archive
    from ..runtime.bundle import BundleError

    try:
        written = write_archive(folder, archive)
    except BundleError as err:
        say_error(err)
        return EXIT_USAGE
    say(f"archive written: {written} ({written.stat().st_size / 1e6:.1f} MB); copy it to the machine that "
        f"serves and run: deramos-run --bundle {written.name} ...")
    return EXIT_OK


def _build_trt(out: Path, build: BuildOptions, say, shown: str) -> int:
    from ..build.stage import build_bundle, engines_only

    try:
        result = build_bundle(out, engines_only(build), say)
    except ValueError as err:
        say_error(f"{_shown(str(err), out, shown)}; the ONNX bundle in {shown} is complete")
        return EXIT_USAGE
    if result.failed:
        say_error(f"TensorRT engines missed their check against FP32: {', '.join(result.failed)} (left unlisted)")
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    main()

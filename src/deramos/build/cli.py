"""deramos-build: add FP16 / INT8 graphs to an FP32 bundle, on the machine that will serve it."""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import click

from ..calibration.quantize import check_int8_options
from ..runtime.cli_common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Command, say_error, stderr_line
from ..runtime.targets import build_target_note, cpu_kind
from .options import build_options, take_build_options
from .stage import BuildOptions


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("bundle", type=click.Path())
@build_options
@click.option("--out", type=click.Path(), help="Write the result here instead of in place: a new folder (a copy), or an "
              "archive (.tar, .tar.gz, .tgz). A build that fails (exit 2) leaves nothing there.")
@click.option("--archive", type=click.Path(dir_okay=False), help="Also pack the bundle into this archive (.tar, .tar.gz, "
              ".tgz): one file for deramos-run --bundle. Alone (no --fp16/--int8/--trt) it packs the bundle as it is.")
def main(bundle, out, archive, **build):
    """Add FP16 / INT8 graphs and TensorRT engines to an FP32 bundle (from deramos-export), without PyTorch.

    BUNDLE is a bundle folder or a bundle archive (model.tar); an archive is never changed in
    place: give --out and/or --archive for the result.

    Every new precision is compared with the bundle's FP32 graphs through the runtime's own
    backends; one that misses its tolerance is left out (the bundle keeps what passed, the
    manifest keeps the failed report) and the exit status is 1. Exit status 2: nothing was
    built (unusable bundle, data or options, no TensorRT for --trt); --out is then not created.

    \b
    Examples:
      deramos-build deramos-bundle --fp16 --int8
      deramos-build deramos-bundle --int8 --calib clips.jsonl --out bundle-int8
      deramos-build model.tar --trt --out bundle-trt        # TensorRT engines for this GPU
      deramos-build deramos-bundle --archive model.tar      # pack a built bundle into one file
    """
    from ..runtime.archive import SUFFIXES, is_archive_name

    options = take_build_options(build)
    if archive and not is_archive_name(archive):
        raise click.BadParameter(f"{archive!r}: an archive's name ends in {', '.join(SUFFIXES)}", param_hint="'--archive'")
    in_place = not out
    if out and is_archive_name(out) and not Path(out).is_dir():
        if archive:
            raise click.UsageError("--out names an archive already: give --out DIR --archive FILE for both, or one archive")
        out, archive = None, out
    building = options.adds_anything
    if not building and not archive:
        raise click.UsageError("nothing to build: give --fp16, --int8, --trt and/or --ship-calib (or --archive FILE to "
                               "pack the bundle)")
    if not building and out:
        raise click.UsageError("--out is where a build is written: give --fp16, --int8 and/or --trt, or --archive FILE")
    from_archive = Path(bundle).is_file()
    if from_archive and building and not (out or archive):
        raise click.UsageError(f"{bundle} is an archive, never built in place: give --out DIR and/or --archive FILE")
    say = stderr_line
    in_place = in_place and not from_archive
    sys.exit(_build(Path(bundle), in_place, options, Path(out) if out else None, archive, say))


def _build(source: Path, in_place: bool, options: BuildOptions, out: Path | None, archive: str | None, say) -> int:
    """Check everything that can be checked, then copy (if asked) and build; a folder this run
    created is removed again unless the build finished (exit 0, or 1: what passed is kept), a
    scratch copy (for an archive-only result) always."""
    from ..runtime.archive import bundle_folder, write_archive
    from ..runtime.bundle import BundleError, load_bundle
    from .stage import build_bundle, bundle_calibration

    created, scratch = None, None
    keep = False
    try:
        source = bundle_folder(source, say=say)
        bundle = load_bundle(source, verify=False)       # not there, not a bundle: before anything is copied
        building = options.adds_anything
        if out is not None and out.exists():
            raise ValueError(f"{out}: already exists (--out writes a new bundle there)")
        if options.int8:
            check_int8_options(options)
            if options.calib is None and not options.ship_calib:   # shipped clips: chosen once shipped
                options.calib = bundle_calibration(bundle)
        if options.trt:
            from ..runtime.engine_build import available

            ok, why = available()
            if not ok:
                raise ValueError(f"--trt: {why}; nothing was built or copied")
        root = source
        if building and out is not None:
            created = out
            root = Path(shutil.copytree(source, out))
        elif building and not in_place:          # the result is an archive only: built in a scratch copy
            scratch = Path(tempfile.mkdtemp(prefix=f".{Path(archive).name}.", dir=_parent(archive)))
            root = Path(shutil.copytree(source, scratch / "deramos-bundle"))
        code = EXIT_OK
        if building:
            if options.int8:
                say(f"this CPU: {cpu_kind()}; INT8 target: {options.int8_target}")
                note = build_target_note(options.int8_target)
                if note:
                    say(f"note: {note}")
            result = build_bundle(root, options, say)
            for precision, check in result.checks.items():
                say(f"{precision}: {'PASS' if check.passed else 'FAIL (left out of the bundle)'}")
            code = EXIT_FAILED if result.failed else EXIT_OK
        if archive:
            written = write_archive(root, archive)
            say(f"archive written: {written} ({written.stat().st_size / 1e6:.1f} MB); on the machine that serves: "
                f"deramos-run --bundle {written.name} ...")
        keep = True
        return code
    except (BundleError, ValueError, OSError) as error:
        say_error(error)
        return EXIT_USAGE
    finally:
        if created is not None and not keep:
            shutil.rmtree(created, ignore_errors=True)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _parent(path: str) -> Path:
    parent = Path(path).resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent


if __name__ == "__main__":
    main()

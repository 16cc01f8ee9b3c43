"""deramos-build: add FP16 / INT8 graphs to an FP32 bundle, on the machine that will serve it."""
from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import fields
from pathlib import Path

import click

from ..calibration.quantize import METHODS, QUANTIZABLE_GRAPHS, check_int8_options
from ..runtime.cli_common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Command, say_error, stderr_line
from ..runtime.targets import INT8_TARGETS, cpu_kind, default_int8_target
from .stage import BuildOptions

DEFAULTS = {f.name: f.default for f in fields(BuildOptions) if not callable(f.default_factory)}
TARGET_HELP = "; ".join(f"{name}: {means}" for name, (_, means) in INT8_TARGETS.items())


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("bundle", type=click.Path())
@click.option("--fp16", is_flag=True, help="Add FP16 graphs (the mel front-end stays FP32).")
@click.option("--int8", is_flag=True, help="Add INT8 QDQ graphs, calibrated.")
@click.option("--int8-target", type=click.Choice(list(INT8_TARGETS)), default=default_int8_target, show_default=True,
              help=f"Processor the INT8 graphs are for ({TARGET_HELP}).")
@click.option("--calib", metavar="DATA", help="Calibration data: MusicEval dir, JSONL of {path, prompt}, audio folder + "
              "prompts.txt, or 'probes' (the bundle's probe clips). Optional [the bundle's probe clips; rendered "
              "synthetic music for a bundle without them].")
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
@click.option("--int8-min-flop-share", type=click.FloatRange(0.0, 1.0), default=DEFAULTS["int8_min_flop_share"],
              show_default=True, help="The search fails unless at least this share of the graph's FLOPs stays INT8 "
                                      "(a graph that passes by keeping the work in FP32 is not INT8).")
@click.option("--ship-calib", metavar="JSONL", type=click.Path(exists=True, dir_okay=False),
              help="Copy the clips of this JSONL ({path, prompt}; e.g. real music with its SOURCES.md) into the bundle "
                   "(calibration/clips/, hashed): INT8 calibrates on them by default, here and on any device the "
                   "bundle is copied to, without torch.")
@click.option("--threads", type=click.IntRange(min=1), help="ONNX Runtime CPU threads for the checks.")
@click.option("--speed/--no-speed", default=DEFAULTS["speed"], show_default=True,
              help="Time each kept precision against FP32 on this machine and say which does not pay here.")
@click.option("--out", type=click.Path(), help="Write the result here instead of in place: a new folder (a copy), or an "
              "archive (.tar, .tar.gz, .tgz). A build that fails (exit 2) leaves nothing there.")
@click.option("--archive", type=click.Path(dir_okay=False), help="Also pack the bundle into this archive (.tar, .tar.gz, "
              ".tgz): one file for deramos-run --bundle. Alone (no --fp16/--int8/--trt) it packs the bundle as it is.")
def main(bundle, fp16, int8, int8_target, calib, calib_method, calib_clips, int8_graphs, check_clips, trt, max_batch,
         recalibrate, int8_search, int8_search_margin, int8_min_flop_share, ship_calib, threads, speed, out, archive):
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

    if archive and not is_archive_name(archive):
        raise click.BadParameter(f"{archive!r}: an archive's name ends in {', '.join(SUFFIXES)}", param_hint="'--archive'")
    in_place = not out
    if out and is_archive_name(out) and not Path(out).is_dir():
        if archive:
            raise click.UsageError("--out names an archive already: give --out DIR --archive FILE for both, or one archive")
        out, archive = None, out
    building = fp16 or int8 or trt or bool(ship_calib)
    if not building and not archive:
        raise click.UsageError("nothing to build: give --fp16, --int8, --trt and/or --ship-calib (or --archive FILE to "
                               "pack the bundle)")
    if not building and out:
        raise click.UsageError("--out is where a build is written: give --fp16, --int8 and/or --trt, or --archive FILE")
    from_archive = Path(bundle).is_file()
    if from_archive and building and not (out or archive):
        raise click.UsageError(f"{bundle} is an archive, never built in place: give --out DIR and/or --archive FILE")
    say = stderr_line
    options = BuildOptions(fp16=fp16, int8=int8, calib=calib, calib_method=calib_method, calib_clips=calib_clips,
                           check_clips=check_clips, int8_graphs=tuple(g.strip() for g in int8_graphs.split(",") if g.strip()),
                           int8_target=int8_target, recalibrate=recalibrate, int8_search=int8_search,
                           int8_search_margin=int8_search_margin, int8_min_flop_share=int8_min_flop_share,
                           ship_calib=ship_calib,
                           threads=threads, speed=speed, trt=trt, trt_max_batch=max_batch)
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
        building = options.fp16 or options.int8 or options.trt or bool(options.ship_calib)
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

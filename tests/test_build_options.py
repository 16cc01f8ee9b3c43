"""One front door to the build stage: deramos-build's options are declared once (build/options.py)
and deramos-export takes the same ones, with the same defaults, choices and checks, and the
same effect on the bundle."""
from __future__ import annotations

import json
import shutil
from dataclasses import fields

import click
import pytest
from click.testing import CliRunner

from deramos.build.cli import main as build_main
from deramos.build.options import OPTION_FIELDS
from deramos.build.stage import BuildOptions
from deramos.export.api import ExportOptions
from deramos.export.cli import main as export_main
from deramos.runtime.bundle import load_bundle


def _params(command: click.Command) -> dict[str, click.Parameter]:
    return {param.name: param for param in command.params}


def _received(command: click.Command) -> dict:
    """What the command receives when no option is given (defaults, callbacks applied)."""
    return command.make_context(command.name, ["BUNDLE"] if command is build_main else []).params


def _choices(param: click.Parameter):
    return getattr(param.type, "choices", None)


def test_every_build_option_is_a_buildoptions_field_with_its_default():
    build = _params(build_main)
    assert set(OPTION_FIELDS) <= {f.name for f in fields(BuildOptions)}
    assert set(OPTION_FIELDS) == set(build) - {"bundle", "out", "archive"}
    defaults, received = BuildOptions(), _received(build_main)
    for name in OPTION_FIELDS:
        assert received[name] == getattr(defaults, name), name
    assert build["trt_max_batch"].opts == ["--max-batch"] and received["trt_max_batch"] == 8


def test_deramos_export_takes_every_build_option_the_same_way():
    build, export = _params(build_main), _params(export_main)
    assert set(OPTION_FIELDS) <= set(export)
    from_build, from_export = _received(build_main), _received(export_main)
    for name in OPTION_FIELDS:
        mine, theirs = build[name], export[name]
        assert (theirs.opts, theirs.secondary_opts, theirs.is_flag, theirs.help) == \
               (mine.opts, mine.secondary_opts, mine.is_flag, mine.help), name
        assert from_export[name] == from_build[name], name
        assert _choices(theirs) == _choices(mine) and type(theirs.type) is type(mine.type), name
    for flag in ("--int8-search", "--int8-min-flop-share", "--int8-search-margin", "--check-clips", "--threads"):
        assert any(flag in p.opts for p in export.values()), flag


def test_export_options_hold_one_build_options():
    options = ExportOptions()
    assert options.build == BuildOptions() and options.seed == options.build.seed
    assert not hasattr(options, "fp16") and not hasattr(options, "int8_graphs")


@pytest.mark.parametrize("command", [build_main, export_main], ids=["deramos-build", "deramos-export"])
def test_a_missing_calibration_path_is_refused_by_both_doors(command, tmp_path):
    args = [str(tmp_path)] if command is build_main else ["--out", str(tmp_path / "b")]
    result = CliRunner().invoke(command, [*args, "--int8", "--calib", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert f"Invalid value for '--calib': '{tmp_path / 'nothing'}' does not exist (give a path, or 'probes')" \
           in result.output
    assert not (tmp_path / "b").exists()


def test_int8_through_either_door_writes_the_same_int8_graphs(export_run, tmp_path):
    """deramos-export --int8 --calib probes ... and deramos-export, then deramos-build --int8
    --calib probes ...: the same INT8 graphs, calibrated on the same clips, the same INT8 record."""
    build_args = ["--int8", "--calib", "probes", "--calib-clips", "8", "--int8-graphs", "audio_encoder,text_encoder",
                  "--no-speed"]
    export = ["--checkpoint", str(export_run), "--no-validate"]
    one = CliRunner().invoke(export_main, [*export, "--out", str(tmp_path / "one"), *build_args])
    assert one.exit_code == 0, one.output
    fp32 = CliRunner().invoke(export_main, [*export, "--out", str(tmp_path / "fp32")])
    assert fp32.exit_code == 0, fp32.output
    two = tmp_path / "two"
    shutil.copytree(tmp_path / "fp32", two)
    built = CliRunner().invoke(build_main, [str(two), *build_args])
    assert built.exit_code == 0, built.output             # deramos-build also checks INT8 against FP32: it passed
    for output in (one.output, built.output):
        assert "calibrating on 8 clips from the bundle's probe clips" in output
    first, second = load_bundle(tmp_path / "one").as_json(), load_bundle(two).as_json()
    assert first["int8"] == second["int8"]
    assert first["int8"]["calibration_set"] == {"source": "the bundle's probe clips", "clips": 8, "skipped": []}
    for graph in ("audio_encoder", "text_encoder"):
        name = f"{graph}.int8.onnx"
        assert first["files"][name] == second["files"][name], graph
    assert json.loads((tmp_path / "one" / "calibration" / "audio_encoder.ranges.json").read_text()) == \
           json.loads((two / "calibration" / "audio_encoder.ranges.json").read_text())

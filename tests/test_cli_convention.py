"""One CLI convention (docs/cli.md): whatever stops a command ends in one line on stderr,
`error: <item>: <cause>`, and a documented exit status.

Every console script of pyproject.toml runs as a subprocess with a path that does not exist;
the convention's own pieces (deramos.runtime.cli_common.Command) run in-process on a small
command of their own, one way of stopping each.
"""
from __future__ import annotations

import ast
import errno
import subprocess
import sys
from pathlib import Path

import click
import pytest
import tomllib
from click.testing import CliRunner

from deramos.runtime.cli_common import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_READER_GONE, EXIT_TERMINATED, EXIT_USAGE,
                                        Command, Group, ReaderGone, Terminated, errors_as_messages, fail,
                                        missing_extra_message)
from deramos.runtime.errors import DeramosError, message_of

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
MISSING = "/nonexistent/deramos-input"

# script -> (arguments naming MISSING where the command reads its input, the exit status docs/cli.md gives)
BAD_INPUT = {
    "deramos-synth": (["--out", "{file}/corpus", "--clips", "30"], EXIT_USAGE),    # --out under a regular file
    "deramos-realmusic": (["report", "--data", MISSING, "--model", "m=run"], EXIT_USAGE),
    "deramos-train": (["--data", MISSING, "--out", "{tmp}/run"], EXIT_USAGE),
    "deramos-pretrain": (["--data", MISSING, "--out", "{tmp}/pre"], EXIT_USAGE),
    "deramos-eval": (["--data", MISSING, "--checkpoint", MISSING], EXIT_USAGE),
    "deramos-export": (["--checkpoint", MISSING, "--out", "{tmp}/bundle"], EXIT_USAGE),
    "deramos-build": ([MISSING, "--fp16"], EXIT_USAGE),
    "deramos-run": (["--bundle", MISSING, "{tmp}/clip.wav", "calm piano"], EXIT_USAGE),
    "deramos-bench": (["--bundle", MISSING], EXIT_USAGE),
    "deramos-serve": (["--bundle", MISSING], EXIT_USAGE),
    "deramos-triton-repo": ([MISSING, "--out", "{tmp}/repository"], EXIT_USAGE),
}


def test_every_console_script_has_a_bad_input_case():
    assert set(BAD_INPUT) == set(SCRIPTS)


def _last_error_line(done: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines, f"nothing on stderr (exit {done.returncode})"
    return lines[-1]


@pytest.mark.parametrize("script", sorted(BAD_INPUT))
def test_a_missing_path_is_one_error_line_and_the_documented_status(script, tmp_path):
    regular_file = tmp_path / "a-file"
    regular_file.write_text("not a folder\n")
    arguments, status = BAD_INPUT[script]
    arguments = [a.format(tmp=tmp_path, file=regular_file) for a in arguments]
    done = subprocess.run([BIN / script, *arguments], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    line = _last_error_line(done)
    item = f"{regular_file}/corpus" if script == "deramos-synth" else MISSING
    assert line.startswith("error: ") and item in line, line
    assert done.returncode == status, done.stderr
    assert done.stdout == ""


def test_the_ablation_follows_the_convention(tmp_path):
    done = subprocess.run([sys.executable, "-m", "deramos.training.ablation", "--data", MISSING, "--out", tmp_path / "a"],
                          capture_output=True, text=True, timeout=300)
    line = _last_error_line(done)
    assert line == f"error: Invalid value for '--data': Directory '{MISSING}' does not exist."
    assert done.returncode == EXIT_USAGE


# --- the convention's pieces, in-process ---------------------------------------------------------


def _stopped_by(raise_it, *args, env=None):
    @click.command(cls=Command)
    @click.option("--name", required=True)
    def command(name):
        return raise_it()

    return CliRunner().invoke(command, list(args) or ["--name", "x"], env=env)


@pytest.mark.parametrize("raised, status, line", [
    (DeramosError("clips.jsonl: line 3 is not JSON"), EXIT_USAGE, "error: clips.jsonl: line 3 is not JSON"),
    (KeyboardInterrupt(), EXIT_INTERRUPTED, "error: interrupted"),
    (Terminated(), EXIT_TERMINATED, "error: terminated"),
    (RuntimeError("boom\n  at line 2"), EXIT_USAGE,
     "error: unexpected RuntimeError: boom at line 2 (set DERAMOS_DEBUG=1 for a traceback)"),
    (ModuleNotFoundError("No module named 'torch'", name="torch"), EXIT_USAGE,
     f"error: {missing_extra_message('command', 'torch')}"),
], ids=["library error", "Ctrl-C", "SIGTERM", "unexpected", "missing extra"])
def test_each_way_of_stopping_is_one_line_and_its_status(raised, status, line):
    def stop():
        raise raised

    result = _stopped_by(stop)
    assert result.exit_code == status
    assert result.stdout == "" and result.stderr == line + "\n"


def test_deramos_debug_shows_what_was_unexpected():
    def stop():
        raise RuntimeError("boom")

    result = _stopped_by(stop, env={"DERAMOS_DEBUG": "1"})
    assert isinstance(result.exception, RuntimeError) and str(result.exception) == "boom"


@pytest.mark.parametrize("gone", [ReaderGone(), BrokenPipeError(errno.EPIPE, "Broken pipe")], ids=["ReaderGone", "EPIPE"])
def test_a_reader_gone_is_silent(gone):
    def stop():
        raise gone

    result = _stopped_by(stop)
    assert result.exit_code == EXIT_READER_GONE and result.output == ""


def test_a_usage_error_keeps_the_usage_lines_and_ends_in_the_error_line():
    result = _stopped_by(lambda: None, "--nme", "x")
    lines = result.stderr.splitlines()
    assert result.exit_code == EXIT_USAGE
    assert lines[0] == "Usage: command [OPTIONS]" and lines[1] == "Try 'command --help' for help."
    assert lines[-1].startswith("error: No such option") and "--nme" in lines[-1]      # click's own words


def test_a_command_may_return_its_status_and_fail_with_its_own():
    assert _stopped_by(lambda: EXIT_FAILED).exit_code == EXIT_FAILED
    result = _stopped_by(lambda: fail("--threads 99: more than this machine's 2 CPU cores", EXIT_FAILED))
    assert result.exit_code == EXIT_FAILED
    assert result.stderr == "error: --threads 99: more than this machine's 2 CPU cores\n"


def test_errors_as_messages_takes_the_library_errors_it_is_given(tmp_path):
    missing = tmp_path / "absent.wav"

    def read():
        with errors_as_messages(OSError, code=EXIT_FAILED):
            missing.read_bytes()

    result = _stopped_by(read)
    assert result.exit_code == EXIT_FAILED
    assert result.stderr == f"error: {missing}: No such file or directory\n"

    def unexpected_kind():
        with errors_as_messages(OSError):
            raise ValueError("not named")

    assert _stopped_by(unexpected_kind).stderr.startswith("error: unexpected ValueError: not named")


def test_message_of_names_the_file_of_an_os_error(tmp_path):
    with pytest.raises(OSError) as raised:
        (tmp_path / "nowhere" / "x.wav").read_bytes()
    assert message_of(raised.value) == f"{tmp_path / 'nowhere' / 'x.wav'}: No such file or directory"
    assert message_of(ValueError("two\nlines")) == "two lines"


def test_a_group_reports_its_subcommands_errors():
    @click.group(cls=Group)
    def group():
        pass

    @group.command()
    @click.option("--data", type=click.Path(exists=True), required=True)
    def report(data):
        raise DeramosError(f"{data}: no report")

    missing = CliRunner().invoke(group, ["report", "--data", MISSING])
    assert missing.exit_code == EXIT_USAGE
    assert missing.stderr.splitlines()[-1] == f"error: Invalid value for '--data': Path '{MISSING}' does not exist."
    failing = CliRunner().invoke(group, ["report", "--data", "."])
    assert failing.exit_code == EXIT_USAGE and failing.stderr == "error: .: no report\n"


# --- library code never prints -------------------------------------------------------------------


def _prints_outside_main(source: str) -> list[int]:
    """Lines of the print() calls and `= print` defaults in `source` that no function named main encloses."""
    found = []

    def visit(node, in_main: bool) -> None:
        in_main = in_main or (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "main")
        if not in_main and isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            found.append(node.lineno)
        if not in_main and isinstance(node, ast.arguments):
            found.extend(d.lineno for d in node.defaults + node.kw_defaults if isinstance(d, ast.Name) and d.id == "print")
        for child in ast.iter_child_nodes(node):
            visit(child, in_main)

    visit(ast.parse(source), False)
    return sorted(found)


def test_library_code_never_prints():
    """Only the CLIs talk to the terminal: a cli.py, a command's main, and cli_common's printer."""
    printer = REPO / "src" / "deramos" / "runtime" / "cli_common.py"
    offenders = [f"{path.relative_to(REPO)}:{line}" for path in sorted((REPO / "src" / "deramos").rglob("*.py"))
                 if path.name != "cli.py" and path != printer for line in _prints_outside_main(path.read_text())]
    assert offenders == []


def test_the_print_finder_finds_prints():
    source = "def report(say=print):\n    print('x')\n\n\ndef main():\n    print('fine')\n"
    assert _prints_outside_main(source) == [1, 2]


@pytest.mark.parametrize("subcommand", ["corpus", "merge", "report"])
def test_a_subcommands_help_is_its_usage_and_status_0(subcommand):
    """A subcommand's --help stops inside its group's invoke (click raises Exit(0) there): it must
    print the subcommand's help and exit 0, not end as an unexpected error."""
    done = subprocess.run([BIN / "deramos-realmusic", subcommand, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Usage: deramos-realmusic {subcommand} [OPTIONS]") and done.stderr == ""


def test_a_group_passes_a_subcommands_help_through():
    @click.group(cls=Group)
    def group():
        pass

    @group.command()
    @click.option("--name", required=True)
    def sub(name):
        pass

    result = CliRunner().invoke(group, ["sub", "--help"], standalone_mode=True)
    assert result.exit_code == 0 and result.stderr == ""
    assert "--name" in result.stdout

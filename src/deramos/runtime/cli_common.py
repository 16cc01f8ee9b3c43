"""What the deramos CLIs share: one way to fail, progress on stderr, and option defaults read from
the library (a dataclass's fields or a function's parameters), so a default is written once, where
the library defines it.

One way to fail (docs/cli.md): whatever stops a command ends in one line on stderr,
`error: <item>: <cause>`, and one of the exit statuses below, never a traceback
(DERAMOS_DEBUG=1 shows the traceback of an unexpected error). A command gets that by being a
`Command` (`@click.command(cls=Command)`); `errors_as_messages` names the library errors a step
may raise besides `DeramosError`.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import re
import sys
from contextlib import contextmanager
from typing import NoReturn

import click

from .errors import TORCH_THEN_EXPORT_EXTRA, DeramosError, message_of, progress_log

EXIT_OK = 0              # done
EXIT_FAILED = 1          # ran to the end, but a check failed (a precision against FP32, a self-check) or some items failed
EXIT_USAGE = 2           # could not run: bad usage, input or setting, a missing extra, an unexpected error
EXIT_INTERRUPTED = 130   # 128 + SIGINT: Ctrl-C
EXIT_READER_GONE = 141   # 128 + SIGPIPE: the reader of stdout went away (... | head)
EXIT_TERMINATED = 143    # 128 + SIGTERM, where a command stops on it the way it stops on Ctrl-C

DEBUG_VARIABLE = "DERAMOS_DEBUG"
# Top-level modules of the train/export extras; a missing one means the extra is not installed.
EXTRA_MODULES = {"torch", "torchaudio", "transformers", "safetensors", "scipy", "onnx", "onnxscript", "psutil"}
_SURROGATE = re.compile("[\ud800-\udfff]")


class Terminated(BaseException):
    """SIGTERM arrived where a command stops on it like Ctrl-C. A BaseException, so that no
    `except Exception` on the way (an inference batch retried item by item) takes it for a failure."""


class ReaderGone(BaseException):
    """stdout's reader went away (deramos-run ... | head): nothing more can be delivered."""


def printable(text: str) -> str:
    """Text for a terminal: a lone surrogate (from a file name that is not UTF-8) becomes a
    backslash escape instead of failing the write."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8") if _SURROGATE.search(text) else text


def stderr_line(text: str) -> None:
    """One line on stderr, flushed: what the CLIs pass to library code as its `say`.
    Nothing when stderr is closed (2>&-), where print(file=None) would write to stdout."""
    if sys.stderr is not None:
        print(printable(text), file=sys.stderr, flush=True)


def error_line(cause) -> str:
    """`error: <item>: <cause>`, one line, for a message or an exception."""
    return f"error: {message_of(cause)}"


def say_error(cause) -> None:
    stderr_line(error_line(cause))


def fail(cause, code: int = EXIT_USAGE) -> NoReturn:
    """End the command: its error line on stderr, and the exit status."""
    say_error(cause)
    sys.exit(code)


@contextmanager
def errors_as_messages(*expected: type[BaseException], code: int = EXIT_USAGE):
    """A `DeramosError` (or one of `expected`: e.g. ValueError, OSError, which the runtime's
    BundleError and AudioError are) raised inside ends the command: `error: <message>`, exit `code`."""
    try:
        yield
    except (DeramosError, *expected) as error:
        fail(error, code)


def unexpected(error: BaseException) -> str:
    return f"unexpected {type(error).__name__}: {message_of(error)} (set {DEBUG_VARIABLE}=1 for a traceback)"


def missing_extra(error: BaseException) -> str | None:
    """The extra module whose absence raised `error` (an install without torch), else None."""
    module = (getattr(error, "name", None) or "").split(".")[0] if isinstance(error, ModuleNotFoundError) else ""
    return module if module in EXTRA_MODULES else None


def missing_extra_message(command: str, module: str) -> str:
    return (f"{command} needs {module}, which this install does not have (a runtime-only install scores "
            f"clips with deramos-run and an exported bundle); to train, evaluate or export: "
            f"{TORCH_THEN_EXPORT_EXTRA}")


@contextmanager
def exits_as_documented(command: str = "this command"):
    """Everything that can stop `command`, as its error line and exit status (docs/cli.md)."""
    try:
        yield
    except click.exceptions.Exit as done:   # a subcommand's --help inside its group's invoke
        sys.exit(done.exit_code)
    except click.UsageError as error:
        _show_usage(error)
        fail(error.format_message(), EXIT_USAGE)
    except click.ClickException as error:
        fail(error.format_message(), error.exit_code)
    except (KeyboardInterrupt, click.Abort):
        fail("interrupted", EXIT_INTERRUPTED)
    except Terminated:
        fail("terminated", EXIT_TERMINATED)
    except (ReaderGone, BrokenPipeError):
        _drop_stdout()
        sys.exit(EXIT_READER_GONE)
    except DeramosError as error:
        fail(error)
    except Exception as error:
        if missing_extra(error):
            fail(missing_extra_message(command, missing_extra(error)))
        if os.environ.get(DEBUG_VARIABLE):
            raise
        fail(unexpected(error))


def _show_usage(error: click.UsageError) -> None:
    """Click's usage lines and help hint above the error line (its own `Error:` line is not shown);
    a group called with no subcommand shows its help, as click does."""
    if type(error).__name__ == "NoArgsIsHelpError":
        error.show()
        sys.exit(error.exit_code)
    ctx = error.ctx
    if ctx is None or sys.stderr is None:
        return
    names = ctx.help_option_names if ctx.command.add_help_option else []
    hint = f"Try '{ctx.command_path} {max(names, key=len)}' for help.\n" if names else ""
    click.echo(f"{ctx.get_usage()}\n{hint}", err=True, color=ctx.color)


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush does not fail again."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):   # no stdout, or not a real file (a test's capture)
        pass


class _DocumentedExits:
    """Runs a click command in `exits_as_documented`: around its function (so that click's own
    Ctrl-C handling never sees it) and around parsing (click's usage errors)."""

    def invoke(self, ctx):
        with exits_as_documented(ctx.find_root().info_name):
            return super().invoke(ctx)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        with exits_as_documented(prog_name or os.path.basename(sys.argv[0])):
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        sys.exit(code if isinstance(code, int) else EXIT_OK)   # --help: 0; a function may return its status


class Command(_DocumentedExits, click.Command):
    """A deramos command: `@click.command(cls=Command)`."""


class Group(_DocumentedExits, click.Group):
    """A deramos command with subcommands: `@click.group(cls=Group)`."""

    command_class = Command


def show_progress(level: int = logging.WARNING) -> None:
    """Warnings of the library and its progress lines, as plain lines on stderr."""
    logging.basicConfig(level=level, format="%(message)s")
    progress_log.setLevel(logging.INFO)


def defaults_of(source) -> dict:
    """Name -> default of a dataclass's fields, or of a function's parameters."""
    if dataclasses.is_dataclass(source):
        return {f.name: f.default for f in dataclasses.fields(source) if f.default is not dataclasses.MISSING}
    return {name: p.default for name, p in inspect.signature(source).parameters.items()
            if p.default is not inspect.Parameter.empty}

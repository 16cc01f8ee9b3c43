"""What the deramos CLIs share: library errors as one-line messages, progress on stderr, and
option defaults read from the library (a dataclass's fields or a function's parameters), so a
default is written once, where the library defines it."""
from __future__ import annotations

import dataclasses
import inspect
import logging
from contextlib import contextmanager

import click

from .errors import DeramosError, one_line, progress_log


@contextmanager
def errors_as_messages():
    """A `DeramosError` raised inside becomes `Error: <one line>` and exit status 1."""
    try:
        yield
    except DeramosError as err:
        raise click.ClickException(one_line(err)) from None


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

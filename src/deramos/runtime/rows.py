"""A manifest row and its result: one definition for every runner.

deramos-run scores rows in one process; deramos.scale scores them on Ray workers. Both turn a
row into what the Scorer scores with `item_of`, and a score into the output object with
`result_of`, and write it with `json_text`; so a row fails, or scores, the same way wherever it
runs. Rows travel to a Ray worker as `pack`ed ASCII JSON text: whatever a row's strings hold
(a lone surrogate from a "\\ud800" escape, a file name that is not UTF-8), Arrow, which stores
only valid UTF-8, never sees it.
"""
from __future__ import annotations

import json
import os
import re
from typing import NamedTuple

from .errors import one_line
from .scorer import Unscorable

SURROGATE = re.compile("[\ud800-\udfff]")


def item_of(record: dict, where: str) -> tuple[object, str | None]:
    """(item, prompt) for the Scorer from a manifest object: its "path" and "prompt", or an
    Unscorable that names `where` (e.g. "line 4") and what is missing."""
    path, prompt = record.get("path"), record.get("prompt")
    if not isinstance(path, str) or not path:
        return Unscorable(where, 'missing "path" (a string)'), None
    if not isinstance(prompt, str):
        return Unscorable(f"{where} ({path})", 'missing "prompt" (a string)'), None
    return path, prompt


class Outcome(NamedTuple):
    """What scoring one row gave: the scores, or the one-line error (Score carries the same)."""

    mi: float | None
    ta: float | None
    error: str | None


def result_of(record: dict, score) -> dict:
    """The output object for a row: the input object with "mi", "ta" (4 decimals, None when
    the row failed) and "error" (None, or the one-line reason) added."""
    result = dict(record)
    result.update(mi=_rounded(score.mi), ta=_rounded(score.ta), error=score.error)
    return result


def json_text(value, ascii_only: bool = False) -> str:
    """`value` as one line of JSON that any UTF-8 writer (a file, Arrow) takes: lone surrogates
    become JSON's own escape, and reading the line back restores them. ascii_only: JSON's
    escapes for every non-ASCII character (a stream that is not UTF-8)."""
    return SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(value, ensure_ascii=ascii_only))


def text(value: str) -> str:
    """A string that UTF-8 (and so Arrow and Parquet) can store: a lone surrogate is written
    as its JSON escape (\\ud800); every other character is kept."""
    return SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", value)


# --- rows on the wire (deramos.scale): ASCII JSON text, unbreakable by a row's types ---------------


def pack(item, prompt) -> str:
    """What a worker needs to score one row, as ASCII JSON text. A relative path is made
    absolute here (a worker's working directory is not the caller's); `unpack` gives it back
    as given, and `outcome` names the row by it, so errors read as in a local run."""
    if isinstance(item, Unscorable):
        return json.dumps({"unscorable": [item.name, item.cause]})
    try:
        path = os.fsdecode(item)
        absolute = os.path.abspath(path) if path else path
        return json.dumps({"path": path, "absolute": absolute, "prompt": prompt})
    except (TypeError, ValueError) as error:    # not a path at all: the row fails with the reason
        return json.dumps({"unscorable": [repr(item)[:200], f"not a path ({one_line(error)})"]})


def unpack(wire: str) -> tuple[object, str | None, str | None]:
    """(what the Scorer scores, the prompt, the path as the row gave it) from `pack`'s text."""
    try:
        fields = json.loads(wire)
        if "unscorable" in fields:
            return Unscorable(*fields["unscorable"]), None, None
        return fields["absolute"], fields["prompt"], fields["path"]
    except Exception as error:   # not pack's text: the row fails alone
        return Unscorable("row", f"unreadable on the worker ({type(error).__name__}: {one_line(error)})"), None, None


def outcome(score, path: str | None = None, absolute: str | None = None) -> str:
    """A Score as ASCII JSON text [mi, ta, error]; an error that names the absolute path names
    the row's own path instead."""
    error = score.error
    if error is not None and path is not None and absolute not in (None, path) and error.startswith(absolute):
        error = path + error[len(absolute):]
    return json.dumps([score.mi, score.ta, error])


def read_outcome(wire: str) -> Outcome:
    mi, ta, error = json.loads(wire)
    return Outcome(mi, ta, error)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)

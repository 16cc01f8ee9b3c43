"""How library code tells its caller what happened, without talking to the terminal itself.

- Bad input or an unusable setting raises a `DeramosError` whose message is one line naming
  the item and the cause (a user's terminal, a JSONL field, a log); the CLIs print it and exit
  with a documented status, no traceback. Any other exception escaping the library is a bug.
- Progress (one line per epoch, early stopping) goes to the `deramos.progress` logger at INFO;
  the CLIs show it on stderr, library callers (the ablation, tests) see it only if they ask.
"""
from __future__ import annotations

import logging
import os


def one_line(text) -> str:
    """The text (or exception) with every run of whitespace, newlines included, made one space."""
    return " ".join(str(text).split())


def message_of(cause) -> str:
    """A message or an exception as one line; an OSError as `<file>: <cause>` (its str() is
    "[Errno 2] No such file or directory: 'x'")."""
    if isinstance(cause, OSError) and cause.filename is not None and cause.strerror:
        return one_line(f"{_name(cause.filename)}: {cause.strerror}")
    return one_line(cause)


def _name(filename) -> str:
    return os.fsdecode(filename) if isinstance(filename, (bytes, os.PathLike)) else str(filename)


# A score that is NaN or inf: the probes tell it from other errors by this text.
NON_FINITE_SCORE = "the graph produced a non-finite score (NaN or inf)"


# On Linux a plain `pip install torch` is the multi-GB CUDA build: say how to get the CPU one.
TORCH_THEN_EXPORT_EXTRA = (
    "install a CPU build of torch first (pip install torch --index-url https://download.pytorch.org/whl/cpu, "
    "or from a mirror of that index), then the extra: pip install 'deramos[export]'")


progress_log = logging.getLogger("deramos.progress")


class DeramosError(Exception):
    """Bad input or an unusable setting: a missing file, a corpus without what a run needs."""


class TrainingError(DeramosError):
    """deramos-train or deramos-pretrain cannot start with these arguments and data."""


class EvaluationError(DeramosError):
    """deramos-eval has no checkpoint or no clips it can score."""



"""How library code tells its caller what happened, without talking to the terminal itself.

- Bad input or an unusable setting raises a `DeramosError` whose message is one line naming
  the item and the cause; the CLIs print it as `Error: <message>` (exit status 1, no traceback).
  Any other exception escaping the library is a bug.
- Progress (one line per epoch, early stopping) goes to the `deramos.progress` logger at INFO;
  the CLIs show it on stderr, library callers (the ablation, tests) see it only if they ask.
"""
from __future__ import annotations

import logging

from .runtime.errors import one_line  # noqa: F401 - the one definition, re-exported for deramos

progress_log = logging.getLogger("deramos.progress")


class DeramosError(Exception):
    """Bad input or an unusable setting: a missing file, a corpus without what a run needs."""


class TrainingError(DeramosError):
    """deramos-train or deramos-pretrain cannot start with these arguments and data."""


class EvaluationError(DeramosError):
    """deramos-eval has no checkpoint or no clips it can score."""



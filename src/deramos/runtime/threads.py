"""How many CPU threads an ONNX Runtime session may be asked for.

Each of a Scorer's three sessions starts its own pool of `threads` threads, so an absurd value
(10000) starts tens of thousands of threads and the process stalls. More threads than the
machine has cores never scores faster: the limit is the core count.
"""
from __future__ import annotations

import operator
import os


def cpu_cores() -> int:
    """The machine's CPU cores (os.cpu_count(); 1 when unknown)."""
    return os.cpu_count() or 1


def check_threads(threads) -> int | None:
    """`threads` as an int from 1 to cpu_cores(), or None (ONNX Runtime's default);
    a ValueError whose one-line message names the value and the limit otherwise."""
    if threads is None:
        return None
    try:
        count = operator.index(threads)
    except TypeError:
        raise ValueError(f"threads must be a whole number, got {threads!r}") from None
    if isinstance(threads, bool) or not 1 <= count <= cpu_cores():
        raise ValueError(f"threads={threads!r}: give 1 to {cpu_cores()} (the CPU cores of this machine)")
    return count

"""What every runtime error message is: one line (a user's terminal, a JSONL field, a log)."""
from __future__ import annotations


def one_line(text) -> str:
    """The text (or exception) with every run of whitespace, newlines included, made one space."""
    return " ".join(str(text).split())


# On Linux a plain `pip install torch` is the multi-GB CUDA build: say how to get the CPU one.
TORCH_THEN_EXPORT_EXTRA = (
    "install a CPU build of torch first (pip install torch --index-url https://download.pytorch.org/whl/cpu, "
    "or from a mirror of that index), then the extra: pip install 'deramos[export]'")

"""Reading and writing the files a checkpoint is made of (a JSON object, a safetensors file),
with one-line errors naming the file. Nothing here knows the model, so every part of the model
(and the checkpoint code above it) can read its weights without an import circle."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..runtime.errors import one_line


class CheckpointError(ValueError):
    """A checkpoint file that exists but cannot be read; the message names the file."""


def read_json_file(path: str | Path) -> dict:
    """A JSON object from `path` (FileNotFoundError when it is missing; CheckpointError when
    it is not a JSON object)."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not valid JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not valid JSON (not UTF-8 text)") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, on the CPU; CheckpointError for a damaged file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as error:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt: {one_line(error)})") from None


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)

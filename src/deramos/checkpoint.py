"""Checkpoints: a directory with config.json + model.safetensors + tokenizer.json.

Nothing is ever unpickled. Encoders loaded from a source directory (MuQ, a Hugging Face
text encoder) are referenced by the config rather than copied, so a heads-only checkpoint
stays small; everything else (heads, encoders trained here or randomly initialised) is stored.
A training run directory holds one checkpoint per selection rule (see train.py) plus `last/`.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from .config import ModelConfig

FORMAT_VERSION = 1
CHECKPOINT_KINDS = ("best_combined", "best_mi_sys", "best_loss", "last")


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
        reason = " ".join(str(error).split())
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt: {reason})") from None


def save_checkpoint(model, directory: str | Path, extra: dict | None = None, write_more=None) -> Path:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact.
    `write_more(tmp_dir)` adds files (e.g. resume state) that must land together with the weights."""
    from safetensors.torch import save_file

    from .text_encoder import tokenizer_file

    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    prefixes = model.stored_parameter_prefixes()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k.startswith(prefixes)}
    save_file(state, str(tmp / "model.safetensors"))
    meta = {"format_version": FORMAT_VERSION, "model": model.cfg.to_dict(), "stored": list(prefixes)}
    meta.update(extra or {})
    (tmp / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    tokenizer = tokenizer_file(model.cfg.text)
    shutil.copyfile(tokenizer, tmp / "tokenizer.json")
    if write_more is not None:
        write_more(tmp)
    _replace_dir(tmp, directory)
    return directory


def _replace_dir(new: Path, target: Path) -> None:
    """Two renames; `recover_dir` repairs a crash between them."""
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(target: Path) -> None:
    """After a crash inside `_replace_dir` the previous version sits at `<target>.old`."""
    old = target.with_name(target.name + ".old")
    if not target.exists() and old.exists():
        os.replace(old, target)


def resolve_checkpoint(path: str | Path, kind: str = "best_combined") -> Path:
    """A checkpoint directory, or a run directory (then its `kind` checkpoint, else `last`)."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    for candidate in (kind, "last"):
        if (path / candidate / "model.safetensors").is_file():
            return path / candidate
    raise FileNotFoundError(f"{path}: no checkpoint here (expected model.safetensors, "
                            f"or a run directory with {'/'.join(CHECKPOINT_KINDS)})")


def read_config(directory: str | Path) -> dict:
    meta = read_json_file(Path(directory) / "config.json")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{directory}: checkpoint format {meta['format_version']} is newer than "
                         f"this deramos supports ({FORMAT_VERSION}); upgrade deramos")
    return meta


def load_checkpoint(path: str | Path, kind: str = "best_combined", device: str = "cpu"):
    """Rebuild the model from its config and load the stored weights (strict for those parts)."""
    from .model import DeRAMOS

    directory = resolve_checkpoint(path, kind)
    meta = read_config(directory)
    model = DeRAMOS(ModelConfig.from_dict(meta["model"]))
    state = read_tensors(directory / "model.safetensors")
    expected = {k for k in model.state_dict() if k.startswith(model.stored_parameter_prefixes())}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{directory}: weights do not match the config "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.load_state_dict(state, strict=False)
    model.checkpoint_dir = directory
    return model.to(device).eval()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)

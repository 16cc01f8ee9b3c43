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

from .config import ModelConfig
from .network import DeRAMOS
from .weights import read_json_file, read_tensors

FORMAT_VERSION = 1
CHECKPOINT_KINDS = ("best_combined", "best_mi_sys", "best_loss", "last")


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


"""Where things live on disk (no heavy imports: the runtime uses this too)."""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def default_checkpoint_location() -> Path:
    """Where the embedded default checkpoint is looked for (config.json + model.safetensors +
    tokenizer.json inside the package); `$DERAMOS_DEFAULT_CHECKPOINT` overrides it."""
    override = os.environ.get("DERAMOS_DEFAULT_CHECKPOINT")
    return Path(override) if override else PACKAGE_DIR / "default_model"


def default_checkpoint_dir() -> Path | None:
    """The default checkpoint's directory, or None when there is none."""
    path = default_checkpoint_location()
    return path if (path / "model.safetensors").is_file() else None


def cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deramos"

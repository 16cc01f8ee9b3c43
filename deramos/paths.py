"""Where things live on disk (no heavy imports: the runtime uses this too)."""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def default_checkpoint_dir() -> Path | None:
    """The embedded default checkpoint shipped inside the package (config.json +
    model.safetensors + tokenizer.json); `$DERAMOS_DEFAULT_CHECKPOINT` overrides it."""
    override = os.environ.get("DERAMOS_DEFAULT_CHECKPOINT")
    path = Path(override) if override else PACKAGE_DIR / "default_model"
    return path if (path / "model.safetensors").is_file() else None


def cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deramos"

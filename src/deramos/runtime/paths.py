"""Where things live on disk: the embedded default checkpoint and the user cache."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# The deramos package folder (the default checkpoint ships in it). Asked of the import system,
# not derived from this file: an editable install maps deramos.runtime to another folder.
PACKAGE_DIR = Path(importlib.util.find_spec("deramos").submodule_search_locations[0]).resolve()


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

"""Where things live on disk: the embedded default checkpoint and the user cache."""
from __future__ import annotations

import importlib.util
import os
import shutil
import time
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


# A scratch folder whose pid is alive is taken for a running export unless it is this old
# (then the pid was reused); one whose pid is gone is removed at once.
STALE_SCRATCH_SECONDS = 6 * 3600


def remove_stale_scratch(folder: Path, max_age: float = STALE_SCRATCH_SECONDS) -> list[Path]:
    """Delete `<bundle>.tmp-<pid>` folders left by exports that were killed: their process is
    gone, or (a reused pid) they have not changed for `max_age` seconds."""
    removed = []
    for scratch in folder.glob("*.tmp-*") if folder.is_dir() else ():
        pid = scratch.name.rsplit(".tmp-", 1)[1]
        try:
            age = time.time() - scratch.stat().st_mtime
        except OSError:
            continue
        if not (pid.isdigit() and _alive(int(pid))) or age > max_age:
            shutil.rmtree(scratch, ignore_errors=True)
            removed.append(scratch)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's process
        return True
    return True

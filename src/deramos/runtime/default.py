"""Which bundle to use when none is named, and the default bundle's first-use export.

Order: an explicit bundle (`--bundle DIR`) > $DERAMOS_BUNDLE > the default bundle, exported
from the checkpoint embedded in the package (deramos/default_model/, or $DERAMOS_DEFAULT_CHECKPOINT)
into the user cache: $XDG_CACHE_HOME/deramos/bundles/default-<hash> (~/.cache/... otherwise).
The hash covers the checkpoint's files and the bundle format, so a new model or format gets a
fresh bundle. The export runs `deramos-export` in a subprocess, so the scoring process never
imports torch, and under a file lock, so concurrent first uses export once.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

from . import paths
from .paths import remove_stale_scratch
from .bundle import FORMAT_VERSION, BundleError
from .errors import TORCH_THEN_EXPORT_EXTRA, progress_log

ENV_BUNDLE = "DERAMOS_BUNDLE"
ENV_CHECKPOINT = "DERAMOS_DEFAULT_CHECKPOINT"
CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json")
HOW_TO_GET_ONE = ("export one with `deramos-export --out DIR` and pass --bundle DIR (or set DERAMOS_BUNDLE), "
                  f"or, to export the default model on first use, {TORCH_THEN_EXPORT_EXTRA}; "
                  "or export on a machine with torch (`deramos-export --out model.tar`) and copy the archive "
                  "here (`deramos-run --bundle model.tar`)")

# Options of the first-use export (deramos-export, run as `python -m deramos.export.cli`).
EXPORT_FLAGS = ("--fp16", "--validate-clips", "16")
# Part of the cached bundle's name: bumped when the export writes a different bundle for the
# same checkpoint, so a cache made by an older export is replaced on next use. 2: weights of
# graphs over 16 MB in side files (they open in half the time). 3: musicnn's timbral filters run
# once over the clip, not once per overlapping patch (28.7 instead of 39.7 GFLOP per 10 s clip).
# 4: and not over the padding past the clip's end; long strided convolutions over hops (25.0
# instead of 29.4 GFLOP per 10 s window). 5: musicnn's decayed filters evaluated as the constants
# they are, in the front-end and in mid1's inputs (9.3 instead of 25.0 GFLOP per 10 s window).
EXPORT_LAYOUT = 5


default_checkpoint_location = paths.default_checkpoint_location


def resolve_bundle_dir(bundle: str | os.PathLike | None = None, say: Callable[[str], None] | None = None) -> Path:
    """A bundle folder; a bundle archive (model.tar) is unpacked into the cache once (runtime/archive.py)."""
    chosen = bundle or os.environ.get(ENV_BUNDLE)
    if chosen:
        from .archive import bundle_folder

        return bundle_folder(chosen, say=say)
    return default_bundle(say=say)


def checkpoint_hash(checkpoint: Path) -> str:
    digest = hashlib.sha256(f"deramos-bundle-format-{FORMAT_VERSION}-layout-{EXPORT_LAYOUT}".encode())
    for name in CHECKPOINT_FILES:
        path = checkpoint / name
        digest.update(name.encode())
        if path.is_file():
            with open(path, "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
    return digest.hexdigest()[:16]


def default_bundle_dir(checkpoint: Path) -> Path:
    return paths.cache_home() / "bundles" / f"default-{checkpoint_hash(checkpoint)}"


def export_available() -> bool:
    try:
        return all(importlib.util.find_spec(name) is not None for name in ("torch", "onnx", "deramos.export"))
    except (ImportError, ValueError):   # a broken or blocked install
        return False


def run_tied_to_this_process(command: list[str]) -> subprocess.CompletedProcess:
    """Run `command`, capturing its output; it dies with this process (even on kill -9), so an
    export never outlives its user unseen (its own writes would fail only when it next writes)."""
    return subprocess.run(command, capture_output=True, text=True, preexec_fn=_die_with_parent())


def _die_with_parent():
    """A preexec_fn asking Linux to SIGKILL the child when its parent dies (PR_SET_PDEATHSIG);
    None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import signal

    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def arm() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:   # the parent died before the request took effect
            os._exit(1)
    return arm


PR_SET_PDEATHSIG = 1


def default_bundle(say: Callable[[str], None] | None = None) -> Path:
    """The cached default bundle, exported now if this is its first use."""
    checkpoint = paths.default_checkpoint_dir()
    if checkpoint is None:
        raise BundleError(f"no bundle given and no default model in this install "
                          f"({default_checkpoint_location()}); {HOW_TO_GET_ONE}")
    target = default_bundle_dir(checkpoint)
    remove_stale_scratch(target.parent)
    if (target / "manifest.json").is_file():
        return target
    if not export_available():
        raise BundleError(f"no bundle given and the default bundle is not exported yet; {HOW_TO_GET_ONE}")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Minutes of waiting are never silent: without a `say`, the progress logger at WARNING, which
    # Python shows on stderr even to a caller who set up no logging (its last-resort handler).
    say = say or progress_log.warning
    waiting = (f"deramos: waiting for another process to finish exporting the default model to {target} "
               f"(first use; a few minutes)")
    with _file_lock(target.with_name(target.name + ".lock"), on_wait=lambda: say(waiting)):
        if not (target / "manifest.json").is_file():   # another process may have finished it meanwhile
            export_default_bundle(checkpoint, target, say)
    return target


def export_default_bundle(checkpoint: Path, target: Path, say: Callable[[str], None]) -> None:
    say(f"deramos: exporting the default model to {target} (first use; once)")
    scratch = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        command = [sys.executable, "-m", "deramos.export.cli", "--checkpoint", str(checkpoint),
                   "--out", str(scratch), *EXPORT_FLAGS]
        done = run_tied_to_this_process(command)
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            raise BundleError(f"exporting the default model from {checkpoint} failed: "
                              f"{lines[-1].strip() if lines else f'exit code {done.returncode}'}")
        shutil.rmtree(target, ignore_errors=True)      # a half-written export without manifest
        os.replace(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def _file_lock(path: Path, on_wait: Callable[[], None] | None = None):
    """An exclusive lock on `path`; on_wait() is called once when another process holds it
    (so that a wait of minutes is not silent)."""
    try:
        import fcntl
    except ImportError:   # no fcntl (Windows): concurrent first uses may both export; harmless
        yield
        return
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

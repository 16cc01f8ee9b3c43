"""Remembered sha256 checks, so a warm start does not re-read every byte of a bundle.

Hashing a bundle's 145 MB costs ~0.2 s on every `deramos-run`. A file whose identity (device,
inode, size, mtime and ctime in nanoseconds) is unchanged since it hashed to the manifest's
sha256 is not read again. Any write, rename or chmod moves ctime, which a user process cannot
set back, so a tampered or replaced file is always hashed again (git's index trusts the same
stat fields). The memo lives in the user cache, one small JSON per bundle directory; a memo
that cannot be read or written only costs the hashing. `DERAMOS_VERIFY=full` ignores it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .paths import cache_home


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _identity(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class HashMemo:
    """sha256 of the files under one root, remembered by file identity between processes."""

    def __init__(self, root: Path, enabled: bool | None = None):
        if enabled is None:
            enabled = os.environ.get("DERAMOS_VERIFY", "").strip().lower() != "full"
        self.root = Path(root).resolve()
        key = hashlib.sha256(str(self.root).encode("utf-8", "surrogateescape")).hexdigest()[:24]
        try:
            self.path = cache_home() / "verified" / f"{key}.json"
        except (RuntimeError, KeyError):   # no $HOME and no $XDG_CACHE_HOME (a bare service user)
            self.path, enabled = None, False
        self.enabled = enabled
        self._entries = self._read() if enabled else {}
        self._changed = False

    def sha256(self, name: str) -> str:
        """The sha256 of root/name: remembered when its identity is unchanged, else read."""
        path = self.root / name
        before = _identity(path)
        known = self._entries.get(name)
        if self.enabled and isinstance(known, list) and len(known) == 6 and known[:5] == before \
                and isinstance(known[5], str):
            return known[5]
        digest = sha256_file(path)
        if self.enabled and _identity(path) == before:   # not written to while being read
            self._entries[name] = before + [digest]
            self._changed = True
        return digest

    def forget(self, name: str) -> None:
        self._changed |= self._entries.pop(name, None) is not None

    def save(self) -> None:
        if not (self.enabled and self._changed):
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            scratch = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            scratch.write_text(json.dumps({"root": str(self.root), "files": self._entries}))
            scratch.replace(self.path)
        except OSError:
            pass   # a read-only cache only means hashing again next time
        self._changed = False

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("root") != str(self.root):
            return {}
        files = data.get("files")
        return files if isinstance(files, dict) else {}

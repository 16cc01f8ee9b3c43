"""Remembered sha256 checks, so a warm start does not re-read every byte of a bundle.

Hashing a bundle's 145 MB costs ~0.2 s on every `deramos-run`. A file whose identity (device,
inode, size, mtime and ctime in nanoseconds) is unchanged since it hashed to the manifest's
sha256 is not read again. Any write, rename or chmod moves ctime, which a user process cannot
set back, so a tampered or replaced file is always hashed again (git's index trusts the same
stat fields). The memo lives in the user cache, one small JSON per bundle directory; a memo
that cannot be read or written only costs the hashing. `DERAMOS_VERIFY=full` ignores it.

What the memo is trusted for, and why a forged entry is useless:

- Every entry is signed: HMAC-SHA256 over (bundle root, file name, identity, sha256) with a
  per-user secret, `<cache>/deramos/verified.key` (32 random bytes, created 0600). An entry
  whose signature does not check (written by anyone without the key, copied from another
  user's cache, edited by hand, or from an older deramos) is ignored and the file is hashed.
- The key is used only when it is a regular file (not a symlink) owned by the current user
  that no one else may read or write (checked on the opened handle); otherwise the memo is
  off (everything is hashed). A memo file not owned by the current user, or writable by group
  or others, is ignored and replaced by a 0600 one, in a folder created 0700. (Who may write
  the folder does not matter: a file planted there is not ours and is refused, and a file of
  ours moved there has no valid signature for what it would claim.)
- A memo entry only ever skips re-reading a file for load_bundle(). The graphs a backend runs
  are always read into memory and hashed again there (runtime/bundle.py read_verified): the
  memo never vouches for the bytes ONNX Runtime or TensorRT is handed.

What it does not protect against: an attacker who can write your own files (your cache, your
key, your Python packages) can make you trust anything; so can one who can set a file's
ctime back (root, or a filesystem that does not keep ctime). DERAMOS_VERIFY=full reads every
byte and trusts no memo.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import threading
from pathlib import Path

from .paths import cache_home

KEY_BYTES = 32
ENTRY_FIELDS = 7     # dev, ino, size, mtime_ns, ctime_ns, sha256, hmac


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _identity(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _private(st: os.stat_result, forbidden: int) -> bool:
    """A regular file owned by this user with none of the `forbidden` mode bits (on Windows,
    where neither means this, a regular file: the user profile's ACLs keep the cache private)."""
    if not stat.S_ISREG(st.st_mode):
        return False
    if not hasattr(os, "geteuid"):
        return True
    return st.st_uid == os.geteuid() and not st.st_mode & forbidden


def _read_private(path: Path, forbidden: int) -> bytes | None:
    """The file's bytes when it is a regular file of ours without the forbidden mode bits
    (opened without following a symlink, checked on the open handle); else None."""
    try:
        # O_NONBLOCK: a FIFO put in its place must not hang the open (it is then refused)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not _private(os.fstat(fd), forbidden):
            return None
        return handle.read(1 << 24)


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
        self.key_path = None if self.path is None else self.path.parent.parent / "verified.key"
        self._key = self._secret() if enabled else None
        self.enabled = enabled and self._key is not None
        self._entries = self._read() if self.enabled else {}
        self._changed = False

    def sha256(self, name: str) -> str:
        """The sha256 of root/name: remembered when its identity is unchanged and the entry's
        signature checks, else read."""
        path = self.root / name
        before = _identity(path)
        known = self._entries.get(name)
        if self.enabled and isinstance(known, list) and len(known) == ENTRY_FIELDS and known[:5] == before \
                and isinstance(known[5], str) and isinstance(known[6], str) \
                and hmac.compare_digest(known[6], self._sign(name, before, known[5])):
            return known[5]
        digest = sha256_file(path)
        if self.enabled and _identity(path) == before:   # not written to while being read
            self._entries[name] = before + [digest, self._sign(name, before, digest)]
            self._changed = True
        return digest

    def forget(self, name: str) -> None:
        self._changed |= self._entries.pop(name, None) is not None

    def save(self) -> None:
        if not (self.enabled and self._changed):
            return
        scratch = _scratch(self.path)
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _remove(scratch)            # a leftover keeps its mode and owner through O_CREAT
            fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(json.dumps({"root": str(self.root), "files": self._entries}))
            os.replace(scratch, self.path)
        except OSError:                 # a read-only cache only means hashing again next time
            _remove(scratch)
        self._changed = False

    # -- the signature --------------------------------------------------------------------------
    def _sign(self, name: str, identity: list[int], digest: str) -> str:
        message = json.dumps([str(self.root), name, identity, digest], separators=(",", ":"))
        return hmac.new(self._key, message.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()

    def _secret(self) -> bytes | None:
        """This user's memo key, created on first use; None (no memo) when it is not private to
        this user or cannot be made."""
        path = self.key_path
        key = _read_private(path, 0o077)
        if key is None and not os.path.lexists(path):
            try:   # the user cache keeps its usual mode (bundles live there too); the key is 0600
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError:
                return None
            key = self._create_key(path)
        return key if key is not None and len(key) == KEY_BYTES else None

    @staticmethod
    def _create_key(path: Path) -> bytes | None:
        """Written to a private scratch file, then linked into place: a concurrent first use
        sees either no key or a whole one, and the loser reads the winner's."""
        scratch = _scratch(path)
        try:
            fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(os.urandom(KEY_BYTES))
            try:
                os.link(scratch, path)
            except FileExistsError:
                pass                    # another process made it first: use theirs
            except OSError:             # no hard links here: a rename (a lost race only costs hashing)
                os.replace(scratch, path)
            return _read_private(path, 0o077)
        except OSError:
            return None
        finally:
            _remove(scratch)

    def _read(self) -> dict:
        raw = _read_private(self.path, 0o022)
        if raw is None:
            return {}
        try:
            data = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):
            return {}
        if not isinstance(data, dict) or data.get("root") != str(self.root):
            return {}
        files = data.get("files")
        return files if isinstance(files, dict) else {}


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _scratch(path: Path) -> Path:
    return path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")

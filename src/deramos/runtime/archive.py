"""Bundle archives: one file that carries a bundle from the machine with torch to the one that serves.

    model.tar (or model.tar.gz / model.tgz: the same, gzip-compressed)
      deramos-bundle/manifest.json
      deramos-bundle/<every file manifest.json lists>

`write_archive` packs a bundle folder, verified first, with nothing but its manifest and the
files it lists, in a fixed order with fixed metadata (the same bundle gives the same bytes),
and replaces the archive atomically. ONNX weights hardly compress: plain `.tar` is the default
suggestion; gzip saves a little on the probe clips and tokenizer.

`unpacked_bundle` opens an archive for the runtime. The archive's sha256 names a folder in the
user cache ($XDG_CACHE_HOME/deramos/bundles/archive-<hash>, ~/.cache/... otherwise): the first
use unpacks there, a second run finds it (the hash is remembered by file identity like the
bundle's own hashes, runtime/hashmemo.py). Every member is checked before a byte is written: a
regular file (no links, devices or fifos), a relative path inside the bundle (no absolute path,
no `..`; tarfile's "data" filter vets it too where Python has one), listed in manifest.json,
present once; then each file's sha256 is checked against the manifest as it is written. It is
unpacked into a scratch folder that is renamed into place, so no process ever sees half a
bundle and concurrent first uses unpack safely. Any problem is one BundleError line naming the
archive and the cause. tarfile and hashlib only: the runtime never imports torch.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable

from .bundle import BundleError, load_bundle, parse_manifest, relative_path_problem
from .errors import one_line
from .hashmemo import HashMemo
from .paths import cache_home, remove_stale_scratch

SUFFIXES = (".tar", ".tar.gz", ".tgz")
TOP = "deramos-bundle"          # the one folder inside an archive (what `tar xf model.tar` makes)
MANIFEST = "manifest.json"
_CHUNK = 1 << 20


def is_archive_name(path: str | os.PathLike) -> bool:
    """Whether `path` is named like a bundle archive (.tar, .tar.gz, .tgz)."""
    return str(path).lower().endswith(SUFFIXES)


def _gzipped(path: Path) -> bool:
    return str(path).lower().endswith((".tar.gz", ".tgz"))


# --- writing --------------------------------------------------------------------------------------


def write_archive(bundle_dir: str | os.PathLike, archive: str | os.PathLike) -> Path:
    """Pack the bundle at `bundle_dir` (verified first) into `archive` (.tar, .tar.gz or .tgz),
    replacing it atomically; returns the archive's path."""
    archive = Path(archive)
    if not is_archive_name(archive):
        raise BundleError(f"{archive}: a bundle archive's name ends in {', '.join(SUFFIXES)}")
    bundle = load_bundle(bundle_dir, verify=True)
    names = [MANIFEST] + sorted(bundle.files)
    archive.parent.mkdir(parents=True, exist_ok=True)
    scratch = archive.with_name(f".{archive.name}.tmp-{os.getpid()}")
    try:
        with open(scratch, "wb") as raw:
            # gzip's header carries a time and a file name: fixed, so equal bundles give equal bytes
            packed = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if _gzipped(archive) else raw
            try:
                with tarfile.open(fileobj=packed, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    for name in names:
                        _add(tar, bundle.root / name, f"{TOP}/{name}")
            finally:
                if packed is not raw:
                    packed.close()
        os.replace(scratch, archive)
    except OSError as error:
        raise BundleError(f"{archive}: cannot write the archive ({error.strerror or error})") from None
    finally:
        scratch.unlink(missing_ok=True)
    return archive


def _add(tar: tarfile.TarFile, path: Path, arcname: str) -> None:
    info = tarfile.TarInfo(arcname)
    info.size = path.stat().st_size
    info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = 0o644, 0, 0, 0, "", ""
    with open(path, "rb") as handle:
        tar.addfile(info, handle)


# --- reading --------------------------------------------------------------------------------------


def archive_sha256(archive: str | os.PathLike) -> str:
    """The archive's sha256, remembered by file identity (a rewritten archive is hashed again)."""
    archive = Path(archive)
    memo = HashMemo(archive.parent)
    try:
        return memo.sha256(archive.name)
    finally:
        memo.save()


def unpacked_folder(digest: str) -> Path:
    return cache_home() / "bundles" / f"archive-{digest[:32]}"


def unpacked_bundle(archive: str | os.PathLike, say: Callable[[str], None] | None = None) -> Path:
    """The bundle folder an archive unpacks to, in the user cache, keyed by the archive's
    content; unpacked (checked member by member) only on first use."""
    archive = Path(archive)
    if not archive.is_file():
        raise BundleError(f"{archive}: bundle archive not found")
    try:
        digest = archive_sha256(archive)
    except OSError as error:
        raise BundleError(f"{archive}: cannot read the archive ({error.strerror or error})") from None
    try:
        target = unpacked_folder(digest)
    except (RuntimeError, KeyError):   # no $HOME and no $XDG_CACHE_HOME (a bare service user)
        raise BundleError(f"{archive}: no user cache to unpack it into (set XDG_CACHE_HOME)") from None
    if (target / MANIFEST).is_file():
        try:
            load_bundle(target, verify=True)
            return target
        except BundleError:            # the cached copy was changed since: unpack it again
            shutil.rmtree(target, ignore_errors=True)
    elif target.exists():              # not an unpacked bundle (a rename is all or nothing): not ours to keep
        shutil.rmtree(target, ignore_errors=True)
    remove_stale_scratch(target.parent)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        extract(archive, scratch)
        try:
            os.rename(scratch, target)
        except OSError:
            if not (target / MANIFEST).is_file():   # not another process having just finished it
                raise
    except OSError as error:
        raise BundleError(f"{archive}: cannot unpack into {target.parent} ({error.strerror or error})") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if say:
        say(f"deramos: unpacked {archive} to {target} (first use of this archive; once)")
    return target


def extract(archive: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Check every member of `archive` and write the bundle into `dest` (created; must not exist)."""
    archive, dest = Path(archive), Path(dest)

    def refuse(cause: str) -> BundleError:
        return BundleError(f"{archive}: {cause}")

    try:
        tar = tarfile.open(archive, mode="r:*")
    except tarfile.ReadError:
        raise refuse("not a tar archive, or damaged at its start (a bundle is a folder, or a .tar/.tar.gz/.tgz "
                     "written by deramos-export --out model.tar or deramos-build BUNDLE --archive model.tar)") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise refuse(f"not a readable tar archive, or truncated or corrupt ({_why(error)})") from None
    try:
        with tar:
            members = _checked_members(tar.getmembers(), dest, refuse)
            if MANIFEST not in members:
                raise refuse(f"no {TOP}/{MANIFEST} in it (not a deramos bundle archive; write one with "
                             f"deramos-export --out model.tar or deramos-build BUNDLE --archive model.tar)")
            manifest_bytes = _read_member(tar, members[MANIFEST], refuse)
            listed = _listed_files(manifest_bytes, archive, refuse)
            unlisted = sorted(set(members) - set(listed) - {MANIFEST})
            if unlisted:
                raise refuse(f"member {f'{TOP}/{unlisted[0]}'!r} is not listed in its manifest.json (refused: a bundle "
                             f"holds only the files its manifest lists with their sha256)")
            missing = sorted(set(listed) - set(members))
            if missing:
                raise refuse(f"{missing[0]} is listed in manifest.json but missing from the archive")
            dest.mkdir(parents=True)
            (dest / MANIFEST).write_bytes(manifest_bytes)
            for name in sorted(listed):
                _write_member(tar, members[name], dest / name, listed[name], refuse)
            while tar.fileobj.read(_CHUNK):     # to the end: a compressed stream's checksum and length are checked
                pass
    except BundleError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise refuse(f"not a readable tar archive, or truncated or corrupt ({_why(error)})") from None


def _why(error: BaseException) -> str:
    return one_line(error) or type(error).__name__


def _checked_members(members: list[tarfile.TarInfo], dest: Path, refuse) -> dict[str, tarfile.TarInfo]:
    """name inside the bundle -> member, every member checked (type, path, once)."""
    found: dict[str, tarfile.TarInfo] = {}
    for member in members:
        shown = member.name
        problem = relative_path_problem(member.name)
        if problem:
            raise refuse(f"member {shown!r} {problem} (refused)")
        parts = PurePosixPath(member.name).parts
        if parts[0] != TOP or "\\" in member.name:
            raise refuse(f"member {shown!r} is outside the archive's {TOP}/ folder (refused)")
        if member.issym() or member.islnk():
            raise refuse(f"member {shown!r} is a link to {member.linkname!r} (refused: a bundle holds regular files)")
        if not (member.isreg() or member.isdir()):
            raise refuse(f"member {shown!r} is a device, fifo or other special file (refused)")
        if member.isdir():
            continue
        if len(parts) == 1:
            raise refuse(f"member {shown!r} is a file where the {TOP}/ folder should be (refused)")
        name = PurePosixPath(*parts[1:]).as_posix()
        data_filter = getattr(tarfile, "data_filter", None)     # Python 3.12, 3.11.4, 3.10.12 and later
        if data_filter is not None:
            try:
                data_filter(member, str(dest))
            except tarfile.FilterError as error:
                raise refuse(f"member {shown!r} refused by tarfile's data filter ({_why(error)})") from None
        if name in found:
            raise refuse(f"member {shown!r} appears twice (refused: the second would replace the first)")
        found[name] = member
    return found


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, refuse, limit: int = 64 << 20) -> bytes:
    if member.size > limit:
        raise refuse(f"{member.name} is {member.size} bytes (a manifest is far smaller; refused)")
    handle = tar.extractfile(member)
    data = handle.read() if handle is not None else b""
    if len(data) != member.size:
        raise refuse(f"{member.name} ends early (truncated archive)")
    return data


def _listed_files(manifest_bytes: bytes, archive: Path, refuse) -> dict[str, str]:
    where = Path(f"{archive}:{TOP}/{MANIFEST}")
    try:
        raw = json.loads(manifest_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise refuse(f"{TOP}/{MANIFEST} is not valid JSON ({getattr(error, 'msg', None) or _why(error)})") from None
    return parse_manifest(raw, where).files


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path, expected: str, refuse) -> None:
    source = tar.extractfile(member)
    digest, size = hashlib.sha256(), 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as out:
        while block := source.read(_CHUNK):
            digest.update(block)
            out.write(block)
            size += len(block)
    if size != member.size:
        raise refuse(f"{member.name} ends early (truncated archive)")
    if digest.hexdigest() != expected:
        raise refuse(f"{member.name}: sha256 does not match its manifest.json (archive modified or corrupt)")


def bundle_folder(path: str | os.PathLike, say: Callable[[str], None] | None = None) -> Path:
    """A bundle folder for `path`: the folder itself, or, for an archive file (or a name ending
    in .tar/.tar.gz/.tgz), the folder it unpacks to (unpacked_bundle)."""
    path = Path(path)
    if path.is_file() or (is_archive_name(path) and not path.is_dir()):
        return unpacked_bundle(path, say=say)
    return path


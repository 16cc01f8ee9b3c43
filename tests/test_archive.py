"""Bundle archives (runtime/archive.py): export where torch is, copy one file, run without torch.

Real files, real ONNX Runtime: archives written from the runtime tests' exported bundle, read
back through Scorer.load, deramos-run, deramos-build and deramos-export in child processes
(deramos-build in an interpreter where `import torch` fails)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from runtime_helpers import RATE, music, write_wav

from deramos.runtime import BundleError, Scorer
from deramos.runtime import archive as arc
from deramos.runtime.bundle import load_bundle

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
PROMPT = "calm solo piano with soft dynamics"
TOP = "deramos-bundle"

# A child interpreter in which `import torch` fails as it does where torch is not installed.
NO_TORCH = """
import importlib.abc, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchaudio", "transformers", "safetensors"):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, _NoTorch())
"""
BUILD_WITHOUT_TORCH = NO_TORCH + "from deramos.build.cli import main; main(prog_name='deramos-build')"


def _env(cache: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DERAMOS_BUNDLE"}
    env.update(XDG_CACHE_HOME=str(cache), HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", **extra)
    return env


def _run(args, cache: Path, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=_env(cache), cwd=cwd, timeout=600)


def _build(args, cache: Path, cwd=None) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-c", BUILD_WITHOUT_TORCH, *args], cache, cwd)


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A private user cache for this test; returns the folder archives unpack into."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "deramos" / "bundles"


@pytest.fixture(scope="module")
def packed(runtime_bundle, tmp_path_factory) -> dict[str, Path]:
    """The runtime bundle (FP32 + FP16) as a plain and as a gzip archive. Read-only."""
    out = tmp_path_factory.mktemp("archives")
    return {"tar": arc.write_archive(runtime_bundle, out / "model.tar"),
            "tgz": arc.write_archive(runtime_bundle, out / "model.tgz")}


@pytest.fixture(scope="module")
def clips() -> list:
    return [music(1.5 + 1.7 * i, seed=90 + i) for i in range(4)]


# --- round trip ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tar", "tgz"])
def test_an_archive_scores_as_its_folder_does(runtime_bundle, packed, cache, clips, kind):
    with Scorer.load(runtime_bundle, backend="onnxruntime-cpu") as scorer:
        expected = scorer.score_batch(clips, PROMPT, sample_rate=RATE)
    said: list[str] = []
    with Scorer.load(packed[kind], backend="onnxruntime-cpu", precision="fp16", say=said.append) as scorer:
        root = scorer.bundle.root
    with Scorer.load(packed[kind], backend="onnxruntime-cpu", say=said.append) as scorer:
        got = scorer.score_batch(clips, PROMPT, sample_rate=RATE)
    assert root == cache / f"archive-{_sha(packed[kind])[:32]}"
    assert said == [f"deramos: unpacked {packed[kind]} to {root} (first use of this archive; once)"]
    assert sorted(p.name for p in cache.iterdir()) == [root.name]          # no scratch folder left
    assert all(s.ok for s in got) and len(got) == len(expected)
    for want, have in zip(expected, got):
        assert abs(want.mi - have.mi) < 1e-5 and abs(want.ta - have.ta) < 1e-5
    listed = load_bundle(runtime_bundle).files
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == sorted([*listed, "manifest.json"])
    for name in listed:
        assert _sha(root / name) == listed[name]


def test_a_second_run_does_not_unpack_again(packed, cache, tmp_path):
    first = arc.unpacked_bundle(packed["tar"])
    before = os.stat(first / "heads.onnx")
    said: list[str] = []
    assert arc.unpacked_bundle(packed["tar"], say=said.append) == first and said == []
    after = os.stat(first / "heads.onnx")
    assert (after.st_ino, after.st_mtime_ns, after.st_ctime_ns) == (before.st_ino, before.st_mtime_ns, before.st_ctime_ns)
    # Keyed by content, not by name: the same bytes under another name find the same folder.
    renamed = Path(shutil.copyfile(packed["tar"], tmp_path / "renamed.tar"))
    assert arc.unpacked_bundle(renamed, say=said.append) == first and said == []


def test_the_archive_holds_the_manifest_and_listed_files_only_and_is_reproducible(runtime_bundle, tmp_path):
    copy = Path(shutil.copytree(runtime_bundle, tmp_path / "bundle"))
    (copy / "notes.txt").write_text("not listed in manifest.json")
    for suffix in ("tar", "tar.gz"):
        a = arc.write_archive(copy, tmp_path / f"a.{suffix}")
        b = arc.write_archive(runtime_bundle, tmp_path / f"b.{suffix}")
        assert a.read_bytes() == b.read_bytes(), suffix          # no times, owners or stray files in it
        with tarfile.open(a) as tar:
            assert tar.getnames() == [f"{TOP}/manifest.json"] + [f"{TOP}/{n}" for n in sorted(load_bundle(copy).files)]
            assert {(m.mode, m.uid, m.mtime) for m in tar.getmembers()} == {(0o644, 0, 0)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar", "a.tar.gz", "b.tar", "b.tar.gz", "bundle"]


def test_a_modified_bundle_or_a_bad_name_is_not_packed(runtime_bundle, tmp_path):
    copy = Path(shutil.copytree(runtime_bundle, tmp_path / "bundle"))
    with open(copy / "heads.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match=r"heads\.onnx: sha256 does not match manifest\.json"):
        arc.write_archive(copy, tmp_path / "model.tar")
    with pytest.raises(BundleError) as raised:
        arc.write_archive(runtime_bundle, tmp_path / "model.zip")
    assert str(raised.value) == f"{tmp_path / 'model.zip'}: a bundle archive's name ends in .tar, .tar.gz, .tgz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]      # no archive, no scratch file


# --- refused archives: one line naming the archive and the cause, nothing left behind ----------------


def _flip_byte(archive: Path, member: str, target: Path) -> Path:
    shutil.copyfile(archive, target)
    with tarfile.open(target) as tar:
        info = tar.getmember(member)
    offset = info.offset_data + info.size // 2
    with open(target, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))
    return target


@pytest.mark.parametrize("member", ["heads.onnx", "tokenizer.json", "probes/03.flac"])
def test_a_tampered_member_is_refused(packed, cache, tmp_path, member):
    tampered = _flip_byte(packed["tar"], f"{TOP}/{member}", tmp_path / "tampered.tar")
    with pytest.raises(BundleError) as raised:
        Scorer.load(tampered, backend="onnxruntime-cpu")
    assert str(raised.value) == (f"{tampered}: {TOP}/{member}: sha256 does not match its manifest.json "
                                 f"(archive modified or corrupt)")
    assert list(cache.iterdir()) == []                                   # neither the bundle nor its scratch


def _cut_in_last_member(data: bytes, archive: Path) -> bytes:
    with tarfile.open(archive) as tar:
        last = tar.getmembers()[-1]
    return data[: last.offset_data + last.size // 2]


@pytest.mark.parametrize("kind, where", [("tar", "half"), ("tar", "last member"), ("tgz", "half"),
                                         ("tgz", "last bytes")])
def test_a_truncated_archive_is_refused_in_one_line(packed, cache, tmp_path, kind, where):
    data = packed[kind].read_bytes()
    cut = {"half": data[: len(data) // 2], "last bytes": data[:-9]}.get(where) or _cut_in_last_member(data, packed[kind])
    broken = tmp_path / packed[kind].name
    broken.write_bytes(cut)
    with pytest.raises(BundleError) as raised:
        arc.unpacked_bundle(broken)
    message = str(raised.value)
    assert message.startswith(f"{broken}: not a readable tar archive, or truncated or corrupt (") and "\n" not in message
    assert list(cache.iterdir()) == []


def test_a_file_that_is_no_archive_is_refused(cache, tmp_path):
    clip = write_wav(tmp_path / "clip.wav", music(1.0, seed=3))
    with pytest.raises(BundleError) as raised:
        Scorer.load(clip)
    assert str(raised.value) == (f"{clip}: not a tar archive, or damaged at its start (a bundle is a folder, or a "
                                 f".tar/.tar.gz/.tgz written by deramos-export --out model.tar or deramos-build "
                                 f"BUNDLE --archive model.tar)")
    with pytest.raises(BundleError) as raised:
        Scorer.load(tmp_path / "absent.tar")
    assert str(raised.value) == f"{tmp_path / 'absent.tar'}: bundle archive not found"


def _member(name: str, kind=tarfile.REGTYPE, data: bytes = b"", linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname, info.mode = kind, len(data) if kind == tarfile.REGTYPE else 0, linkname, 0o644
    return info, data


def _crafted(packed_tar: Path, target: Path, drop=(), add=()) -> Path:
    """A copy of a good archive with members left out and others added (written by hand, as an
    attacker would, not by write_archive)."""
    with tarfile.open(packed_tar) as source, tarfile.open(target, "w", format=tarfile.GNU_FORMAT) as out:
        for info in source.getmembers():
            if info.name not in drop:
                out.addfile(info, source.extractfile(info))
        for info, data in add:
            out.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    return target


def _unsafe_cases(tmp_path: Path):
    outside = f"{tmp_path}/escaped"
    return {
        "absolute path": ({"add": [_member(outside, data=b"x")]},
                          f"member {outside!r} is an absolute path (files must be inside the bundle) (refused)"),
        "dot-dot": ({"add": [_member(f"{TOP}/../escaped", data=b"x")]},
                    f"member '{TOP}/../escaped' leaves the bundle ('..'; files must be inside the bundle) (refused)"),
        "symlink out": ({"add": [_member(f"{TOP}/escaped", tarfile.SYMTYPE, linkname=outside)]},
                        f"member '{TOP}/escaped' is a link to {outside!r} (refused: a bundle holds regular files)"),
        "symlink for a listed file": (
            {"drop": [f"{TOP}/tokenizer.json"], "add": [_member(f"{TOP}/tokenizer.json", tarfile.SYMTYPE,
                                                                linkname="/etc/passwd")]},
            f"member '{TOP}/tokenizer.json' is a link to '/etc/passwd' (refused: a bundle holds regular files)"),
        "hard link": ({"add": [_member(f"{TOP}/again.onnx", tarfile.LNKTYPE, linkname=f"{TOP}/heads.onnx")]},
                      f"member '{TOP}/again.onnx' is a link to '{TOP}/heads.onnx' (refused: a bundle holds regular files)"),
        "device": ({"add": [_member(f"{TOP}/disk", tarfile.BLKTYPE)]},
                   f"member '{TOP}/disk' is a device, fifo or other special file (refused)"),
        "fifo": ({"add": [_member(f"{TOP}/pipe", tarfile.FIFOTYPE)]},
                 f"member '{TOP}/pipe' is a device, fifo or other special file (refused)"),
        "outside the folder": ({"add": [_member("elsewhere/heads.onnx", data=b"x")]},
                               f"member 'elsewhere/heads.onnx' is outside the archive's {TOP}/ folder (refused)"),
        "unlisted file": ({"add": [_member(f"{TOP}/run.sh", data=b"#!/bin/sh\n")]},
                          f"member '{TOP}/run.sh' is not listed in its manifest.json (refused: a bundle holds only the "
                          f"files its manifest lists with their sha256)"),
        "twice": ({"add": [_member(f"{TOP}/heads.onnx", data=b"other bytes")]},
                  f"member '{TOP}/heads.onnx' appears twice (refused: the second would replace the first)"),
        "listed file missing": ({"drop": [f"{TOP}/heads.onnx"]},
                                "heads.onnx is listed in manifest.json but missing from the archive"),
        "no manifest": ({"drop": [f"{TOP}/manifest.json"]},
                        f"no {TOP}/manifest.json in it (not a deramos bundle archive; write one with deramos-export "
                        f"--out model.tar or deramos-build BUNDLE --archive model.tar)"),
    }


@pytest.mark.parametrize("case", list(_unsafe_cases(Path("/x"))))
def test_unsafe_or_foreign_members_are_refused_before_anything_is_written(packed, cache, tmp_path, case):
    how, cause = _unsafe_cases(tmp_path)[case]
    crafted = _crafted(packed["tar"], tmp_path / "crafted.tar", **how)
    with pytest.raises(BundleError) as raised:
        arc.unpacked_bundle(crafted)
    assert str(raised.value) == f"{crafted}: {cause}"
    assert list(cache.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "crafted.tar"]   # nothing escaped


def test_a_changed_unpacked_copy_is_unpacked_again(packed, cache):
    root = arc.unpacked_bundle(packed["tar"])
    with open(root / "heads.onnx", "ab") as handle:
        handle.write(b"\0")
    said: list[str] = []
    assert arc.unpacked_bundle(packed["tar"], say=said.append) == root and len(said) == 1
    assert _sha(root / "heads.onnx") == load_bundle(root).files["heads.onnx"]


def test_a_folder_without_manifest_in_the_archive_s_place_is_replaced(packed, cache):
    junk = cache / f"archive-{_sha(packed['tar'])[:32]}"
    (junk / "probes").mkdir(parents=True)
    (junk / "heads.onnx").write_bytes(b"left by hand")
    assert arc.unpacked_bundle(packed["tar"]) == junk
    load_bundle(junk)
    assert _sha(junk / "heads.onnx") == load_bundle(junk).files["heads.onnx"]


def test_a_killed_unpack_leaves_a_scratch_folder_that_the_next_one_removes(packed, cache):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)                              # a pid that has exited
    scratch = cache / f"archive-{'0' * 32}.tmp-{dead}"
    (scratch / "probes").mkdir(parents=True)
    root = arc.unpacked_bundle(packed["tgz"])
    assert sorted(p.name for p in cache.iterdir()) == [root.name]


# --- the command lines -------------------------------------------------------------------------------


def test_deramos_run_scores_an_archive_and_refuses_a_corrupt_one_in_one_line(runtime_bundle, packed, tmp_path, clips):
    clip = write_wav(tmp_path / "clip.wav", clips[2])
    cache = tmp_path / "cache"
    folder = _run([BIN / "deramos-run", "--json", "--bundle", runtime_bundle, clip, PROMPT], cache)
    packed_run = _run([BIN / "deramos-run", "--json", "--bundle", packed["tgz"], clip, PROMPT], cache)
    assert folder.returncode == 0 and packed_run.returncode == 0, packed_run.stderr
    want, have = json.loads(folder.stdout), json.loads(packed_run.stdout)
    assert abs(want["mi"] - have["mi"]) < 1e-5 and abs(want["ta"] - have["ta"]) < 1e-5
    assert _errors(packed_run.stderr) == []
    broken = tmp_path / "broken.tgz"
    broken.write_bytes(packed["tgz"].read_bytes()[:-9])
    refused = _run([BIN / "deramos-run", "--bundle", broken, clip, PROMPT], cache)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith(
        f"error: {broken}: not a readable tar archive, or truncated or corrupt (")
    assert [p.name for p in (cache / "deramos" / "bundles").iterdir()] == [f"archive-{_sha(packed['tgz'])[:32]}"]


def test_deramos_export_writes_one_file_and_leaves_no_scratch(tmp_path):
    """--out model.tar: the bundle exported, packed, its folder gone; INT8 calibrated on the
    bundle's probe clips (the default, as deramos-build's)."""
    cache = tmp_path / "cache"
    work = tmp_path / "work"
    work.mkdir()
    done = _run([BIN / "deramos-export", "--preset", "tiny", "--no-validate", "--int8", "--calib-clips", "8",
                 "--out", "out/model.tar"], cache, cwd=work)
    assert done.returncode == 0, done.stderr
    assert sorted(p.relative_to(work).as_posix() for p in work.rglob("*")) == ["out", "out/model.tar"]
    assert "calibrating on 8 clips from the bundle's probe clips (minmax, INT8 target x86-avx2)" in done.stderr
    assert "archive written: out/model.tar (" in done.stderr and "deramos-run --bundle model.tar" in done.stderr
    root = _unpack_in(cache, work / "out" / "model.tar")
    assert load_bundle(root).precisions() == ["fp32", "int8"]
    assert load_bundle(root).manifest.int8["calibration_set"]["source"] == "the bundle's probe clips"


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt") is not None,
                    reason="tensorrt is installed here: this checks the message when it is not")
def test_deramos_export_to_an_archive_with_trt_but_no_tensorrt_packs_the_onnx_bundle(tmp_path):
    """The export's --trt fails (exit 2: an unusable setting) after the ONNX bundle is complete: the message says the
    bundle in model.tar is complete, so model.tar must be there."""
    cache = tmp_path / "cache"
    done = _run([BIN / "deramos-export", "--preset", "tiny", "--no-validate", "--trt", "--out", tmp_path / "model.tar"],
                cache)
    assert done.returncode == 2, done.stderr
    assert _errors(done.stderr) == [f"error: --trt: TensorRT is not installed (pip install 'deramos[gpu]' on a machine "
                                    f"with an NVIDIA GPU); the ONNX bundle in {tmp_path / 'model.tar'} is complete"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "model.tar"]       # no scratch folder
    assert load_bundle(_unpack_in(cache, tmp_path / "model.tar")).precisions() == ["fp32"]


def _unpack_in(cache: Path, archive: Path) -> Path:
    done = subprocess.run([sys.executable, "-c", "import sys; from deramos.runtime.archive import unpacked_bundle; "
                           "print(unpacked_bundle(sys.argv[1]))", str(archive)],
                          capture_output=True, text=True, env=_env(cache), timeout=120)
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip())


def test_deramos_export_refuses_a_missing_calib_and_a_bad_archive_name_before_exporting(tmp_path):
    cache = tmp_path / "cache"
    missing = _run([BIN / "deramos-export", "--preset", "tiny", "--calib", tmp_path / "nothing", "--out", tmp_path / "b"],
                   cache)
    assert missing.returncode == 2 and "Invalid value for '--calib'" in missing.stderr
    badname = _run([BIN / "deramos-export", "--preset", "tiny", "--archive", tmp_path / "b.zip", "--out", tmp_path / "b"],
                   cache)
    assert badname.returncode == 2 and "an archive's name ends in .tar, .tar.gz, .tgz" in badname.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --- deramos-build, torch-free: from an archive, to an archive, probe-clip calibration --------------


def test_build_from_an_archive_to_an_archive_without_torch(packed, tmp_path):
    """deramos-build model.tar --int8 --out model-int8.tar where torch cannot be imported: INT8
    calibrated on the bundle's own probe clips (no --calib), checked, packed; the source archive
    and its unpacked copy untouched, no scratch folder left."""
    cache = tmp_path / "cache"
    source = Path(shutil.copyfile(packed["tar"], tmp_path / "model.tar"))
    before = _sha(source)
    done = _build([source, "--int8", "--no-speed", "--out", tmp_path / "model-int8.tar"], cache)
    assert done.returncode == 0, done.stderr
    assert "calibrating on 32 clips from the bundle's probe clips (asked for 64; that is all it has) (minmax, INT8 " \
           "target x86-avx2)" in done.stderr
    assert "int8: PASS" in done.stderr and _errors(done.stderr) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "model-int8.tar", "model.tar"]
    assert _sha(source) == before
    unpacked = cache / "deramos" / "bundles" / f"archive-{before[:32]}"
    load_bundle(unpacked)                                   # the cached source copy still verifies ...
    assert load_bundle(unpacked).precisions() == ["fp32", "fp16"]     # ... and was not built in
    built = _unpack_in(cache, tmp_path / "model-int8.tar")
    assert load_bundle(built).precisions() == ["fp32", "fp16", "int8"]
    assert load_bundle(built).manifest.int8["calibration_set"]["clips"] == 32


def test_build_calibrates_on_the_real_music_of_a_checkout_without_torch(runtime_bundle, tmp_path):
    real = REPO / "tests" / "data" / "realmusic_clean" / "clips.jsonl"
    root = Path(shutil.copytree(runtime_bundle, tmp_path / "bundle"))
    done = _build([root, "--int8", "--no-speed", "--calib", real, "--calib-clips", "12"], tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    assert f"calibrating on 12 clips from {real} (minmax, INT8 target" in done.stderr
    calibrated = load_bundle(root).as_json()["int8"]["calibration_set"]
    assert calibrated == {"source": str(real), "clips": 12, "skipped": []}


def test_build_packs_a_bundle_as_it_is(runtime_bundle, tmp_path, clips):
    done = _build([runtime_bundle, "--archive", tmp_path / "packed.tgz"], tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith(f"archive written: {tmp_path / 'packed.tgz'} (")
    assert (tmp_path / "packed.tgz").read_bytes() == arc.write_archive(runtime_bundle, tmp_path / "again.tgz").read_bytes()


@pytest.mark.parametrize("args, message", [
    (["--fp16"], "is an archive, never built in place: give --out DIR and/or --archive FILE"),
    ([], "nothing to build: give --fp16, --int8, --trt and/or --ship-calib (or --archive FILE to pack the bundle)"),
    (["--fp16", "--out", "x.tar", "--archive", "y.tar"], "--out names an archive already"),
])
def test_build_usage_errors_touch_nothing(packed, tmp_path, args, message):
    source = Path(shutil.copyfile(packed["tar"], tmp_path / "model.tar"))
    done = _build([source, *args], tmp_path / "cache", cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tar"]


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt") is not None,
                    reason="tensorrt is installed here: this checks the message when it is not")
@pytest.mark.parametrize("source_kind", ["folder", "archive"])
def test_build_trt_without_tensorrt_copies_nothing(runtime_bundle, packed, tmp_path, source_kind):
    source = runtime_bundle if source_kind == "folder" else packed["tar"]
    done = _build([source, "--trt", "--out", tmp_path / "bundle-trt"], tmp_path / "cache")
    assert done.returncode == 2, done.stderr
    assert _errors(done.stderr) == ["error: --trt: TensorRT is not installed (pip install 'deramos[gpu]' on a machine "
                                    "with an NVIDIA GPU); nothing was built or copied"]
    assert not (tmp_path / "bundle-trt").exists()
    assert "Traceback" not in done.stderr


def test_a_build_that_fails_after_copying_removes_its_copy(runtime_bundle, tmp_path):
    empty = tmp_path / "calib"
    empty.mkdir()
    (empty / "prompts.txt").write_text("a prompt for clips that are not there\n")
    done = _build([runtime_bundle, "--int8", "--calib", empty, "--out", tmp_path / "bundle-int8"], tmp_path / "cache")
    assert done.returncode == 2, done.stderr
    assert _errors(done.stderr) == [f"error: calibration set {empty}: no usable clips (it lists no clips)"]
    assert not (tmp_path / "bundle-int8").exists()


def test_build_out_that_exists_is_refused_and_kept(runtime_bundle, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep me")
    done = _build([runtime_bundle, "--fp16", "--out", taken], tmp_path / "cache")
    assert done.returncode == 2
    assert _errors(done.stderr) == [f"error: {taken}: already exists (--out writes a new bundle there)"]
    assert [p.name for p in taken.iterdir()] == ["mine.txt"]


# --- what the README tells an edge user -----------------------------------------------------------


def test_the_readme_edge_section_gives_the_commands():
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Edge devices (Jetson): export where torch is, copy one file, run"):]
    section = section[: section.index("\n## ")]
    for command in ("deramos-export --fp16 --out model.tar", "deramos-run --bundle model.tar clip.wav",
                    "deramos-build model.tar --int8 --out bundle-int8", "deramos-build model.tar --trt --out bundle-trt"):
        assert f"$ {command}" in section, command
    assert "deramos-export --trt" not in text and "--fp32" not in text

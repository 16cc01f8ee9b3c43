"""The default bundle: exported from the embedded checkpoint on first use, then reused."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runtime_helpers import RATE, music, run_cli, write_wav

from deramos.runtime import BundleError, Scorer
from deramos.runtime import default as default_module
from deramos.runtime import paths as paths_module

PROMPT = "calm solo piano"


@pytest.fixture(scope="module")
def checkpoint(runtime_model, tmp_path_factory):
    """The runtime test model saved as a checkpoint: it stands in for deramos/default_model/."""
    from deramos.model.checkpoint import save_checkpoint

    return save_checkpoint(runtime_model, tmp_path_factory.mktemp("default") / "default_model")


@pytest.fixture
def default_env(monkeypatch, tmp_path, checkpoint):
    monkeypatch.setenv("DERAMOS_DEFAULT_CHECKPOINT", str(checkpoint))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DERAMOS_BUNDLE", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")   # the export subprocess's torch, on a small CPU
    return tmp_path / "cache" / "deramos" / "bundles"


def test_default_bundle_is_exported_once_then_reused(default_env, runtime_bundle):
    clip = music(3.0, seed=8)
    said: list[str] = []
    first = Scorer.load(backend="onnxruntime-cpu", say=said.append)
    root = first.bundle.root
    assert root.parent == default_env and root.name.startswith("default-")
    assert len(said) == 1 and said[0] == f"deramos: exporting the default model to {root} (first use; once)"
    manifest_mtime = (root / "manifest.json").stat().st_mtime_ns
    assert sorted(p.name for p in default_env.iterdir()) == [root.name, root.name + ".lock"]   # no leftovers

    said.clear()
    second = Scorer.load(backend="onnxruntime-cpu", say=said.append)
    assert second.bundle.root == root and said == []
    assert (root / "manifest.json").stat().st_mtime_ns == manifest_mtime

    # Same weights as the test bundle, so the same scores.
    with Scorer.load(runtime_bundle, backend="onnxruntime-cpu") as reference:
        expected = reference.score(clip, PROMPT, sample_rate=RATE)
    assert second.score(clip, PROMPT, sample_rate=RATE).mi == pytest.approx(expected.mi, abs=1e-3)
    assert set(second.bundle.precisions()) == {"fp32", "fp16"}


def test_environment_bundle_comes_before_the_default(default_env, runtime_bundle, monkeypatch):
    monkeypatch.setenv("DERAMOS_BUNDLE", str(runtime_bundle))
    said: list[str] = []
    scorer = Scorer.load(backend="onnxruntime-cpu", say=said.append)
    assert scorer.bundle.root == runtime_bundle and said == []
    assert not default_env.exists()


def test_no_default_model_says_how_to_get_a_bundle(default_env, monkeypatch, tmp_path):
    monkeypatch.setenv("DERAMOS_DEFAULT_CHECKPOINT", str(tmp_path / "no_model_here"))
    with pytest.raises(BundleError) as raised:
        Scorer.load()
    message = str(raised.value)
    assert message.startswith(f"no bundle given and no default model in this install ({tmp_path / 'no_model_here'})")
    assert "deramos-export --out DIR" in message and "--bundle DIR" in message
    clip = write_wav(tmp_path / "clip.wav", music(1.0, seed=1))
    result = run_cli([clip, PROMPT])
    assert result.exit_code == 2 and result.stderr == f"error: {message}\n"


def test_without_the_export_extra_it_says_what_to_install(default_env, monkeypatch):
    monkeypatch.setattr(default_module, "export_available", lambda: False)
    with pytest.raises(BundleError, match=r"pip install 'deramos\[export\]'"):
        Scorer.load()
    assert not default_env.exists()


def test_a_failed_export_is_one_line_and_leaves_nothing_behind(default_env, monkeypatch, checkpoint, tmp_path):
    import shutil

    broken = shutil.copytree(checkpoint, tmp_path / "broken_model")
    (broken / "model.safetensors").write_bytes(b"\0" * 64)
    monkeypatch.setenv("DERAMOS_DEFAULT_CHECKPOINT", str(broken))
    with pytest.raises(BundleError) as raised:
        Scorer.load(say=lambda _: None)
    message = str(raised.value)
    assert message.startswith(f"exporting the default model from {broken} failed: ") and "\n" not in message
    assert [p.name for p in default_env.iterdir() if not p.name.endswith(".lock")] == []


def _process_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie waiting for a reaper that may never come."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and PR_SET_PDEATHSIG")
def test_kill_9_during_the_first_use_export_leaves_nothing_running_and_the_next_run_cleans_up(
        default_env, runtime_bundle, tmp_path):
    clip = write_wav(tmp_path / "clip.wav", music(1.0, seed=9))
    user = subprocess.Popen([Path(sys.executable).parent / "deramos-run", clip, PROMPT],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    scratch = default_env / f"default-{default_module.checkpoint_hash(Path(os.environ[default_module.ENV_CHECKPOINT]))}" \
                            f".tmp-{user.pid}"
    deadline = time.monotonic() + 120
    while not scratch.exists() and time.monotonic() < deadline and user.poll() is None:
        time.sleep(0.05)
    assert scratch.is_dir(), "the export never started"
    children = Path(f"/proc/{user.pid}/task/{user.pid}/children").read_text().split()
    assert len(children) == 1                               # the deramos-export process
    os.kill(user.pid, signal.SIGKILL)
    user.wait()
    deadline = time.monotonic() + 30
    while not _process_gone(int(children[0])) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _process_gone(int(children[0])), "the export outlived deramos-run"
    assert scratch.is_dir()                                 # a killed process cleans nothing itself

    # The next run: here the bundle is already in place (another process exported it), and the
    # dead run's scratch folder (139 MB for the real model) is removed all the same.
    target = scratch.with_name(scratch.name.split(".tmp-")[0])
    shutil.copytree(runtime_bundle, target)
    result = run_cli([clip, PROMPT])
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in default_env.iterdir()) == [target.name, target.name + ".lock"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and PR_SET_PDEATHSIG")
def test_a_silent_child_dies_with_its_parent():
    """The export child may run for minutes without writing (so no broken pipe would stop it):
    here a child that only sleeps, started the way the export is, must die with its parent."""
    parent = subprocess.Popen([sys.executable, "-c",
                               "import sys; from deramos.runtime.default import run_tied_to_this_process as run; "
                               "run([sys.executable, '-c', 'import time; time.sleep(300)'])"])
    children_file = Path(f"/proc/{parent.pid}/task/{parent.pid}/children")
    deadline = time.monotonic() + 60
    while not children_file.read_text().split() and time.monotonic() < deadline:
        time.sleep(0.05)
    (child,) = map(int, children_file.read_text().split())
    time.sleep(0.5)                                        # past the child's exec
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while not _process_gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    gone = _process_gone(child)
    if not gone:
        os.kill(child, signal.SIGKILL)
    assert gone, "the child outlived its parent"


def test_a_scratch_folder_of_a_live_export_is_kept(default_env):
    default_env.mkdir(parents=True)
    live = default_env / f"default-abc.tmp-{os.getpid()}"          # this process is alive
    dead = default_env / "default-abc.tmp-999999999"                 # no such pid
    old = default_env / f"default-abd.tmp-{os.getpid()}"
    for folder in (live, dead, old):
        folder.mkdir()
    os.utime(old, (time.time() - paths_module.STALE_SCRATCH_SECONDS - 60,) * 2)   # a reused pid
    assert sorted(paths_module.remove_stale_scratch(default_env)) == sorted([dead, old])
    assert sorted(p.name for p in default_env.iterdir()) == [live.name]

"""The default bundle: exported from the embedded checkpoint on first use, then reused."""
from __future__ import annotations

import pytest
from runtime_helpers import RATE, music, run_cli, write_wav

from deramos.runtime import BundleError, Scorer
from deramos.runtime import default as default_module

PROMPT = "calm solo piano"


@pytest.fixture(scope="module")
def checkpoint(runtime_model, tmp_path_factory):
    """The runtime test model saved as a checkpoint: it stands in for deramos/default_model/."""
    from deramos.checkpoint import save_checkpoint

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

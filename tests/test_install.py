"""What an install looks like from outside: the wheel carries the default model without a
setuptools warning, and a runtime-only install (no torch) answers every command with one line.

The runtime-only install is this venv with the train/export stack made unimportable by a
sitecustomize whose meta-path finder raises ModuleNotFoundError for it: a real import failure,
as `pip install deramos` without torch gives, in real console-script processes."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from runtime_helpers import music, write_wav

from deramos.extras import missing_extra_message

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("torch", "torchaudio", "transformers", "safetensors", "scipy", "onnx", "onnxscript")
BLOCKER = f'''
import sys

class _NotInstalled:
    """This process sees an install without {BLOCKED}."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
'''


@pytest.fixture(scope="module")
def runtime_only_env(tmp_path_factory):
    site = tmp_path_factory.mktemp("runtime-only")
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {k: v for k, v in os.environ.items() if k not in ("DERAMOS_BUNDLE", "DERAMOS_DEFAULT_CHECKPOINT")}
    env.update(PYTHONPATH=str(site), XDG_CACHE_HOME=str(site / "cache"), OMP_NUM_THREADS="1")
    return env


def run(command: str, *args, env) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / command, *map(str, args)], capture_output=True, text=True, env=env, timeout=120)


def test_the_blocker_is_a_real_import_failure(runtime_only_env):
    done = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, env=runtime_only_env)
    assert done.returncode == 1 and "ModuleNotFoundError: No module named 'torch'" in done.stderr


@pytest.mark.parametrize("command, args", [
    ("deramos-train", ["--help"]), ("deramos-pretrain", ["--help"]), ("deramos-eval", ["--help"]),
    ("deramos-export", ["--out", "bundle"]), ("deramos-train", ["--data", ".", "--out", "run"]),
])
def test_torch_commands_say_what_to_install_in_one_line(runtime_only_env, tmp_path, command, args):
    done = run(command, *args, env={**runtime_only_env})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"error: {missing_extra_message(command, 'torch')}\n"
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in done.stderr
    assert "pip install 'deramos[export]'" in done.stderr


def test_runtime_scores_without_torch(runtime_only_env, runtime_bundle, tmp_path):
    clip = write_wav(tmp_path / "clip.wav", music(2.0, seed=5))
    done = run("deramos-run", "--json", "--bundle", runtime_bundle, clip, "calm piano", env=runtime_only_env)
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)
    assert row["error"] is None and 1.0 <= row["mi"] <= 5.0


def test_default_model_without_torch_says_how_to_get_a_cpu_torch(runtime_only_env, tmp_path):
    clip = write_wav(tmp_path / "clip.wav", music(1.0, seed=6))
    done = run("deramos-run", clip, "calm piano", env=runtime_only_env)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(
        "error: no bundle given and the default bundle is not exported yet; export one with "
        "`deramos-export --out DIR` and pass --bundle DIR (or set DERAMOS_BUNDLE), or, to export the default "
        "model on first use, install a CPU build of torch first (pip install torch --index-url "
        "https://download.pytorch.org/whl/cpu")
    assert done.stderr.endswith("then the extra: pip install 'deramos[export]'; or export on a machine with torch "
                                "(`deramos-export --out model.tar`) and copy the archive here "
                                "(`deramos-run --bundle model.tar`)\n")


def test_runtime_scores_an_archive_without_torch(runtime_only_env, runtime_bundle, tmp_path):
    """The edge path: a bundle exported where torch is, copied as one file, scored where the
    train/export stack (torch, onnx, scipy, ...) cannot be imported; unpacked once, into the cache."""
    from deramos.runtime.archive import write_archive

    archive = write_archive(runtime_bundle, tmp_path / "model.tar")
    clip = write_wav(tmp_path / "clip.wav", music(2.0, seed=7))
    rows = []
    for bundle in (runtime_bundle, archive, archive):
        done = run("deramos-run", "--json", "--bundle", bundle, clip, "calm piano", env=runtime_only_env)
        assert done.returncode == 0, done.stderr
        rows.append(json.loads(done.stdout))
    assert all(row["error"] is None for row in rows)
    assert abs(rows[0]["mi"] - rows[1]["mi"]) < 1e-5 and abs(rows[0]["ta"] - rows[1]["ta"]) < 1e-5
    unpacked = list((Path(runtime_only_env["XDG_CACHE_HOME"]) / "deramos" / "bundles").glob("archive-*"))
    assert len(unpacked) == 1 and (unpacked[0] / "manifest.json").is_file()


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="building a wheel needs setuptools")
def test_the_wheel_ships_the_default_model_without_a_setuptools_warning(tmp_path):
    import shutil

    source = tmp_path / "source"      # setuptools builds in the source tree: not in the checkout
    top_level = {".venv", ".venv-serve", ".venv-tf", ".git", "build", "tests"}   # src/deramos/build is code

    def ignore(folder, names):
        return {n for n in names if (Path(folder) == REPO and n in top_level)
                or n == "__pycache__" or n.endswith(".egg-info")}

    shutil.copytree(REPO, source, ignore=ignore)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "default_model" not in done.stdout + done.stderr
    (wheel,) = tmp_path.glob("deramos-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"deramos/default_model/{name}" for name in
               ("config.json", "model.safetensors", "tokenizer.json", "heldout-metrics.json", "realmusic-heldout.json")}
    assert shipped <= names
    assert {"deramos/extras.py", "deramos/runtime/cli.py", "deramos/export/cli.py"} <= names


def test_the_readme_stands_alone():
    """Every relative link and path the README names is inside this repository and exists."""
    import re

    text = (REPO / "README.md").read_text()
    assert "../" not in text
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert "docs/design.md" in links
    for link in links:
        if "://" not in link:
            assert (REPO / link).resolve().is_relative_to(REPO) and (REPO / link).exists(), link


def test_the_checkout_root_cannot_shadow_the_installed_package(tmp_path):
    """All code is under src/: Python started in the checkout's root (where a plain, non-editable
    install is imported from site-packages) finds no `deramos` folder there to take instead."""
    assert not (REPO / "deramos").exists() and (REPO / "src" / "deramos" / "runtime" / "__init__.py").is_file()
    found = subprocess.run([sys.executable, "-c", "import importlib.util as u; s = u.find_spec('deramos'); "
                            "print(s.submodule_search_locations[0])"],
                           cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()).resolve() != (REPO / "deramos").resolve()

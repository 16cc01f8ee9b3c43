"""scripts/pick_seed.py: the run whose chosen checkpoint did best on dev becomes the link."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pick_seed.py"


def fake_run(root: Path, name: str, chosen_epoch: int, dev: dict[int, tuple[float, float]]) -> Path:
    run = root / name
    (run / "best_combined").mkdir(parents=True)
    (run / "best_combined" / "config.json").write_text(json.dumps({"epoch": chosen_epoch}))
    lines = [{"epoch": e, "dev": {"utterance": {"MI": {"SRCC": mi}, "TA": {"SRCC": ta}}}} for e, (mi, ta) in dev.items()]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return run


def pick(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=60)


def test_the_chosen_epoch_of_each_run_is_compared_not_its_best(tmp_path):
    # run a has the best epoch overall (3), but its chosen checkpoint is epoch 2
    a = fake_run(tmp_path, "run-seed1", 2, {1: (0.5, 0.5), 2: (0.6, 0.5), 3: (0.9, 0.9)})
    b = fake_run(tmp_path, "run-seed2", 1, {1: (0.62, 0.52), 2: (0.1, 0.1)})
    done = pick("--link", tmp_path / "run", a, b)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run").resolve() == b.resolve()
    assert "epoch 2, dev (utt MI + utt TA) / 2 = 0.5500" in done.stdout
    again = pick("--link", tmp_path / "run", a)    # an existing link is replaced
    assert again.returncode == 0 and (tmp_path / "run").resolve() == a.resolve()


def test_a_directory_in_the_links_place_is_not_removed(tmp_path):
    a = fake_run(tmp_path, "run-seed1", 1, {1: (0.5, 0.5)})
    (tmp_path / "run").mkdir()
    done = pick("--link", tmp_path / "run", a)
    assert done.returncode == 2 and done.stderr.startswith(f"error: {tmp_path / 'run'}: exists and is not a link")
    assert (tmp_path / "run").is_dir() and not (tmp_path / "run").is_symlink()

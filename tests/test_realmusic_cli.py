"""deramos-realmusic, the group of the real-music steps: `report` run on a held-out set made from
the shipped clean clips with the tiny model (what it prints is what it writes), its errors, and a
torch-free install's one line. `corpus` is tested in test_realmusic.py, `merge` in
test_merge_corpora.py."""
from __future__ import annotations

import json
import subprocess

import pytest
from click.testing import CliRunner
from test_ablation import CLEAN, real_music_heldout
from test_install import BIN, BLOCKER

from deramos.data.realmusic.freeform import PROMPT_SET_DIR
from deramos.model.checkpoint import save_checkpoint
from deramos.training.realmusic_cli import main

pytestmark = pytest.mark.usefixtures("torch_single_thread")
FORMATS = {"PCM_24", "FLOAT", "MP3", "OGG"}


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    return real_music_heldout(tmp_path_factory.mktemp("realmusic") / "heldout")


@pytest.fixture(scope="module")
def checkpoint(runtime_model, tmp_path_factory):
    return save_checkpoint(runtime_model, tmp_path_factory.mktemp("tiny") / "checkpoint")


def test_the_group_names_its_four_steps():
    done = CliRunner().invoke(main, ["--help"])
    assert done.exit_code == 0
    listed = [line.split()[0] for line in done.output.split("Commands:")[1].splitlines() if line.startswith("  ")]
    assert listed == ["corpus", "ladders", "merge", "report"]


def test_report_prints_and_writes_the_same_numbers(heldout, checkpoint, tmp_path):
    out_json, out_md = tmp_path / "report.json", tmp_path / "report.md"
    done = CliRunner().invoke(main, ["report", "--data", str(heldout), "--model", f"tiny={checkpoint}",
                                     "--format-clips", "2", "--freeform", "--json", str(out_json),
                                     "--markdown", str(out_md)])
    assert done.exit_code == 0, (done.output, done.exception)
    first, table = done.stdout.split("\n", 1)
    results = json.loads(out_json.read_text())
    assert list(results) == ["tiny"]
    tiny = results["tiny"]
    # the printed line is the file's numbers without the metrics table (NaN included: compared as JSON text)
    assert json.dumps(json.loads(first)) == json.dumps({"tiny": {k: v for k, v in tiny.items() if k != "metrics"}})
    assert table == out_md.read_text() + "\n"
    clips = len((CLEAN / "clips.jsonl").read_text().splitlines())
    assert tiny["clips"] == clips == tiny["paired_wins"]["clips"]
    assert tiny["paired_wins"]["rate"] == pytest.approx(tiny["paired_wins"]["wins"] / clips, abs=1e-3)
    assert 0.0 <= tiny["matched_vs_mismatched_auc"] <= 1.0
    assert set(tiny["format_delta_mi"]) == FORMATS
    assert all(0.0 <= d["mean"] <= d["max"] < 0.5 for d in tiny["format_delta_mi"].values())
    assert {"utterance", "system"} <= set(tiny["metrics"])
    assert 0.0 <= tiny["freeform"]["matched_vs_mismatched_auc"] <= 1.0
    assert table.startswith("| model | utt MI | utt TA |") and "\n| tiny | " in table
    assert f"Free-form prompts (hand-written, {PROMPT_SET_DIR}):" in table


@pytest.mark.parametrize("model, data, message", [
    ("tiny", "{heldout}", "Invalid value for '--model': 'tiny': expected NAME=CHECKPOINT"),
    ("tiny={nowhere}", "{heldout}", "--model tiny: {nowhere}: no checkpoint here"),
    ("tiny={checkpoint}", "{checkpoint}", "{checkpoint}: not a deramos-realmusic set (no synth_meta.jsonl)"),
])
def test_report_says_what_is_wrong_in_one_line(heldout, checkpoint, tmp_path, model, data, message):
    names = {"heldout": heldout, "checkpoint": checkpoint, "nowhere": tmp_path / "nowhere"}
    out_json = tmp_path / "report.json"
    done = CliRunner().invoke(main, ["report", "--data", data.format(**names), "--model", model.format(**names),
                                     "--json", str(out_json)])
    assert done.exit_code == 2 and done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if line.lower().startswith("error: ")]
    assert len(errors) == 1 and errors[0][len("error: "):].startswith(message.format(**names)), done.stderr
    assert not out_json.exists()


def test_without_torch_the_report_says_what_to_install(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    done = subprocess.run([BIN / "deramos-realmusic", "report", "--data", str(tmp_path), "--model", "m=x"],
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(site), "PATH": str(BIN), "HOME": str(tmp_path)})
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: deramos-realmusic needs ") and "pip install 'deramos[export]'" in line

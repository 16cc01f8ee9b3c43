"""deramos-train: run layout, checkpoints, determinism, resume (also after SIGKILL), torchrun,
loss baselines, early stopping, missing clips and the frozen-encoder feature cache.

Everything trains the `tiny` preset on the session's synthetic corpus (48 clips, 4 systems),
mostly in-process (importing torch in a subprocess costs seconds on a small CPU)."""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import deramos.model.config as config_mod
import deramos.training.train as train_mod
from deramos.model.checkpoint import load_checkpoint
from deramos.runtime.errors import TrainingError
from deramos.training.train import TrainArgs, main, run_training

pytestmark = pytest.mark.usefixtures("torch_single_thread")

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = ("best_loss", "best_mi_sys", "best_combined", "last")
PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt"}
LEVELS, ASPECTS, METRICS = ("utterance", "system"), ("MI", "TA"), ("MSE", "LCC", "SRCC", "KTAU")


# ---------------------------------------------------------------------------------------------
# helpers

@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("feature_cache")


def targs(corpus, out, cache, **overrides) -> TrainArgs:
    values = dict(data=str(corpus), out=str(out), preset="tiny", epochs=2, cache_dir=str(cache), progress=False)
    values.update(overrides)
    return TrainArgs(**values)


def read_metrics(run: Path) -> list[dict]:
    """Every line of metrics.jsonl, parsed (a partial line fails the test here)."""
    lines = (Path(run) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def epochs_of(run: Path) -> list[int]:
    return [r["epoch"] for r in read_metrics(run)]


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(directory) / "model.safetensors"))


def max_weight_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0 for k in a)


def without_seconds(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "seconds"}


def subprocess_env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def cli(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=True)


@pytest.fixture(scope="module")
def cli_run(tiny_corpus, cache_dir, tmp_path_factory) -> Path:
    """`deramos-train --data D --preset tiny --epochs 2 --out RUN` (default seed 1984)."""
    run = tmp_path_factory.mktemp("cli") / "RUN"
    result = cli(["--data", str(tiny_corpus), "--preset", "tiny", "--epochs", "2", "--out", str(run),
                  "--cache-dir", str(cache_dir), "--no-progress"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"run saved in {run}" in result.output
    return run


# ---------------------------------------------------------------------------------------------
# 1. run layout

def test_cli_run_layout(cli_run):
    config = json.loads((cli_run / "config.json").read_text())
    assert config["model"]["name"] == "tiny"
    assert config["training"]["epochs"] == 2 and config["training"]["loss"] == "dera"

    records = read_metrics(cli_run)
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert {"epoch", "train_loss", "val_loss", "dev", "seconds"} <= set(r)
        assert math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"])
        assert r["train_loss"] > 0 and r["val_loss"] > 0
        for level in LEVELS:
            for aspect in ASPECTS:
                assert set(r["dev"][level][aspect]) == set(METRICS)
                for name in ("SRCC", "LCC", "KTAU"):
                    value = r["dev"][level][aspect][name]
                    assert math.isnan(value) or -1.0 <= value <= 1.0
        assert r["dev"]["utterance"]["MI"]["SRCC"] == r["dev"]["utterance"]["MI"]["SRCC"]  # key path exists
        unrelated = r["dev"]["unrelated"]
        assert set(unrelated) == {"TA_mean", "share_at_most_2"}
        assert 1.0 <= unrelated["TA_mean"] <= 5.0 and 0.0 <= unrelated["share_at_most_2"] <= 1.0

    for name in CHECKPOINTS:
        directory = cli_run / name
        assert sorted(p.name for p in directory.iterdir() if p.name.startswith(("config", "model", "tokenizer"))) \
            == ["config.json", "model.safetensors", "tokenizer.json"], name
        meta = json.loads((directory / "config.json").read_text())
        assert meta["model"]["name"] == "tiny" and meta["epoch"] in (1, 2)
        json.loads((directory / "tokenizer.json").read_text())
        assert weights(directory)  # a readable safetensors file with tensors in it
    assert json.loads((cli_run / "last" / "config.json").read_text())["epoch"] == 2
    assert json.loads((cli_run / "last" / "train_state.json").read_text())["epoch"] == 2

    pickles = [p for p in cli_run.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES]
    assert pickles == []
    leftovers = [p.name for p in cli_run.iterdir() if p.name.endswith((".tmp", ".old"))]
    assert leftovers == []


def test_selection_checkpoints_follow_their_rules(cli_run):
    records = read_metrics(cli_run)
    rules = {
        "best_loss": lambda r: -r["val_loss"],
        "best_mi_sys": lambda r: r["dev"]["system"]["MI"]["SRCC"],
        "best_combined": lambda r: (r["dev"]["utterance"]["MI"]["SRCC"] + r["dev"]["system"]["TA"]["SRCC"]) / 2,
    }
    last = weights(cli_run / "last")
    for name, score in rules.items():
        scores = [-math.inf if math.isnan(score(r)) else score(r) for r in records]
        expected_epoch = records[scores.index(max(scores))]["epoch"]   # first best (strict improvement)
        meta = json.loads((cli_run / name / "config.json").read_text())
        assert meta["selection"] == name
        assert meta["epoch"] == expected_epoch, name
        if expected_epoch == 2:
            assert max_weight_diff(weights(cli_run / name), last) == 0.0
    # best_combined_unrelated: best_combined among the epochs whose dev clips give the unrelated
    # prompts TA <= 2 on >= 90 %; no such epoch, no checkpoint (a pick that gives up says so)
    eligible = [r for r in records if r["dev"]["unrelated"]["share_at_most_2"] >= 0.9]
    directory = cli_run / "best_combined_unrelated"
    if not eligible:
        assert not directory.exists()
    else:
        combined = [rules["best_combined"](r) for r in eligible]
        assert json.loads((directory / "config.json").read_text())["epoch"] == eligible[combined.index(max(combined))]["epoch"]
    # a checkpoint loads back into a model with exactly the stored weights
    model = load_checkpoint(cli_run, "last")
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in last.items())


# ---------------------------------------------------------------------------------------------
# 2. determinism

def test_same_seed_same_run_other_seed_differs(cli_run, tiny_corpus, cache_dir, tmp_path):
    again = run_training(targs(tiny_corpus, tmp_path / "again", cache_dir))
    assert (again / "last" / "model.safetensors").read_bytes() == (cli_run / "last" / "model.safetensors").read_bytes()
    assert [without_seconds(r) for r in read_metrics(again)] == [without_seconds(r) for r in read_metrics(cli_run)]

    other = run_training(targs(tiny_corpus, tmp_path / "other", cache_dir, seed=7))
    assert max_weight_diff(weights(other / "last"), weights(cli_run / "last")) > 1e-4
    assert [r["val_loss"] for r in read_metrics(other)] != [r["val_loss"] for r in read_metrics(cli_run)]


# ---------------------------------------------------------------------------------------------
# 3. resume

def test_resume_equals_uninterrupted_run(tiny_corpus, cache_dir, tmp_path):
    # The LR schedule spans --epochs, so the interruption is a 4-epoch run stopped after epoch 2.
    run = run_training(targs(tiny_corpus, tmp_path / "resumed", cache_dir, epochs=4, stop_after=2))
    assert epochs_of(run) == [1, 2]
    first_lines = (run / "metrics.jsonl").read_text().splitlines()

    run_training(targs(tiny_corpus, run, cache_dir, epochs=4))
    assert epochs_of(run) == [1, 2, 3, 4]
    assert (run / "metrics.jsonl").read_text().splitlines()[:2] == first_lines
    assert json.loads((run / "last" / "train_state.json").read_text())["epoch"] == 4

    straight = run_training(targs(tiny_corpus, tmp_path / "straight", cache_dir, epochs=4))
    assert max_weight_diff(weights(run / "last"), weights(straight / "last")) <= 1e-6
    assert [without_seconds(r) for r in read_metrics(run)] == [without_seconds(r) for r in read_metrics(straight)]


def test_rerun_of_a_finished_run_adds_nothing(cli_run, tiny_corpus, cache_dir, tmp_path):
    run = tmp_path / "done"
    shutil.copytree(cli_run, run)
    before = (run / "last" / "model.safetensors").read_bytes()
    run_training(targs(tiny_corpus, run, cache_dir, epochs=2))
    assert epochs_of(run) == [1, 2]
    assert (run / "last" / "model.safetensors").read_bytes() == before


def test_sigkill_mid_epoch_then_resume(tiny_corpus, cache_dir, tmp_path):
    run = tmp_path / "killed"
    log_file = tmp_path / "train.log"
    cmd = [sys.executable, "-m", "deramos.training.train", "--data", str(tiny_corpus), "--preset", "tiny",
           "--epochs", "60", "--out", str(run), "--cache-dir", str(cache_dir), "--no-progress"]
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=subprocess_env(), cwd=tmp_path)
        try:
            deadline = time.monotonic() + 90
            metrics = run / "metrics.jsonl"
            while time.monotonic() < deadline and proc.poll() is None:
                if metrics.exists() and metrics.read_text().count("\n") >= 1:
                    break
                time.sleep(0.05)
            assert proc.poll() is None, f"training ended before it was killed:\n{log_file.read_text()}"
            assert metrics.exists(), f"no epoch finished in time:\n{log_file.read_text()}"
            time.sleep(0.2)   # well inside the next epoch
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == -signal.SIGKILL

    done = json.loads((run / "last" / "train_state.json").read_text())["epoch"]
    assert done >= 1
    # every line parses, no epoch twice, none beyond the saved state; the saved epoch's own line may
    # still be missing if the kill came between the `last/` swap and the metrics append (resume restores it)
    seen = epochs_of(run)
    assert seen in (list(range(1, done + 1)), list(range(1, done))), (seen, done)

    run_training(targs(tiny_corpus, run, cache_dir, epochs=done + 1))
    assert epochs_of(run) == list(range(1, done + 2))      # resumed, no duplicates
    assert json.loads((run / "last" / "train_state.json").read_text())["epoch"] == done + 1


def test_resume_survives_a_partial_metrics_line(cli_run, tiny_corpus, cache_dir, tmp_path):
    """A metrics line torn by a crash mid-write (was: JSONDecodeError on resume; fixed in 209be4c)."""
    run = tmp_path / "partial"
    shutil.copytree(cli_run, run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    run_training(targs(tiny_corpus, run, cache_dir, epochs=3))
    assert epochs_of(run) == [1, 2, 3]
    assert without_seconds(read_metrics(run)[1]) == without_seconds(read_metrics(cli_run)[1])


def test_last_without_train_state_restarts_cleanly(cli_run, tiny_corpus, cache_dir, tmp_path):
    """`last/` without resume state (before 209be4c a crash between save_checkpoint(last) and
    save_train_state left exactly this): the run starts over, without duplicate epochs."""
    run = tmp_path / "torn"
    shutil.copytree(cli_run, run)
    for name in ("train_state.json", "train_state.safetensors"):
        (run / "last" / name).unlink()
    run_training(targs(tiny_corpus, run, cache_dir, epochs=3))
    assert epochs_of(run) == [1, 2, 3]
    assert max_weight_diff(weights(run / "last"), weights(cli_run / "last")) > 0.0   # epoch 3 of a new run


def test_crash_inside_replace_dir(cli_run, tiny_corpus, cache_dir, tmp_path):
    """Killed between the two renames of checkpoint._replace_dir: no RUN/last, the previous one
    at last.old (was: restart at epoch 1 with duplicate epochs; fixed in 209be4c)."""
    run = tmp_path / "swapping"
    shutil.copytree(cli_run, run)
    os.replace(run / "last", run / "last.old")
    shutil.copytree(run / "last.old", run / "last.tmp",
                    ignore=shutil.ignore_patterns("train_state.*"))
    run_training(targs(tiny_corpus, run, cache_dir, epochs=3))
    assert epochs_of(run) == [1, 2, 3]
    assert not (run / "last.old").exists() and not (run / "last.tmp").exists()
    assert (run / "metrics.jsonl").read_text().splitlines()[:2] == (cli_run / "metrics.jsonl").read_text().splitlines()


def test_crash_between_train_state_and_metrics_line(cli_run, tiny_corpus, cache_dir, tmp_path):
    """Epoch N saved, its metrics line not yet written (was: a gap in metrics.jsonl; fixed in 209be4c)."""
    run = tmp_path / "gap"
    shutil.copytree(cli_run, run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n")     # epoch 2 saved, its line not yet written
    run_training(targs(tiny_corpus, run, cache_dir, epochs=3))
    assert epochs_of(run) == [1, 2, 3]
    assert without_seconds(read_metrics(run)[1]) == without_seconds(read_metrics(cli_run)[1])


# ---------------------------------------------------------------------------------------------
# 4. torchrun (DDP, gloo on CPU)

def test_torchrun_two_processes(tiny_corpus, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "deramos.training.train", "--data", str(tiny_corpus), "--preset", "tiny", "--epochs", "1",
           "--max-steps-per-epoch", "2", "--out", str(run), "--no-progress",
           "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=subprocess_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert epochs_of(run) == [1]
    assert proc.stdout.count("run saved in") == 1          # rank 0 only
    assert proc.stderr.count("epoch   1") == 1
    for name in CHECKPOINTS:
        assert (run / name / "model.safetensors").is_file() and (run / name / "config.json").is_file()
    assert json.loads((run / "last" / "train_state.json").read_text())["epoch"] == 1
    assert not [p for p in run.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES]


def test_torchrun_last_batch_smaller_than_world(tiny_corpus, tmp_path):
    n_train = len((tiny_corpus / "sets" / "train_mos_list.txt").read_text().split())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "deramos.training.train", "--data", str(tiny_corpus), "--preset", "tiny", "--epochs", "1",
           "--batch-size", str(n_train - 1), "--out", str(tmp_path / "ddp"), "--no-progress",
           "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env(),
                            cwd=tmp_path, start_new_session=True)
    try:
        returncode = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.terminate()                       # torchrun stops the workers it started on SIGTERM
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        returncode = None
    assert returncode == 0
    assert epochs_of(tmp_path / "ddp") == [1]


# ---------------------------------------------------------------------------------------------
# 5. loss baselines

def test_loss_kinds_train_and_differ(tiny_corpus, cache_dir, tmp_path):
    heads = {}
    for kind in ("pointwise", "distribution", "pairwise", "dera"):
        run = run_training(targs(tiny_corpus, tmp_path / kind, cache_dir, loss=kind, epochs=1, max_steps_per_epoch=2))
        (record,) = read_metrics(run)
        assert math.isfinite(record["train_loss"]) and math.isfinite(record["val_loss"])
        assert json.loads((run / "config.json").read_text())["training"]["loss"] == kind
        heads[kind] = {k: v for k, v in weights(run / "last").items() if k.startswith("heads.")}
    kinds = list(heads)
    for i, a in enumerate(kinds):
        for b in kinds[i + 1:]:
            assert max_weight_diff(heads[a], heads[b]) > 0.0, (a, b)


def test_unknown_loss_is_a_usage_error(tiny_corpus, tmp_path):
    result = cli(["--data", str(tiny_corpus), "--preset", "tiny", "--epochs", "1", "--out", str(tmp_path / "x"),
                  "--loss", "bogus", "--no-progress"])
    assert result.exit_code == 2
    assert "bogus" in result.output and "--loss" in result.output
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="bogus"):
        run_training(targs(tiny_corpus, tmp_path / "y", tmp_path / "c", loss="bogus"))


def test_counterfactual_prompts_train_the_ta_branch_on_them(tiny_corpus, cache_dir, tmp_path, monkeypatch):
    seen = []
    original = train_mod.Featurizer.heads

    def recording_heads(self, waves, prompts, counterfactual=None):
        out = original(self, waves, prompts, counterfactual)
        if self.model.training:
            seen.append((list(prompts), counterfactual, out))
        return out

    monkeypatch.setattr(train_mod.Featurizer, "heads", recording_heads)
    run = run_training(targs(tiny_corpus, tmp_path / "cf", cache_dir, epochs=1, max_steps_per_epoch=2,
                             counterfactual_prompts=2))
    assert len(seen) == 2
    meta = [json.loads(line) for line in (tiny_corpus / "synth_meta.jsonl").read_text().splitlines()]
    own_prompts = {r["prompt"] for r in meta}
    for prompts, counterfactual, out in seen:
        assert len(counterfactual) == len(prompts) and all(c not in own_prompts for c in counterfactual)
        assert out["cf_ta_logits"].shape == out["ta_logits"].shape and out["cf_ta_logits"].requires_grad
    baseline = run_training(targs(tiny_corpus, tmp_path / "plain", cache_dir, epochs=1, max_steps_per_epoch=2))
    ta_a = {k: v for k, v in weights(run / "last").items() if k.startswith("heads.ta.")}
    ta_b = {k: v for k, v in weights(baseline / "last").items() if k.startswith("heads.ta.")}
    assert max_weight_diff(ta_a, ta_b) > 0.0
    assert json.loads((run / "config.json").read_text())["training"]["counterfactual_prompts"] == 2


def test_counterfactual_prompts_need_a_synthetic_corpus(tiny_corpus, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_corpus, data)
    (data / "synth_meta.jsonl").unlink()
    with pytest.raises(TrainingError, match=r"^--counterfactual-prompts: .*synth_meta.jsonl: not found; counterfactual "
                                            r"prompts need a corpus made by deramos-synth or deramos-realmusic$"):
        run_training(targs(data, tmp_path / "lib", tmp_path / "cache", epochs=1, counterfactual_prompts=2))
    result = cli(["--data", str(data), "--preset", "tiny", "--epochs", "1", "--out", str(tmp_path / "run"),
                  "--cache-dir", str(tmp_path / "cache"), "--counterfactual-prompts", "2", "--no-progress"])
    assert result.exit_code == 2
    assert len(result.output.splitlines()) == 1 and "Traceback" not in result.output
    assert result.output.startswith("error: --counterfactual-prompts:")
    assert "synth_meta.jsonl: not found; counterfactual prompts need a corpus made by deramos-synth" in result.output
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ---------------------------------------------------------------------------------------------
# 6. early stopping

def test_early_stopping(tiny_corpus, cache_dir, tmp_path, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="deramos.progress"):
        run = run_training(targs(tiny_corpus, tmp_path / "es", cache_dir, epochs=5, patience=1, lr=1e-12))
    assert capsys.readouterr() == ("", "")     # the library reports to its logger, never to the terminal
    lines = [r.getMessage() for r in caplog.records if r.name == "deramos.progress"]
    records = read_metrics(run)
    assert lines[-1] == "early stop: no validation improvement for 1 epochs"
    assert [line.split()[:2] for line in lines[:-1]] == [["epoch", str(r["epoch"])] for r in records]
    assert f"val {records[0]['val_loss']:.4f}" in lines[0]
    assert 2 <= len(records) < 5
    # it stopped right after the first epoch that did not improve on the best validation loss
    best = min(r["val_loss"] for r in records[:-1])
    assert records[-1]["val_loss"] >= best
    assert all(records[i]["val_loss"] < min(r["val_loss"] for r in records[:i]) for i in range(1, len(records) - 1))


# ---------------------------------------------------------------------------------------------
# 7. a missing wav

def test_missing_wav_is_reported_and_skipped(tiny_corpus, cache_dir, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(tiny_corpus, data)
    train_list = (data / "sets" / "train_mos_list.txt").read_text().splitlines()
    missing = train_list[0].split(",")[0]
    (data / "wav" / missing).unlink()
    with caplog.at_level(logging.WARNING, logger="deramos"):
        run = run_training(targs(data, tmp_path / "run", cache_dir, epochs=1, max_steps_per_epoch=1))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(missing in message for message in warnings), warnings
    assert epochs_of(run) == [1]
    assert (run / "last" / "model.safetensors").is_file()


def test_missing_dev_list_is_a_clean_error(tiny_corpus, tmp_path):
    """(was: FileNotFoundError traceback; fixed in 209be4c) The library raises TrainingError, the
    CLI says it in one line."""
    data = tmp_path / "data"
    shutil.copytree(tiny_corpus, data, ignore=shutil.ignore_patterns("wav"))
    (data / "wav").symlink_to(tiny_corpus / "wav")
    (data / "sets" / "dev_mos_list.txt").unlink()
    with pytest.raises(TrainingError) as raised:
        run_training(targs(data, tmp_path / "lib", tmp_path / "cache", epochs=1))
    assert str(raised.value) == f"set list not found: {data / 'sets' / 'dev_mos_list.txt'}"
    result = cli(["--data", str(data), "--preset", "tiny", "--epochs", "1", "--out", str(tmp_path / "run"),
                  "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.output == f"error: {raised.value}\n"
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_an_encoder_directory_without_a_model_is_a_clean_error(tiny_corpus, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for option in ("audio_encoder", "text_encoder"):
        with pytest.raises(TrainingError, match=rf"^{empty}.*config\.json.*\(building the tiny model\)$"):
            run_training(targs(tiny_corpus, tmp_path / "lib", tmp_path / "cache", **{option: str(empty)}))
        result = cli(["--data", str(tiny_corpus), "--preset", "tiny", "--out", str(tmp_path / "run"),
                      f"--{option.replace('_', '-')}", str(empty), "--no-progress"])
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), repr(result.exception)
        assert result.output.startswith(f"error: {empty}") and "(building the tiny model)" in result.output
        assert result.output.count("\n") == 1
    assert not (tmp_path / "run").exists() and not (tmp_path / "lib").exists()


# ---------------------------------------------------------------------------------------------
# 9. frozen-encoder feature cache

def test_frozen_encoder_feature_cache(tiny_corpus, tmp_path, monkeypatch, caplog):
    def tiny_frozen():
        cfg = config_mod.tiny()
        cfg.audio.frozen = True
        return cfg

    monkeypatch.setitem(config_mod.PRESETS, "tiny", tiny_frozen)
    cache = tmp_path / "cache"
    counts = []
    original = train_mod.record_epoch

    def counting_record_epoch(*args, **kwargs):
        counts.append(len(list(cache.rglob("*.safetensors"))))
        return original(*args, **kwargs)

    monkeypatch.setattr(train_mod, "record_epoch", counting_record_epoch)
    run = run_training(targs(tiny_corpus, tmp_path / "run", cache, epochs=2))
    assert json.loads((run / "config.json").read_text())["model"]["audio"]["frozen"] is True
    n_train = len((tiny_corpus / "sets" / "train_mos_list.txt").read_text().split())
    n_dev = len((tiny_corpus / "sets" / "dev_mos_list.txt").read_text().split())
    assert counts[0] >= n_train + n_dev          # every train and dev clip's frames (+ prompt tokens)
    assert counts[1] == counts[0]                # the second epoch is served from the cache
    assert not list(cache.rglob("*.tmp"))

    # corrupt one audio entry: it is reported, recomputed, and training goes on
    by_identity = {d: list(d.rglob("*.safetensors")) for d in cache.iterdir() if d.is_dir()}
    audio_dir = max(by_identity, key=lambda d: len(by_identity[d]))
    victim = sorted(by_identity[audio_dir])[0]
    victim.write_bytes(b"\x00garbage, not a safetensors file" * 4)
    counts.clear()
    with caplog.at_level(logging.WARNING, logger="deramos"):
        run_training(targs(tiny_corpus, run, cache, epochs=3))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("corrupt" in m and victim.name in m for m in warnings), warnings
    assert epochs_of(run) == [1, 2, 3]
    assert counts == [len(list(cache.rglob("*.safetensors")))] and counts[0] == sum(map(len, by_identity.values()))
    assert set(load_file(str(victim))) == {"value"}   # rewritten as a valid entry


def test_init_heads_copies_every_tensor_that_fits(export_run):
    import torch

    from deramos.model.checkpoint import load_checkpoint
    from deramos.model.config import preset
    from deramos.model.network import DeRAMOS
    from deramos.training.train import start_from_heads

    trained = load_checkpoint(export_run).state_dict()
    same = DeRAMOS(preset("tiny"), seed=11)
    assert start_from_heads(same, str(export_run)) == []
    for name, value in same.state_dict().items():
        if name.startswith("heads."):
            torch.testing.assert_close(value, trained[name], atol=0, rtol=0)
    wider = preset("tiny")
    wider.heads.ta_mlp = (24, 8)      # TA's MLP of another shape stays as initialised
    other = DeRAMOS(wider, seed=11)
    left = start_from_heads(other, str(export_run))
    assert left and all(name.startswith("heads.ta.mlp.") for name in left)
    torch.testing.assert_close(other.state_dict()["heads.mi.pool.score.weight"], trained["heads.mi.pool.score.weight"])


def test_dev_unrelated_prompts_are_fixed_and_never_the_evaluations():
    from deramos.data.realmusic.freeform import held_out_texts, normalised
    from deramos.training.train import dev_unrelated_prompts

    prompts = dev_unrelated_prompts(300)
    assert prompts == dev_unrelated_prompts(300)               # the same every epoch and run
    assert prompts[:50] == dev_unrelated_prompts(50)
    assert len(set(prompts)) > 200                             # drawn, not one prompt repeated
    assert held_out_texts() and not {normalised(p) for p in prompts} & held_out_texts()

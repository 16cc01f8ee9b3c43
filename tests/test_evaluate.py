"""deramos-eval: JSON metrics, the answer file, ids-only lists and error handling, on a `tiny`
run trained on the session's synthetic corpus."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import spearmanr

from deramos.data.musiceval import read_answer, read_split, read_system_mos
from deramos.runtime.errors import EvaluationError
from deramos.training.evaluate import evaluate_checkpoint, main
from deramos.training.train import TrainArgs, run_training

pytestmark = pytest.mark.usefixtures("torch_single_thread")

LEVELS, ASPECTS, METRICS = ("utterance", "system"), ("MI", "TA"), ("MSE", "LCC", "SRCC", "KTAU")


@pytest.fixture(scope="module")
def run_dir(tiny_corpus, tmp_path_factory):
    base = tmp_path_factory.mktemp("eval_run")
    return run_training(TrainArgs(data=str(tiny_corpus), out=str(base / "RUN"), preset="tiny", epochs=2,
                                  cache_dir=str(base / "cache"), progress=False))


def deramos_eval(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=True)


def list_ids(path) -> list[str]:
    return [line.split(",")[0].removesuffix(".wav") for line in path.read_text().splitlines() if line.strip()]


def test_json_metrics_and_answer_file(tiny_corpus, run_dir, tmp_path):
    answer = tmp_path / "answer.txt"
    result = deramos_eval(["--data", str(tiny_corpus), "--checkpoint", str(run_dir), "--split", "test",
                           "--json", "--answer", str(answer)])
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads(result.stdout)
    test_ids = list_ids(tiny_corpus / "sets" / "test_mos_list.txt")
    assert report["split"] == "test" and report["clips"] == len(test_ids) and report["problems"] == []
    assert report["checkpoint"].endswith("best_combined")
    for level in LEVELS:
        for aspect in ASPECTS:
            assert set(report["metrics"][level][aspect]) == set(METRICS)
            assert all(isinstance(v, float) for v in report["metrics"][level][aspect].values())

    # the answer file: one `wavid,MI,TA` line per test clip, ids without .wav, scores in [1, 5]
    lines = answer.read_text().splitlines()
    assert len(lines) == len(test_ids)
    for line in lines:
        wav_id, mi, ta = line.split(",")
        assert not wav_id.endswith(".wav")
        assert 1.0 <= float(mi) <= 5.0 and 1.0 <= float(ta) <= 5.0
    answers = read_answer(answer)
    assert sorted(answers) == sorted(test_ids)

    # metrics recomputed from the answer file with scipy equal the reported ones
    clips = {c.wav_id: c for c in read_split(tiny_corpus, "test").clips}
    truth = read_system_mos(tiny_corpus)
    for column, aspect in enumerate(ASPECTS):
        per_system: dict[str, list[float]] = {}
        for wav_id, scores in answers.items():
            per_system.setdefault(clips[wav_id].system_id, []).append(scores[column])
        systems = sorted(per_system)
        predicted = [np.mean(per_system[s]) for s in systems]
        expected = spearmanr(predicted, [truth[s][aspect] for s in systems]).statistic
        assert abs(report["metrics"]["system"][aspect]["SRCC"] - expected) < 1e-9, aspect

        ids = sorted(answers)
        true = [clips[i].mi if aspect == "MI" else clips[i].ta for i in ids]
        utt = spearmanr([answers[i][column] for i in ids], true).statistic
        assert abs(report["metrics"]["utterance"][aspect]["SRCC"] - utt) < 1e-9, aspect
        mse = float(np.mean((np.array([answers[i][column] for i in ids]) - np.array(true)) ** 2))
        assert abs(report["metrics"]["utterance"][aspect]["MSE"] - mse) < 1e-5, aspect


def test_eval_of_last_matches_training_validation(tiny_corpus, run_dir):
    """deramos-eval on the dev split scores `last/` as the training run's validation did."""
    result = evaluate_checkpoint(str(tiny_corpus), str(run_dir), "dev", kind="last", progress=False)
    assert result["checkpoint"].endswith("last")
    record = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    for level in LEVELS:
        for aspect in ASPECTS:
            assert result["metrics"][level][aspect]["MSE"] == pytest.approx(record["dev"][level][aspect]["MSE"], abs=1e-5)


def test_text_table(tiny_corpus, run_dir):
    result = deramos_eval(["--data", str(tiny_corpus), "--checkpoint", str(run_dir / "best_loss"), "--split", "dev"])
    assert result.exit_code == 0, (result.output, result.exception)
    out = result.stdout
    n_dev = len(list_ids(tiny_corpus / "sets" / "dev_mos_list.txt"))
    assert out.splitlines()[0] == f"{run_dir / 'best_loss'} on dev: {n_dev} clips"
    for level in LEVELS:
        for aspect in ASPECTS:
            assert any(line.split()[:2] == [level, aspect] for line in out.splitlines()), (level, aspect)
    assert "SRCC" in out and "KTAU" in out


def test_ids_only_list(tiny_corpus, run_dir, tmp_path):
    ids = list_ids(tiny_corpus / "sets" / "test_mos_list.txt")
    id_list = tmp_path / "ids.txt"
    id_list.write_text("".join(f"{i}.wav\n" for i in ids))
    answer = tmp_path / "answer.txt"
    result = deramos_eval(["--data", str(tiny_corpus), "--checkpoint", str(run_dir), "--list", str(id_list),
                           "--json", "--answer", str(answer)])
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads(result.stdout)
    assert report["clips"] == len(ids)
    assert report["metrics"].get("utterance", {}) == {}          # no clip scores to compare with
    assert set(report["metrics"]["system"]) == set(ASPECTS)      # system truth is still there
    answers = read_answer(answer)
    assert sorted(answers) == sorted(ids)
    assert all(1.0 <= mi <= 5.0 and 1.0 <= ta <= 5.0 for mi, ta in answers.values())

    # the same clips scored with their labels give the same predictions
    labelled = tmp_path / "labelled.txt"
    deramos_eval(["--data", str(tiny_corpus), "--checkpoint", str(run_dir), "--split", "test", "--answer", str(labelled)])
    for wav_id, (mi, ta) in read_answer(labelled).items():
        assert answers[wav_id] == pytest.approx((mi, ta), abs=2e-6)

    text = deramos_eval(["--data", str(tiny_corpus), "--checkpoint", str(run_dir), "--list", str(id_list)])
    assert text.exit_code == 0
    assert not any(line.startswith("utterance") for line in text.stdout.splitlines())


def test_nonexistent_checkpoint_is_a_usage_error(tiny_corpus):
    result = deramos_eval(["--data", str(tiny_corpus), "--checkpoint", "/nonexistent", "--split", "test"])
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert "/nonexistent" in result.output and "does not exist" in result.output


def test_directory_without_checkpoint_is_a_clean_error(tiny_corpus, tmp_path):
    result = deramos_eval(["--data", str(tiny_corpus), "--checkpoint", str(tmp_path), "--split", "test"])
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.output.startswith(f"error: {tmp_path}: no checkpoint here") and result.output.count("\n") == 1
    with pytest.raises(EvaluationError, match=r"^\S+: no checkpoint here \(expected model.safetensors, "
                                              r"or a run directory with best_combined/best_mi_sys/best_loss/last\)$"):
        evaluate_checkpoint(str(tiny_corpus), str(tmp_path), progress=False)


def test_unknown_split_is_a_clean_error(tiny_corpus, run_dir):
    with pytest.raises(EvaluationError) as raised:
        evaluate_checkpoint(str(tiny_corpus), str(run_dir), "nosuch", progress=False)
    assert str(raised.value) == f"set list not found: {tiny_corpus / 'sets' / 'nosuch_mos_list.txt'}"
    result = deramos_eval(["--data", str(tiny_corpus), "--checkpoint", str(run_dir), "--split", "nosuch"])
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.output == f"error: {raised.value}\n"

"""deramos-pretrain: attribute-tagging pre-training of a from-scratch audio encoder, and
deramos-train --init-audio-encoder starting from it."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from deramos.data.synth import FAMILIES
from deramos.model.audio_encoder import AudioEncoder
from deramos.model.config import preset
from deramos.runtime.errors import TrainingError
from deramos.training.pretrain import CLASSES, PRETRAINABLE, PretrainArgs, attribute_labels, pretrain
from deramos.training.pretrain import main as pretrain_main
from deramos.training.train import TrainArgs, run_training
from deramos.training.train import main as train_main

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def pretrained(tiny_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pre") / "PRE"
    result = CliRunner().invoke(pretrain_main, ["--data", str(tiny_corpus), "--out", str(out), "--preset", "tiny",
                                                "--epochs", "2", "--no-progress"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"pre-trained encoder saved in {out}" in result.output
    return out


def test_labels_are_the_rendered_attributes(tiny_corpus):
    labels = attribute_labels(tiny_corpus)
    meta = [json.loads(line) for line in (tiny_corpus / "synth_meta.jsonl").read_text().splitlines()]
    assert set(labels) == {r["wav"] for r in meta}
    for record in meta:
        heard = record["rendered_attributes"]
        got = {kind: CLASSES[kind][labels[record["wav"]][kind]] for kind in CLASSES}
        assert got["instrument"] == heard["instrument"] and got["genre"] == heard["genre"]
        assert got["mood"] == heard["mode"] and got["dynamics"] == heard["dynamics"]
        assert got["tempo"] == ("slow" if heard["tempo_bpm"] < 86 else "moderate" if heard["tempo_bpm"] < 121 else "fast")
        severity = dict(zip(FAMILIES, labels[record["wav"]]["severity"]))
        assert severity == {f: record["degradations"].get(f, 0.0) for f in FAMILIES}


def test_pretrain_writes_the_encoder_and_its_dev_accuracy(pretrained):
    state = load_file(str(pretrained / "audio_encoder.safetensors"))
    fresh = AudioEncoder(preset("tiny").audio).state_dict()
    assert set(state) == set(fresh)
    assert any(not torch.equal(state[k], fresh[k]) for k in fresh if fresh[k].is_floating_point())
    report = json.loads((pretrained / "pretrain.json").read_text())
    assert [e["epoch"] for e in report["epochs"]] == [1, 2]
    assert all(0.0 <= e["dev_severity_mae"] <= 1.0 for e in report["epochs"])
    for epoch in report["epochs"]:
        assert set(epoch["dev_accuracy"]) == set(CLASSES)
        assert all(0.0 <= a <= 1.0 for a in epoch["dev_accuracy"].values())
    assert report["model"]["name"] == "tiny" and report["arguments"]["epochs"] == 2


def test_train_starts_from_the_pretrained_encoder(pretrained, tiny_corpus, tmp_path):
    args = TrainArgs(data=str(tiny_corpus), out=str(tmp_path / "run"), preset="tiny", epochs=1, lr=1e-12,
                     max_steps_per_epoch=1, cache_dir=str(tmp_path / "cache"), progress=False,
                     init_audio_encoder=str(pretrained))
    run = run_training(args)
    trained = load_file(str(run / "last" / "model.safetensors"))
    start = load_file(str(pretrained / "audio_encoder.safetensors"))
    for key, value in start.items():
        if value.is_floating_point() and "running" not in key:    # BatchNorm statistics move in train mode
            assert torch.allclose(trained[f"audio_encoder.{key}"], value, atol=1e-6), key


def test_frozen_pretrained_encoder_stays_exactly_as_loaded(pretrained, tiny_corpus, tmp_path):
    args = TrainArgs(data=str(tiny_corpus), out=str(tmp_path / "run"), preset="tiny", epochs=1, max_steps_per_epoch=2,
                     cache_dir=str(tmp_path / "cache"), progress=False, init_audio_encoder=str(pretrained),
                     freeze_audio_encoder=True)
    run = run_training(args)
    trained = load_file(str(run / "last" / "model.safetensors"))
    start = load_file(str(pretrained / "audio_encoder.safetensors"))
    assert all(torch.equal(trained[f"audio_encoder.{k}"], v) for k, v in start.items())    # BatchNorm stats too
    assert json.loads((run / "last" / "config.json").read_text())["model"]["audio"]["frozen"] is True


def test_the_encoder_learns_at_its_share_of_the_learning_rate(pretrained, tiny_corpus, tmp_path):
    args = TrainArgs(data=str(tiny_corpus), out=str(tmp_path / "run"), preset="tiny", epochs=2, lr=1e-3,
                     max_steps_per_epoch=2, cache_dir=str(tmp_path / "cache"), progress=False,
                     init_audio_encoder=str(pretrained), audio_encoder_lr_scale=0.1)
    run = run_training(args)
    heads, encoder = json.loads((run / "last" / "train_state.json").read_text())["param_groups"]
    assert (heads["lr_scale"], encoder["lr_scale"]) == (1.0, 0.1)
    assert heads["lr"] > 0 and encoder["lr"] == pytest.approx(0.1 * heads["lr"], rel=1e-9)
    assert len(encoder["params"]) == len(list(AudioEncoder(preset("tiny").audio).parameters()))


def test_an_encoder_of_another_preset_is_refused(pretrained, tiny_corpus, tmp_path):
    result = CliRunner().invoke(train_main, ["--data", str(tiny_corpus), "--preset", "small", "--epochs", "1",
                                             "--out", str(tmp_path / "run"), "--init-audio-encoder", str(pretrained),
                                             "--no-progress"])
    assert result.exit_code == 2
    assert len(result.output.splitlines()) == 1 and "Traceback" not in result.output
    assert result.output.startswith("error: --init-audio-encoder:") and "an encoder of another configuration" in result.output


def test_a_truncated_pretrained_encoder_is_one_line(pretrained, tiny_corpus, tmp_path):
    damaged = tmp_path / "pre"
    shutil.copytree(pretrained, damaged)
    weights = damaged / "audio_encoder.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result = CliRunner().invoke(train_main, ["--data", str(tiny_corpus), "--preset", "tiny", "--epochs", "1",
                                             "--out", str(tmp_path / "run"), "--init-audio-encoder", str(damaged),
                                             "--no-progress"])
    assert result.exit_code == 2 and "Traceback" not in result.output and len(result.output.splitlines()) == 1
    assert result.output.startswith(f"error: --init-audio-encoder: {weights}: not a readable safetensors file (truncated")


def test_pretrain_needs_a_synthetic_corpus(tiny_corpus, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_corpus, data)
    (data / "synth_meta.jsonl").unlink()
    with pytest.raises(TrainingError) as raised:
        pretrain(PretrainArgs(data=str(data), out=str(tmp_path / "lib"), preset="tiny", progress=False))
    assert str(raised.value) == f"{data / 'synth_meta.jsonl'}: not found; pre-training needs a corpus made by deramos-synth"
    result = CliRunner().invoke(pretrain_main, ["--data", str(data), "--out", str(tmp_path / "pre"), "--preset", "tiny",
                                                "--no-progress"])
    assert result.exit_code == 2
    assert result.output == f"error: {raised.value}\n"
    assert not (tmp_path / "pre" / "audio_encoder.safetensors").exists()
    assert not (tmp_path / "lib").exists()


def test_only_from_scratch_encoders_are_pretrained(tiny_corpus, tmp_path):
    assert PRETRAINABLE == ("small", "tiny")      # paper's MuQ encoder comes pre-trained and frozen
    with pytest.raises(TrainingError, match=r"^preset 'paper' uses a pretrained or frozen audio encoder; "
                                            r"nothing to pre-train$"):
        pretrain(PretrainArgs(data=str(tiny_corpus), out=str(tmp_path / "pre"), preset="paper", progress=False))
    result = CliRunner().invoke(pretrain_main, ["--data", str(tiny_corpus), "--out", str(tmp_path / "pre"),
                                                "--preset", "paper"])
    assert result.exit_code == 2 and "'paper' is not one of 'small', 'tiny'" in result.output
    assert not (tmp_path / "pre").exists()


def test_pretrain_reports_each_epoch_to_its_logger(pretrained, tiny_corpus, tmp_path, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="deramos.progress"):
        out = pretrain(PretrainArgs(data=str(tiny_corpus), out=str(tmp_path / "pre"), preset="tiny", epochs=1,
                                    progress=False))
    assert capsys.readouterr() == ("", "")
    (line,) = [r.getMessage() for r in caplog.records if r.name == "deramos.progress"]
    (epoch,) = json.loads((out / "pretrain.json").read_text())["epochs"]
    assert line.startswith(f"epoch   1  loss {epoch['train_loss']:.3f}  dev accuracy instrument "
                           f"{epoch['dev_accuracy']['instrument']:.2f}")


def test_same_seed_same_encoder(pretrained, tiny_corpus, tmp_path):
    again = tmp_path / "again"
    result = CliRunner().invoke(pretrain_main, ["--data", str(tiny_corpus), "--out", str(again), "--preset", "tiny",
                                                "--epochs", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    first = load_file(str(pretrained / "audio_encoder.safetensors"))
    second = load_file(str(again / "audio_encoder.safetensors"))
    assert all(torch.equal(first[k], second[k]) for k in first)

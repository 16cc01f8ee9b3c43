"""The `musicnn` preset: frozen musicnn + frozen MiniLM + DeRA-MOS heads, through checkpoint,
export and the torch-free runtime (windows of long clips included)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from deramos.model.checkpoint import load_checkpoint, save_checkpoint
from deramos.model.config import MUSICNN_SOURCE, ModelConfig, preset
from deramos.model.network import DeRAMOS
from deramos.training.features import Featurizer, predict

DATA = Path(__file__).parent / "data" / "musicnn"
PROMPTS = ("A string quartet playing a slow, sad classical piece.", "Fast loud rock with drums.")


@pytest.fixture(scope="module")
def model():
    return DeRAMOS(preset("musicnn"), seed=3).eval()


def real_clips() -> list[np.ndarray]:
    bach, _ = sf.read(DATA / "bach_bwv1.6_2s.wav", dtype="float32")
    quartet, _ = sf.read(DATA / "beethoven_op18no1_4s.wav", dtype="float32")
    # 14 s: longer than the 10 s window, so the runtime and predict() both split it
    return [quartet, np.concatenate([quartet, bach, quartet, bach, bach])]


def test_preset_shape_and_what_a_checkpoint_stores(model, tmp_path):
    cfg = model.cfg
    assert (cfg.audio.arch, cfg.audio.hidden_size, cfg.audio.samples_per_frame) == ("musicnn", 540, 94 * 256)
    assert cfg.audio.source == MUSICNN_SOURCE and cfg.audio.frozen and cfg.text.frozen
    assert model.stored_parameter_prefixes() == ("heads.",)
    assert not any(p.requires_grad for p in model.audio_encoder.parameters())
    save_checkpoint(model, tmp_path / "ckpt")
    stored = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert ModelConfig.from_dict(stored["model"]).audio == cfg.audio
    assert (tmp_path / "ckpt" / "model.safetensors").stat().st_size < 12_000_000   # heads only: 2.58 M parameters
    loaded = load_checkpoint(tmp_path / "ckpt")
    wave = torch.from_numpy(real_clips()[0])[None]
    ids = torch.tensor([[101, 2200, 102]])
    with torch.no_grad():
        a = model(wave, torch.tensor([wave.shape[1]]), ids, torch.ones_like(ids))
        b = loaded(wave, torch.tensor([wave.shape[1]]), ids, torch.ones_like(ids))
    assert torch.allclose(a["mi"], b["mi"]) and torch.allclose(a["ta"], b["ta"])


def test_train_mode_keeps_the_frozen_encoder_in_eval(model):
    model.train()
    try:
        assert not model.audio_encoder.training
        assert not any(m.training for m in model.audio_encoder.modules())
    finally:
        model.eval()


@pytest.mark.slow
def test_exported_bundle_scores_like_pytorch(model, tmp_path):
    from deramos.build.stage import BuildOptions
    from deramos.export.api import ExportOptions, export_bundle
    from deramos.runtime.scorer import Scorer

    said = []
    # no speed measurement: it times the graphs (15 s here) and checks nothing
    options = ExportOptions(build=BuildOptions(fp16=True, speed=False), validate_clips=4, progress=False)
    manifest = export_bundle(model, tmp_path / "bundle", options, say=said.append)
    assert manifest["parity"]["fp32"]["passed"] and manifest["checks"]["fp16"]["passed"]   # FP16 vs FP32, 64 clips
    assert manifest["samples_per_frame"] == 94 * 256 and manifest["sample_rate"] == 16000
    clips = real_clips()
    mi_torch, ta_torch = predict(Featurizer(model), clips, list(PROMPTS))
    with Scorer.load(tmp_path / "bundle", backend="onnxruntime-cpu") as scorer:
        scores = scorer.score_batch(clips, list(PROMPTS), sample_rate=16000)
    assert all(s.ok for s in scores)
    assert np.abs(np.array([s.mi for s in scores]) - mi_torch).max() <= 1e-3
    assert np.abs(np.array([s.ta for s in scores]) - ta_torch).max() <= 1e-3


def test_one_musicnn_backbone_is_half_the_frame():
    """deramos-train --musicnn-backbones MSD_musicnn: one backbone's penultimate layer and
    taggram (250) + the rhythm, tonality and tuning features (40); another preset refuses the option."""
    from deramos.runtime.errors import TrainingError
    from deramos.training.train import TrainArgs, build_model

    model = build_model(TrainArgs(data="unused", out="unused", preset="musicnn", musicnn_backbones=("MSD_musicnn",)))
    assert list(model.audio_encoder.backbones) == ["MSD_musicnn"] and model.cfg.audio.hidden_size == 290
    assert model.cfg.heads.mi_heads == 2     # 290 = 2 x 145: the MI transformer's heads must divide it
    frames = torch.rand(2, 3, 290)
    out = model.heads(frames, torch.ones(2, 3, dtype=torch.bool), torch.rand(2, 4, 384), torch.ones(2, 4, dtype=torch.bool))
    assert out["mi"].shape == (2,)
    assert [i for _, i in model.audio_encoder.tags()] == list(range(200, 250))
    with pytest.raises(TrainingError, match="--musicnn-backbones: preset 'tiny' has no musicnn encoder"):
        build_model(TrainArgs(data="unused", out="unused", preset="tiny", musicnn_backbones=("MSD_musicnn",)))


def test_signal_features_add_the_envelope_after_the_others():
    """The preset: rhythm, tonality and tuning (540 = 4 x 135). deramos-train --signal-features
    rhythm tonality envelope: 12 more values at the end of every frame instead of the tuning's 4
    (548 = 4 x 137, so the MI heads stay 4); another preset refuses the option."""
    from deramos.runtime.errors import TrainingError
    from deramos.training.train import TrainArgs, build_model

    default = build_model(TrainArgs(data="unused", out="unused", preset="musicnn"))
    assert default.cfg.audio.features == ("penultimate", "taggram", "rhythm", "tonality", "tuning")
    assert default.cfg.audio.hidden_size == 540 and default.cfg.heads.mi_heads == 4

    model = build_model(TrainArgs(data="unused", out="unused", preset="musicnn",
                                  signal_features=("envelope", "rhythm", "tonality")))
    assert model.cfg.audio.features == ("penultimate", "taggram", "rhythm", "tonality", "envelope")
    assert model.cfg.audio.hidden_size == 548 and model.cfg.heads.mi_heads == 4
    only = build_model(TrainArgs(data="unused", out="unused", preset="musicnn", signal_features=("envelope",)))
    assert only.cfg.audio.features == ("penultimate", "taggram", "envelope") and only.cfg.audio.hidden_size == 512
    with pytest.raises(TrainingError, match="--signal-features: preset 'tiny' has no musicnn encoder"):
        build_model(TrainArgs(data="unused", out="unused", preset="tiny", signal_features=("envelope",)))

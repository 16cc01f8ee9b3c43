"""The musicnn port against musicnn's TensorFlow original, on real music.

tests/data/musicnn holds two real clips (see its README) and what TensorFlow computed for
them with the original checkpoints (`make musicnn-parity` regenerates and re-checks that on
longer clips). The port must agree to 1e-4 on the taggram, patches and padding included.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from deramos.model.config import AudioEncoderConfig
from deramos.model.musicnn import (
    LABELS,
    MODELS,
    PATCH_FRAMES,
    WEIGHTS_DIR,
    WEIGHTS_SHA256,
    LogMel,
    MusicnnEncoder,
    check_weights,
    load_musicnn,
    slaney_filterbank,
)

DATA = Path(__file__).parent / "data" / "musicnn"
CLIPS = ("bach_bwv1.6_2s", "beethoven_op18no1_4s")


def read_clip(name: str) -> np.ndarray:
    wave, rate = sf.read(DATA / f"{name}.wav", dtype="float32")
    assert rate == 16000 and wave.ndim == 1
    return wave


def port_outputs(model: str, wave: np.ndarray, dft_conv: bool) -> dict[str, np.ndarray]:
    """Non-overlapping patches, the last one zero-padded, as the reference was computed."""
    encoder = MusicnnEncoder(AudioEncoderConfig(arch="musicnn", sample_rate=16000, hop_length=256,
                                                backbones=(model,), features=("taggram", "penultimate"),
                                                patch_hop=PATCH_FRAMES))
    encoder.frontend.use_dft_conv = dft_conv
    with torch.no_grad():
        frames, real = encoder(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))
    assert bool(real.all())
    frames = frames[0].numpy()
    return {"taggram": frames[:, :50], "penultimate": frames[:, 50:]}


def test_shipped_weights_match_their_sha256():
    for model in MODELS:
        path = check_weights(model)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == WEIGHTS_SHA256[model]
    assert (WEIGHTS_DIR / "LICENSE-musicnn.md").read_text().startswith(
        "Copyright (c) Music Technology Group, Universitat Pompeu Fabra")


def test_altered_weights_are_refused(tmp_path):
    copy = tmp_path / "MTT_musicnn.safetensors"
    shutil.copyfile(WEIGHTS_DIR / "MTT_musicnn.safetensors", copy)
    data = bytearray(copy.read_bytes())
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"MTT_musicnn.safetensors: sha256 [0-9a-f]{64} does not match"):
        check_weights("MTT_musicnn", tmp_path)
    with pytest.raises(FileNotFoundError, match="MSD_musicnn.safetensors: musicnn weights missing"):
        check_weights("MSD_musicnn", tmp_path)
    with pytest.raises(ValueError, match="unknown musicnn model 'MTT_vgg'"):
        check_weights("MTT_vgg")


def test_network_has_musicnn_size():
    network = load_musicnn("MTT_musicnn")
    # TF counts batch-norm statistics as variables; here they are buffers
    statistics = sum(b.numel() for n, b in network.named_buffers() if "running" in n)
    assert statistics == 2 * (1 + 2 * 204 + 3 * 51 + 3 * 64 + 1506 + 200)
    assert sum(p.numel() for p in network.parameters()) + statistics == 792_079


@pytest.mark.parametrize("dft_conv", [False, True], ids=["stft", "dft-conv"])
@pytest.mark.parametrize("model", MODELS)
def test_port_matches_tensorflow_on_real_clips(model, dft_conv):
    for clip in CLIPS:
        reference = np.load(DATA / f"{clip}.{model}.npz")
        ours = port_outputs(model, read_clip(clip), dft_conv)
        assert ours["taggram"].shape == reference["taggram"].shape
        assert np.abs(ours["taggram"] - reference["taggram"]).max() <= 1e-4, clip
        assert np.abs(ours["penultimate"] - reference["penultimate"]).max() <= 1e-3, clip


def test_top_tags_of_the_string_quartet():
    taggram = port_outputs("MTT_musicnn", read_clip("beethoven_op18no1_4s"), dft_conv=False)["taggram"]
    top = [LABELS["MTT_musicnn"][i] for i in np.argsort(-taggram[0])[:3]]
    reference = np.load(DATA / "beethoven_op18no1_4s.MTT_musicnn.npz")["taggram"]
    assert top == [LABELS["MTT_musicnn"][i] for i in np.argsort(-reference[0])[:3]]
    assert "classical" in top


def test_musicnn_float16_log_overflows_where_the_port_does_not():
    # musicnn's extractor takes the log in float16: 10000 * mel overflows on this loud clip.
    reference = np.load(DATA / "beethoven_op18no1_4s.MTT_musicnn.npz")
    assert np.isnan(reference["taggram_f16"]).any()
    assert np.isfinite(port_outputs("MTT_musicnn", read_clip("beethoven_op18no1_4s"), False)["taggram"]).all()


def test_slaney_filterbank_matches_librosa():
    librosa = pytest.importorskip("librosa")
    ours = slaney_filterbank()
    theirs = librosa.filters.mel(sr=16000, n_fft=512, n_mels=96).T
    assert ours.shape == (257, 96)
    assert np.abs(ours - theirs).max() <= 1e-7


def test_log_mel_frames_are_the_same_alone_and_in_a_batch():
    a, b = read_clip(CLIPS[0]), read_clip(CLIPS[1])
    front = LogMel()
    batch = torch.zeros(2, len(b))
    batch[0, : len(a)] = torch.from_numpy(a)
    batch[0, len(a):] = 0.3                    # garbage past the end must not leak in
    batch[1] = torch.from_numpy(b)
    with torch.no_grad():
        both, valid = front(batch, torch.tensor([len(a), len(b)]))
        alone, _ = front(torch.from_numpy(a)[None], torch.tensor([len(a)]))
    assert valid.sum(dim=1).tolist() == [1 + len(a) // 256, 1 + len(b) // 256]
    n = alone.shape[-1]
    assert torch.equal(both[0, :, n:], torch.zeros_like(both[0, :, n:]))
    assert torch.allclose(both[0, :, :n], alone[0], atol=1e-5)


def test_encoder_frames_per_patch_and_batch_invariance():
    cfg = AudioEncoderConfig(arch="musicnn", sample_rate=16000, hop_length=256, backbones=MODELS,
                             features=("penultimate", "taggram"), patch_hop=94)
    encoder = MusicnnEncoder(cfg)
    assert cfg.hidden_size == 2 * 250 and cfg.samples_per_frame == 94 * 256
    a, b = read_clip(CLIPS[0]), read_clip(CLIPS[1])
    batch = torch.zeros(2, len(b))
    batch[0, : len(a)] = torch.from_numpy(a)
    batch[1] = torch.from_numpy(b)
    with torch.no_grad():
        frames, real = encoder(batch, torch.tensor([len(a), len(b)]))
        alone, _ = encoder(torch.from_numpy(a)[None], torch.tensor([len(a)]))
    # 126 and 251 mel frames -> patches starting at 0, 94 (, 188) -> 2 and 3 frames
    assert real.sum(dim=1).tolist() == [2, 3] == encoder.output_frames(torch.tensor([len(a), len(b)])).tolist()
    assert frames.shape == (2, 3, 500)
    assert torch.allclose(frames[0, :2], alone[0], atol=1e-5)
    assert torch.equal(frames[0, 2], torch.zeros(500))


def test_encoder_rejects_bad_configs():
    with pytest.raises(ValueError, match=r"needs backbones from .* \(got \['MTT_musicnn'\], \['logits'\]\)"):
        MusicnnEncoder(AudioEncoderConfig(arch="musicnn", sample_rate=16000, backbones=("MTT_musicnn",),
                                          features=("logits",), patch_hop=94))
    with pytest.raises(ValueError, match=r"needs sample_rate 16000 and patch_hop >= 1 \(got 24000, 94\)"):
        MusicnnEncoder(AudioEncoderConfig(arch="musicnn", backbones=("MTT_musicnn",),
                                          features=("taggram",), patch_hop=94))


def test_clip_wide_timbral_filters_give_the_patch_outputs():
    """forward_clip (the timbral filters once over the clip, 3 + 3 edge frames per patch redone)
    gives what cutting out overlapping patches gives, on real music, first and last patch included."""
    network = load_musicnn("MSD_musicnn")
    encoder = MusicnnEncoder(AudioEncoderConfig(arch="musicnn", sample_rate=16000, hop_length=256,
                                                backbones=("MSD_musicnn",), features=("penultimate",), patch_hop=94))
    wave = torch.from_numpy(np.concatenate([read_clip(c) for c in CLIPS]))[None]     # 6 s: 4 patches
    with torch.no_grad():
        log_mel, valid = encoder.frontend(wave, torch.tensor([wave.shape[1]]))
        index = encoder.patch_index(log_mel.shape[-1], log_mel.device)
        patches, _ = encoder.patches(log_mel, valid, index)
        by_patch = network(patches.reshape(-1, PATCH_FRAMES, 96))
        by_clip = network.forward_clip(log_mel.transpose(1, 2), index)
    assert index.shape[0] == 4
    for name in ("taggram", "penultimate", "mean", "max", "pooled"):
        scale = float(by_patch[name].abs().max())
        assert float((by_clip[name] - by_patch[name]).abs().max()) <= 1e-5 * max(scale, 1.0), name
    network.train()
    with pytest.raises(RuntimeError, match="forward_clip is for eval mode"):
        network.forward_clip(log_mel.transpose(1, 2), index)

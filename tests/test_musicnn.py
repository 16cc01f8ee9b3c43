"""The musicnn port against musicnn's TensorFlow original, on real music.

tests/data/musicnn holds two real clips (see its README) and what TensorFlow computed for
them with the original checkpoints (`make musicnn-parity` regenerates and re-checks that on
longer clips). The port must agree to 1e-4 on the taggram, patches and padding included.
"""
from __future__ import annotations

import copy
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from deramos.model.config import AudioEncoderConfig
from deramos.model.musicnn import (
    CONSTANT_FILTER_TOL,
    LABELS,
    MODELS,
    PATCH_FRAMES,
    WEIGHTS_DIR,
    WEIGHTS_SHA256,
    LogMel,
    MusicnnEncoder,
    Musicnn,
    check_weights,
    load_musicnn,
    log_mel_max,
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


FRONT_END_PADS = ((3, 3), (3, 3), (63, 64), (31, 32), (15, 16))     # timbral 74, 77, temporal 128, 64, 32


def test_log_mel_max_bounds_full_scale_waves():
    """The bound the constant filters rest on: no wave within [-1, 1] gives a larger log-mel."""
    t = np.arange(16000) / 16000.0
    waves = {"sine 1 kHz": np.sin(2 * np.pi * 1000 * t), "square 220 Hz": np.sign(np.sin(2 * np.pi * 220 * t)),
             "noise": np.random.default_rng(0).uniform(-1, 1, 16000), "chirp": np.sin(2 * np.pi * 4000 * t * t)}
    highest = log_mel_max()
    assert 6.0 < highest < 8.0
    for name, wave in waves.items():
        log_mel, _ = LogMel()(torch.from_numpy(wave.astype(np.float32))[None], torch.tensor([16000]))
        assert float(log_mel.max()) <= highest, name


@pytest.mark.parametrize("model", MODELS)
def test_constant_filters_match_the_full_convolution(model):
    """The front-end with its decayed filters evaluated as constants against the plain
    conv -> ReLU -> batch norm -> max over frequency of all filters, on log-mels at both ends of
    the admissible range (where the split is furthest from the full filters) and on real music."""
    network = load_musicnn(model)
    live = [block.live_weight.shape[0] for block in network.front_end_blocks()]
    total = [block.conv.weight.shape[0] for block in network.front_end_blocks()]
    assert sum(live) < 0.75 * sum(total)      # most of musicnn's filters decayed in training
    extremes = torch.from_numpy(np.random.default_rng(1).choice([0.0, log_mel_max()], size=(2, 1, 40, 96)))
    wave = torch.from_numpy(read_clip(CLIPS[0]))[None]
    real, _ = LogMel()(wave, torch.tensor([wave.shape[1]]))
    with torch.no_grad():
        for log_mel in (extremes.float(), real.transpose(1, 2)[:, None]):
            x = network.input_bn(log_mel)
            for block, pad, n in zip(network.front_end_blocks(), FRONT_END_PADS, live):
                padded = torch.nn.functional.pad(x, (0, 0, *pad))
                expected = block(padded).amax(dim=3)
                got = Musicnn._extreme_over_frequency(block, padded)
                assert got.shape == expected.shape
                assert float((got - expected).abs().max()) <= 1e-5 * max(float(expected.abs().max()), 1.0)


def test_a_constant_filter_moves_at_most_the_tolerance_on_its_worst_input():
    """The input that moves the constant filter with the largest bound the most (|x| at the
    bound, signs of its weights) moves its output by no more than CONSTANT_FILTER_TOL."""
    network = load_musicnn("MTT_musicnn")
    block = network.timbral_77
    bn = network.input_bn
    ends = (torch.tensor([0.0, log_mel_max()]) - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    bound = float(ends.detach().abs().max())
    weight = block.conv.weight.detach()
    scale = (block.bn.weight / torch.sqrt(block.bn.running_var + block.bn.eps)).detach().abs()
    spread = scale * weight.flatten(1).abs().sum(dim=1) * bound
    # among the constant filters whose bias keeps them above ReLU's corner (so the input moves them)
    constant = torch.nonzero((spread <= CONSTANT_FILTER_TOL) & (block.conv.bias.detach() > 1e-3)).flatten()
    worst = int(constant[spread[constant].argmax()])
    assert spread[worst] > 0.1 * CONSTANT_FILTER_TOL      # a filter near the line, not a zero one
    sign = torch.sign(weight[worst])                       # [1, 7, 67]
    exact = copy.deepcopy(block).double()          # float64: the move itself, not float32 rounding
    with torch.no_grad():
        still = float(exact(torch.zeros_like(sign[None]).double())[0, worst, 0, 0])
        for x in (bound * sign[None], -bound * sign[None]):
            full = float(exact(x.double())[0, worst, 0, 0])
            split = float(Musicnn._extreme_over_frequency(block, x)[0, worst, 0])
            assert abs(full - still) == pytest.approx(float(spread[worst]), rel=1e-3)   # the bound is reached
            assert abs(full - split) <= CONSTANT_FILTER_TOL * 1.01 + 1e-6 * abs(still)


@pytest.mark.parametrize("model", MODELS)
def test_split_network_matches_the_full_network(model):
    """Every output of forward_clip with the constant filters split off (front-end and mid1's
    inputs) against the same network computing all 561 filters and all of mid1's inputs, on real
    music and on log-mels at both ends of the admissible range; and the split does cut the work."""
    network = load_musicnn(model)
    full = copy.deepcopy(network)
    for block in full.front_end_blocks():
        block.order = None
    full.mid1_live = None
    assert network.mid1_live_weight.shape[1] < 0.75 * 561
    wave = torch.from_numpy(np.concatenate([read_clip(c) for c in CLIPS]))[None]
    real, _ = LogMel()(wave, torch.tensor([wave.shape[1]]))
    extremes = torch.from_numpy(np.random.default_rng(2).choice([0.0, log_mel_max()], size=(1, 400, 96))).float()
    for log_mel in (real.transpose(1, 2), extremes):
        index = torch.arange(0, log_mel.shape[1], 94)[:, None] + torch.arange(PATCH_FRAMES)[None, :]
        with torch.no_grad():
            ours, theirs = network.forward_clip(log_mel, index), full.forward_clip(log_mel, index)
        for name in ("taggram", "penultimate", "mean", "max", "pooled"):
            scale = float(theirs[name].abs().max())
            assert float((ours[name] - theirs[name]).abs().max()) <= 1e-5 * max(scale, 1.0), name

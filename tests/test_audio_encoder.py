"""The MuQ-compatible audio encoder: numbers vs transformers, the official checkpoint layout,
and padding invariance."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Wav2Vec2ConformerConfig
from transformers.models.wav2vec2_conformer.modeling_wav2vec2_conformer import Wav2Vec2ConformerEncoder

from deramos.model.audio_encoder import AudioEncoder, Conformer, load_muq_encoder, muq_state_dict
from deramos.model.config import AudioEncoderConfig, preset

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# ---------------------------------------------------------------------------------------------
# (a) our conformer == transformers' Wav2Vec2ConformerEncoder

HF_SETTINGS = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    conv_depthwise_kernel_size=7, position_embeddings_type="rotary", hidden_act="swish",
    num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4, layer_norm_eps=1e-5,
    hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, conformer_conv_dropout=0.0,
)
WEIGHT_NORM_RENAMES = {
    "parametrizations.weight.original0": "weight_g",
    "parametrizations.weight.original1": "weight_v",
}


def to_ours(key: str) -> str:
    for theirs, ours in WEIGHT_NORM_RENAMES.items():
        key = key.replace(theirs, ours)
    return key


def our_config_for(hf: Wav2Vec2ConformerConfig) -> AudioEncoderConfig:
    return AudioEncoderConfig(
        hidden_size=hf.hidden_size, num_layers=hf.num_hidden_layers, num_heads=hf.num_attention_heads,
        ffn_dim=hf.intermediate_size, depthwise_kernel=hf.conv_depthwise_kernel_size,
        rotary_base=float(hf.rotary_embedding_base), layer_norm_eps=hf.layer_norm_eps, dropout=0.0,
        pos_conv_kernel=hf.num_conv_pos_embeddings, pos_conv_groups=hf.num_conv_pos_embedding_groups)


def randomise_(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics and LayerNorm affine parameters (defaults are 0/1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) - 0.5)
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen) * 1.5)
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 0.6 - 0.3)
            elif isinstance(m, torch.nn.LayerNorm):
                m.weight.add_(torch.randn(m.weight.shape, generator=gen) * 0.2)
                m.bias.add_(torch.randn(m.bias.shape, generator=gen) * 0.2)


@pytest.fixture(scope="module")
def hf_and_ours():
    hf_cfg = Wav2Vec2ConformerConfig(**HF_SETTINGS)
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    theirs = Wav2Vec2ConformerEncoder(hf_cfg)
    randomise_(theirs, 1)
    theirs.eval()
    ours = Conformer(our_config_for(hf_cfg))
    state = {to_ours(k): v for k, v in theirs.state_dict().items()}
    result = ours.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return theirs, ours.eval()


def test_state_dict_keys_match_transformers_up_to_weight_norm_naming(hf_and_ours):
    theirs, ours = hf_and_ours
    their_keys = {to_ours(k) for k in theirs.state_dict()}
    assert set(ours.state_dict()) == their_keys
    for key, value in theirs.state_dict().items():
        assert ours.state_dict()[to_ours(key)].shape == value.shape, key


@pytest.mark.parametrize("batch,steps", [(1, 1), (2, 9), (3, 40)])
def test_conformer_matches_transformers_unpadded(hf_and_ours, batch, steps):
    theirs, ours = hf_and_ours
    x = torch.randn(batch, steps, 32, generator=torch.Generator().manual_seed(steps))
    with torch.no_grad():
        expected = theirs(x.clone()).last_hidden_state
        got = ours(x.clone(), torch.ones(batch, steps, dtype=torch.bool))
    assert got.shape == expected.shape == (batch, steps, 32)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # the comparison is not vacuous: outputs vary over time and batch
    assert got.std() > 0.1


def test_conformer_uses_every_layer(hf_and_ours):
    """Changing a weight deep in the last layer changes the output (no layer silently skipped)."""
    _, ours = hf_and_ours
    mutated = copy.deepcopy(ours)
    with torch.no_grad():
        mutated.layers[-1].conv_module.depthwise_conv.weight.mul_(-1.0)
    x = torch.randn(2, 12, 32, generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 12, dtype=torch.bool)
    with torch.no_grad():
        assert (mutated(x, mask) - ours(x, mask)).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# (b) loading a checkpoint directory in the official MuQ layout

MUQ_STAT = {"melspec_2048_cnt": 14282760192, "melspec_2048_mean": 4.25, "melspec_2048_std": 17.5}


def muq_config(encoder_dim=32, encoder_depth=2, conv_dim=4, n_mels=16) -> dict:
    """A tiny config.json shaped like OpenMuQ/MuQ-large-msd-iter's (same keys, small numbers)."""
    w2v2 = {
        "activation_dropout": 0.1, "adapter_kernel_size": 3, "adapter_stride": 2, "add_adapter": False,
        "apply_spec_augment": True, "architectures": ["Wav2Vec2ConformerForCTC"], "attention_dropout": 0.1,
        "bos_token_id": 1, "classifier_proj_size": 256, "codevector_dim": 768, "conformer_conv_dropout": 0.1,
        "contrastive_logits_temperature": 0.1, "conv_bias": True, "conv_depthwise_kernel_size": 7,
        "conv_dim": [512] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_stride": [5, 2, 2, 2, 2, 2, 2],
        "ctc_loss_reduction": "sum", "ctc_zero_infinity": False, "diversity_loss_weight": 0.1,
        "do_stable_layer_norm": True, "eos_token_id": 2, "feat_extract_activation": "gelu",
        "feat_extract_dropout": 0.0, "feat_extract_norm": "layer", "feat_proj_dropout": 0.1,
        "feat_quantizer_dropout": 0.0, "final_dropout": 0.1, "gradient_checkpointing": False,
        "hidden_act": "swish", "hidden_dropout": 0.1, "hidden_dropout_prob": 0.1,
        "hidden_size": 1024,            # overridden by encoder_dim, as MuQ does
        "initializer_range": 0.02, "intermediate_size": 64, "layer_norm_eps": 1e-5, "layerdrop": 0.0,
        "mask_feature_length": 10, "mask_feature_min_masks": 0, "mask_feature_prob": 0.0,
        "mask_time_length": 10, "mask_time_min_masks": 2, "mask_time_prob": 0.05,
        "max_source_positions": 5000, "model_type": "wav2vec2-conformer", "num_adapter_layers": 3,
        "num_attention_heads": 4, "num_codevector_groups": 2, "num_codevectors_per_group": 320,
        "num_conv_pos_embedding_groups": 4, "num_conv_pos_embeddings": 8, "num_feat_extract_layers": 7,
        "num_hidden_layers": 24,        # overridden by encoder_depth, as MuQ does
        "num_negatives": 100, "output_hidden_size": 1024, "pad_token_id": 0,
        "position_embeddings_type": "rotary", "proj_codevector_dim": 768, "rotary_embedding_base": 10000,
        "tdnn_dilation": [1, 2, 3, 1, 1], "tdnn_dim": [512, 512, 512, 512, 1500], "tdnn_kernel": [5, 3, 3, 1, 1],
        "torch_dtype": "float32", "transformers_version": "4.19.0.dev0", "use_weighted_layer_sum": False,
        "vocab_size": 32, "xvector_output_dim": 512,
    }
    return {
        "label_rate": 25, "num_codebooks": 1, "codebook_dim": 16, "codebook_size": 4096,
        "features": ["melspec_2048"], "hop_length": 240, "n_mels": n_mels, "conv_dim": conv_dim,
        "encoder_dim": encoder_dim, "encoder_depth": encoder_depth, "mask_hop": 0.4, "mask_prob": 0.6,
        "is_flash": False, "stat": dict(MUQ_STAT), "w2v2_config": w2v2, "use_rvq_target": False,
        "use_vq_target": False, "use_encodec_target": False, "rvq_ckpt_path": None, "recon_loss_ratio": None,
        "rvq_n_codebooks": 8, "rvq_multi_layer_num": 1,
    }


def expected_encoder_config() -> AudioEncoderConfig:
    return AudioEncoderConfig(
        sample_rate=24000, n_fft=2048, hop_length=240, n_mels=16, mel_mean=4.25, mel_std=17.5, conv_dim=4,
        hidden_size=32, num_layers=2, num_heads=4, ffn_dim=64, depthwise_kernel=7, pos_conv_kernel=8,
        pos_conv_groups=4)


EXTRA_KEYS = ("model.quantizer_melspec_2048.random_projection", "model.quantizer_melspec_2048.codebook",
              "model.linear.weight", "model.linear.bias", "model.cls_token")


def write_muq_dir(directory: Path, *, weight_norm_style: str = "legacy", drop: str | None = None,
                  reshape: str | None = None, seed: int = 7) -> dict[str, torch.Tensor]:
    """config.json + model.safetensors; returns the encoder's reference state dict (our keys)."""
    torch.manual_seed(seed)
    source = AudioEncoder(expected_encoder_config())
    randomise_(source, seed)
    reference = {k: v.clone() for k, v in source.state_dict().items()}
    tensors = {}
    for key, value in reference.items():
        name = "model." + key
        if weight_norm_style == "parametrizations":
            name = name.replace("conv.weight_g", "conv.parametrizations.weight.original0")
            name = name.replace("conv.weight_v", "conv.parametrizations.weight.original1")
        tensors[name] = value.clone()
    gen = torch.Generator().manual_seed(seed)
    tensors["model.quantizer_melspec_2048.random_projection"] = torch.randn(64, 16, generator=gen)
    tensors["model.quantizer_melspec_2048.codebook"] = torch.randn(16, 4096, generator=gen)
    tensors["model.linear.weight"] = torch.randn(4096, 32, generator=gen)
    tensors["model.linear.bias"] = torch.zeros(4096)
    tensors["model.cls_token"] = torch.randn(32, generator=gen)
    if drop is not None:
        del tensors[drop]
    if reshape is not None:
        tensors[reshape] = torch.zeros(*tensors[reshape].shape[:-1], tensors[reshape].shape[-1] + 1)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(muq_config(), indent=2))
    save_file(tensors, str(directory / "model.safetensors"))
    return reference


@pytest.mark.parametrize("style", ["legacy", "parametrizations"])
def test_load_muq_encoder_strict(tmp_path, style):
    reference = write_muq_dir(tmp_path, weight_norm_style=style)
    stored = load_file(str(tmp_path / "model.safetensors"))
    if style == "legacy":
        assert "model.conformer.pos_conv_embed.conv.weight_g" in stored
    else:
        assert "model.conformer.pos_conv_embed.conv.parametrizations.weight.original0" in stored
        assert "model.conformer.pos_conv_embed.conv.weight_g" not in stored

    encoder, ignored = load_muq_encoder(tmp_path)

    assert ignored == sorted(EXTRA_KEYS)
    loaded = encoder.state_dict()
    assert set(loaded) == set(reference)
    for key, value in reference.items():
        assert torch.equal(loaded[key], value), key
    # the configuration comes from config.json (encoder_dim/depth override w2v2_config)
    cfg = encoder.cfg
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.ffn_dim) == (32, 2, 4, 64)
    assert (cfg.conv_dim, cfg.n_mels, cfg.hop_length, cfg.n_fft) == (4, 16, 240, 2048)
    assert (cfg.depthwise_kernel, cfg.pos_conv_kernel, cfg.pos_conv_groups) == (7, 8, 4)
    assert cfg.rotary_base == 10000.0 and cfg.layer_norm_eps == 1e-5
    assert cfg.source == str(tmp_path)
    assert len(encoder.conformer.layers) == 2


def test_mel_statistics_come_from_stat(tmp_path):
    write_muq_dir(tmp_path)
    encoder, _ = load_muq_encoder(tmp_path)
    assert encoder.cfg.mel_mean == MUQ_STAT["melspec_2048_mean"]
    assert encoder.cfg.mel_std == MUQ_STAT["melspec_2048_std"]
    assert encoder.frontend.mean == 4.25 and encoder.frontend.std == 17.5


def test_loaded_encoder_runs_and_matches_source(tmp_path):
    reference = write_muq_dir(tmp_path)
    encoder, _ = load_muq_encoder(tmp_path)
    source = AudioEncoder(expected_encoder_config())
    source.load_state_dict(reference, strict=True)
    wave = torch.randn(2, 24000, generator=torch.Generator().manual_seed(0)) * 0.1
    lengths = torch.tensor([24000, 15000])
    with torch.no_grad():
        a, mask_a = encoder.eval()(wave, lengths)
        b, mask_b = source.eval()(wave, lengths)
    assert a.shape == (2, 25, 32)
    assert torch.equal(mask_a, mask_b)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)   # same weights, same ops: equal up to rounding


@pytest.mark.parametrize("missing", ["model.conformer.layers.1.conv_module.depthwise_conv.weight",
                                     "model.conv.conv.0.bn3.running_var",
                                     "model.conformer.embed_positions.inv_freq"])
def test_missing_key_is_a_clear_error(tmp_path, missing):
    write_muq_dir(tmp_path, drop=missing)
    with pytest.raises(ValueError) as excinfo:
        load_muq_encoder(tmp_path)
    message = str(excinfo.value)
    assert "missing" in message
    assert missing[len("model."):] in message
    assert str(tmp_path) in message


def test_shape_mismatch_is_a_clear_error(tmp_path):
    key = "model.conformer.layers.0.self_attn.linear_q.weight"
    write_muq_dir(tmp_path, reshape=key)
    with pytest.raises(ValueError) as excinfo:
        load_muq_encoder(tmp_path)
    message = str(excinfo.value)
    assert "shape mismatch" in message
    assert "conformer.layers.0.self_attn.linear_q.weight" in message
    assert "(32, 33)" in message and "(32, 32)" in message


def test_unexpected_encoder_key_is_an_error(tmp_path):
    write_muq_dir(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["model.conformer.layers.2.ffn1.output_dense.weight"] = torch.zeros(32, 64)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"unexpected \['conformer\.layers\.2\.ffn1\.output_dense\.weight'\]"):
        load_muq_encoder(tmp_path)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    write_muq_dir(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_muq_encoder(tmp_path)


def test_unsupported_position_embeddings_are_rejected(tmp_path):
    write_muq_dir(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["w2v2_config"]["position_embeddings_type"] = "relative"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="position_embeddings_type 'relative'"):
        load_muq_encoder(tmp_path)


def test_muq_state_dict_renames_and_reports(tmp_path):
    write_muq_dir(tmp_path, weight_norm_style="parametrizations")
    tensors, ignored = muq_state_dict(tmp_path)
    assert "conformer.pos_conv_embed.conv.weight_g" in tensors
    assert "conformer.pos_conv_embed.conv.weight_v" in tensors
    assert not any("parametrizations" in k or k.startswith("model.") for k in tensors)
    assert ignored == sorted(EXTRA_KEYS)


# ---------------------------------------------------------------------------------------------
# (c) padding invariance of the whole encoder

def tiny_encoder(seed: int = 0) -> AudioEncoder:
    torch.manual_seed(seed)
    encoder = AudioEncoder(preset("tiny").audio)
    randomise_(encoder, seed + 100)
    return encoder.eval()


def clip(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16000.0
    tone = sum(torch.sin(2 * torch.pi * f * t) / (i + 1) for i, f in enumerate((220.0, 330.0, 495.0)))
    return (0.2 * tone * torch.exp(-t) + 0.02 * torch.randn(n, generator=gen)).float()


@pytest.mark.parametrize("dft", [False, True], ids=["torch_stft", "dft_conv"])
def test_clip_alone_equals_clip_padded_in_batch(dft):
    encoder = tiny_encoder()
    encoder.frontend.use_dft_conv = dft
    n_short, n_long = 16000 + 1234, 3 * 16000 + 77
    short, long_ = clip(n_short, 1), clip(n_long, 2)
    with torch.no_grad():
        alone, alone_mask = encoder(short[None], torch.tensor([n_short]))
        long_alone, _ = encoder(long_[None], torch.tensor([n_long]))
        batch = torch.zeros(2, n_long)
        batch[0, :n_short] = short
        batch[0, n_short:] = torch.randn(n_long - n_short, generator=torch.Generator().manual_seed(3)) * 3.0
        batch[1] = long_
        out, mask = encoder(batch, torch.tensor([n_short, n_long]))

    t_short = encoder.output_frames(n_short)
    t_long = encoder.output_frames(n_long)
    assert alone.shape == (1, t_short, 32) and alone_mask.all()
    assert out.shape == (2, t_long, 32)
    assert mask[0].tolist() == [True] * t_short + [False] * (t_long - t_short)
    assert mask[1].all()
    torch.testing.assert_close(out[0, :t_short], alone[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1], long_alone[0], rtol=0, atol=1e-5)
    assert torch.count_nonzero(out[0, t_short:]) == 0          # padded frames are zeroed
    assert alone.abs().max() > 0.1


@pytest.mark.parametrize("n", [160, 640, 641, 799, 800, 959, 960, 16000, 16161, 23999])
def test_output_frame_count(n):
    encoder = tiny_encoder()
    mel = n // 160
    expected = -(-(-(-mel // 2)) // 2)            # ceil(ceil(mel / 2) / 2)
    assert int(encoder.output_frames(n)) == expected
    assert int(encoder.output_frames(torch.tensor([n]))[0]) == expected
    with torch.no_grad():
        out, mask = encoder(clip(n, 0)[None], torch.tensor([n]))
    assert out.shape == (1, expected, 32)
    assert int(mask.sum()) == expected


def test_encoder_is_stateless_between_calls():
    """Two calls on the same input give the same output in eval mode (no hidden state, no caches)."""
    encoder = tiny_encoder()
    wave = clip(8000, 9)[None]
    with torch.no_grad():
        a, _ = encoder(wave, torch.tensor([8000]))
        encoder(clip(20000, 10)[None], torch.tensor([20000]))   # a different length in between
        b, _ = encoder(wave, torch.tensor([8000]))
    assert torch.equal(a, b)


# --- damaged checkpoint files: a library error naming the file; deramos-train says it in one line ---


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _corrupt_json(path: Path) -> None:
    path.write_text('{"encoder_dim": 32,')


DAMAGE = {
    "truncated safetensors": ("model.safetensors", _truncate,
                              "not a readable safetensors file (truncated or corrupt: "),
    "corrupt config.json": ("config.json", _corrupt_json,
                            "not valid JSON (Expecting property name enclosed in double quotes at line 1 column 20)"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_muq_directory_names_the_file(tmp_path, case):
    from deramos.model.weights import CheckpointError

    name, damage, cause = DAMAGE[case]
    write_muq_dir(tmp_path / "muq")
    damage(tmp_path / "muq" / name)
    with pytest.raises(CheckpointError) as raised:
        load_muq_encoder(tmp_path / "muq")
    assert str(raised.value).startswith(f"{tmp_path / 'muq' / name}: {cause}")
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_deramos_train_with_a_damaged_audio_encoder_is_one_line(tmp_path, case):
    from click.testing import CliRunner

    from deramos.training.train import main

    name, damage, cause = DAMAGE[case]
    write_muq_dir(tmp_path / "muq")
    damage(tmp_path / "muq" / name)
    (tmp_path / "data").mkdir()
    result = CliRunner().invoke(main, ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
                                       "--preset", "tiny", "--audio-encoder", str(tmp_path / "muq")])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {tmp_path / 'muq' / name}: {cause}")
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()

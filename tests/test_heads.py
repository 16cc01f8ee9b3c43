"""MI/TA heads (tiny preset dimensions): masking, score range, the decoupled TA branch."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from deramos.model.config import preset
from deramos.model.heads import Heads

pytestmark = pytest.mark.usefixtures("torch_single_thread")

CFG = preset("tiny").heads
DA, DT = preset("tiny").audio.hidden_size, preset("tiny").text.hidden_size
OUTPUTS = ("mi", "ta", "mi_dist", "ta_dist", "audio_emb", "text_emb")


def make_heads(seed: int = 0) -> Heads:
    torch.manual_seed(seed)
    heads = Heads(DA, DT, CFG)
    # spread the weights so the bins' softmax is not nearly uniform (outputs vary visibly)
    with torch.no_grad():
        for name, p in heads.named_parameters():
            if name.endswith("weight") and p.dim() == 2:
                p.mul_(3.0)
    return heads.eval()


def inputs(seed: int = 0, lengths=(7, 12, 3), token_lengths=(5, 2, 9)):
    """Unpadded clips and prompts as lists of [T_i, D] tensors."""
    gen = torch.Generator().manual_seed(seed)
    frames = [torch.randn(t, DA, generator=gen) for t in lengths]
    tokens = [torch.randn(t, DT, generator=gen) for t in token_lengths]
    return frames, tokens


def pad(items, width, fill=None, seed=0):
    """[T_i, D] list -> [B, width, D], mask [B, width]; padding = zeros or garbage."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.zeros(len(items), width, items[0].shape[1])
    if fill == "garbage":
        out = torch.randn(out.shape, generator=gen) * 50.0 + 7.0
    mask = torch.zeros(len(items), width, dtype=torch.bool)
    for row, item in enumerate(items):
        out[row, :item.shape[0]] = item
        mask[row, :item.shape[0]] = True
    return out, mask


def run(heads, frames, tokens, frame_width=None, token_width=None, fill=None, seed=0):
    fw = frame_width or max(f.shape[0] for f in frames)
    tw = token_width or max(t.shape[0] for t in tokens)
    f, fm = pad(frames, fw, fill, seed)
    t, tm = pad(tokens, tw, fill, seed + 1)
    with torch.no_grad():
        return heads(f, fm, t, tm)


def assert_same(a, b, atol=1e-5):
    for key in OUTPUTS:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=lambda m, k=key: f"{k}: {m}")


def test_output_shapes_and_types():
    heads = make_heads()
    out = run(heads, *inputs())
    k = CFG.num_bins
    assert out["mi"].shape == out["ta"].shape == (3,)
    assert out["mi_dist"].shape == out["ta_dist"].shape == (3, k)
    assert out["mi_logits"].shape == out["ta_logits"].shape == (3, k)
    assert out["audio_emb"].shape == out["text_emb"].shape == (3, CFG.ta_dim)


def test_scores_are_expected_value_over_bins_in_range():
    heads = make_heads()
    out = run(heads, *inputs())
    centres = torch.linspace(1.0, 5.0, CFG.num_bins)
    for name in ("mi", "ta"):
        dist = out[f"{name}_dist"]
        torch.testing.assert_close(dist.sum(-1), torch.ones(3), rtol=0, atol=1e-6)
        assert (dist >= 0).all()
        torch.testing.assert_close(out[name], (dist * centres).sum(-1), rtol=0, atol=1e-6)
        torch.testing.assert_close(dist, torch.softmax(out[f"{name}_logits"], -1), rtol=0, atol=1e-6)
        assert ((out[name] >= 1.0) & (out[name] <= 5.0)).all()
        assert out[name].std() > 1e-3          # not a constant


def test_extreme_logits_stay_in_range():
    heads = make_heads()
    with torch.no_grad():
        heads.mi.mlp[-1].bias.copy_(torch.linspace(-1e4, 1e4, CFG.num_bins))   # all mass on the top bin
        heads.ta.mlp[-1].bias.copy_(torch.linspace(1e4, -1e4, CFG.num_bins))   # all mass on the bottom bin
    out = run(heads, *inputs())
    torch.testing.assert_close(out["mi"], torch.full((3,), 5.0))
    torch.testing.assert_close(out["ta"], torch.full((3,), 1.0))


@pytest.mark.parametrize("fill", [None, "garbage"])
def test_extra_padding_changes_nothing(fill):
    heads = make_heads()
    frames, tokens = inputs()
    tight = run(heads, frames, tokens)
    loose = run(heads, frames, tokens, frame_width=30, token_width=16, fill=fill)
    assert_same(loose, tight)


def test_padding_content_changes_nothing():
    heads = make_heads()
    frames, tokens = inputs()
    a = run(heads, frames, tokens, frame_width=20, token_width=12, fill="garbage", seed=1)
    b = run(heads, frames, tokens, frame_width=20, token_width=12, fill="garbage", seed=2)
    assert_same(a, b)


def test_each_item_scores_as_if_alone():
    heads = make_heads()
    frames, tokens = inputs()
    batch = run(heads, frames, tokens, fill="garbage")
    for i in range(3):
        alone = run(heads, [frames[i]], [tokens[i]])
        for key in OUTPUTS:
            torch.testing.assert_close(batch[key][i], alone[key][0], rtol=0, atol=1e-5)


def test_ta_uses_raw_frames_not_the_mi_transformer():
    heads = make_heads()
    frames, tokens = inputs()
    before = run(heads, frames, tokens)
    mutated = copy.deepcopy(heads)
    with torch.no_grad():
        for p in mutated.mi.transformer.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(9)))
    after = run(mutated, frames, tokens)
    assert (after["mi"] - before["mi"]).abs().max() > 1e-3          # MI does use it
    for key in ("ta", "ta_dist", "audio_emb", "text_emb"):
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)


def test_ta_depends_on_audio_and_text():
    heads = make_heads()
    frames, tokens = inputs()
    base = run(heads, frames, tokens)
    other_audio = run(heads, [f.flip(0) * -1.0 for f in frames], tokens)
    assert (other_audio["ta"] - base["ta"]).abs().min() > 1e-5
    other_text = run(heads, frames, [t * -1.0 for t in tokens])
    assert (other_text["ta"] - base["ta"]).abs().min() > 1e-5
    # MI is audio-only
    torch.testing.assert_close(other_text["mi"], base["mi"], rtol=0, atol=0)


@pytest.mark.parametrize("position", [0, -1])
def test_ta_pools_over_real_tokens_not_padding(position):
    """Changing a REAL token changes TA (the reference code masked the real tokens instead);
    changing a padding token does not."""
    heads = make_heads()
    frames, tokens = inputs(token_lengths=(6, 6, 6))
    width = 10
    f, fm = pad(frames, 12)
    t, tm = pad(tokens, width)
    with torch.no_grad():
        base = heads(f, fm, t, tm)
        real = t.clone()
        real[:, position if position >= 0 else 5] += 5.0          # first / last real token
        changed_real = heads(f, fm, real, tm)
        padded = t.clone()
        padded[:, 6:] = 100.0                                      # padding tokens
        changed_pad = heads(f, fm, padded, tm)
    assert (changed_real["ta"] - base["ta"]).abs().min() > 1e-5
    assert (changed_real["text_emb"] - base["text_emb"]).abs().max() > 1e-3
    torch.testing.assert_close(changed_pad["ta"], base["ta"], rtol=0, atol=1e-6)
    torch.testing.assert_close(changed_pad["text_emb"], base["text_emb"], rtol=0, atol=1e-6)


def test_text_embedding_is_masked_mean_of_projected_tokens():
    heads = make_heads()
    frames, tokens = inputs()
    out = run(heads, frames, tokens, token_width=11, fill="garbage")
    with torch.no_grad():
        for i, tok in enumerate(tokens):
            expected = heads.ta.text_proj(tok).mean(0)
            torch.testing.assert_close(out["text_emb"][i], expected, rtol=0, atol=1e-5)


def test_mi_pools_over_real_frames_only():
    """A change in a real frame changes MI; a change past the clip's end does not."""
    heads = make_heads()
    frames, tokens = inputs(lengths=(8, 8, 8))
    f, fm = pad(frames, 14)
    t, tm = pad(tokens, 9)
    with torch.no_grad():
        base = heads(f, fm, t, tm)
        real = f.clone()
        real[:, 7] += 3.0
        pad_changed = f.clone()
        pad_changed[:, 8:] = -40.0
        a, b = heads(f, fm, t, tm), heads(real, fm, t, tm)
        c = heads(pad_changed, fm, t, tm)
    assert torch.equal(a["mi"], base["mi"])
    assert (b["mi"] - base["mi"]).abs().min() > 1e-5
    assert (b["audio_emb"] - base["audio_emb"]).abs().max() > 1e-3
    torch.testing.assert_close(c["mi"], base["mi"], rtol=0, atol=1e-6)
    torch.testing.assert_close(c["ta"], base["ta"], rtol=0, atol=1e-6)


def test_train_mode_dropout_is_active_and_eval_is_deterministic():
    heads = make_heads()
    frames, tokens = inputs()
    a = run(heads, frames, tokens)
    b = run(heads, frames, tokens)
    assert_same(a, b, atol=0)
    heads.train()
    torch.manual_seed(0)
    c = run(heads, frames, tokens)
    assert (c["mi"] - a["mi"]).abs().max() > 1e-6     # tiny preset: MI dropout 0.1


# --- independent oracles: torch's own transformer layer and multi-head attention ---------------

def _load_mha(torch_mha: torch.nn.MultiheadAttention, ours) -> None:
    with torch.no_grad():
        torch_mha.in_proj_weight.copy_(torch.cat([ours.q.weight, ours.k.weight, ours.v.weight]))
        torch_mha.in_proj_bias.copy_(torch.cat([ours.q.bias, ours.k.bias, ours.v.bias]))
        torch_mha.out_proj.weight.copy_(ours.out.weight)
        torch_mha.out_proj.bias.copy_(ours.out.bias)


def test_mi_transformer_layer_matches_torch_encoder_layer():
    """MI's layer is a post-norm TransformerEncoderLayer (FF 2*d, ReLU) with a key padding mask."""
    heads = make_heads()
    ours = heads.mi.transformer
    ref = torch.nn.TransformerEncoderLayer(DA, CFG.mi_heads, dim_feedforward=2 * DA, dropout=CFG.mi_dropout,
                                           activation="relu", batch_first=True, norm_first=False).eval()
    _load_mha(ref.self_attn, ours.attn)
    with torch.no_grad():
        ref.linear1.load_state_dict(ours.ff[0].state_dict())
        ref.linear2.load_state_dict(ours.ff[3].state_dict())
        ref.norm1.load_state_dict(ours.norm1.state_dict())
        ref.norm2.load_state_dict(ours.norm2.state_dict())
    frames, _ = inputs()
    x, mask = pad(frames, 12)
    with torch.no_grad():
        expected = ref(x, src_key_padding_mask=~mask)
        got = ours(x, mask)
    for row, f in enumerate(frames):
        t = f.shape[0]
        torch.testing.assert_close(got[row, :t], expected[row, :t], rtol=0, atol=1e-5)


def test_ta_cross_attention_matches_torch_multihead_attention():
    heads = make_heads()
    ours = heads.ta.cross_attn
    ref = torch.nn.MultiheadAttention(CFG.ta_dim, CFG.ta_heads, batch_first=True).eval()
    _load_mha(ref, ours)
    gen = torch.Generator().manual_seed(4)
    query, kv = torch.randn(2, 5, CFG.ta_dim, generator=gen), torch.randn(2, 9, CFG.ta_dim, generator=gen)
    key_mask = torch.tensor([[True] * 9, [True] * 4 + [False] * 5])
    with torch.no_grad():
        expected, _ = ref(query, kv, kv, key_padding_mask=~key_mask, need_weights=False)
        got = ours(query, kv, key_mask)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_sinusoidal_positions_by_hand():
    from deramos.model.heads import sinusoidal_positions

    table = sinusoidal_positions(6, 8, "cpu", torch.float32)
    assert table.shape == (6, 8)
    for pos in range(6):
        for i in range(4):
            angle = pos / 10000 ** (2 * i / 8)
            assert float(table[pos, 2 * i]) == pytest.approx(math.sin(angle), abs=1e-6)
            assert float(table[pos, 2 * i + 1]) == pytest.approx(math.cos(angle), abs=1e-6)

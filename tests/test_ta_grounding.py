"""TA tag grounding (heads.TagGrounding): where the tags sit in a musicnn frame, what the frozen
MiniLM makes of tag names, masking, and the heads graph through ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from deramos.model.config import preset
from deramos.model.musicnn import LABELS
from deramos.model.network import DeRAMOS


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = preset("musicnn")
    cfg.heads.ta_grounding = 64      # deramos-train --ta-grounding 64 (off in the preset)
    return DeRAMOS(cfg, seed=3).eval()


def test_tag_index_points_at_both_taggrams(model):
    tags = model.audio_encoder.tags()
    assert [name for name, _ in tags] == [*LABELS["MTT_musicnn"], *LABELS["MSD_musicnn"]]
    assert [i for _, i in tags] == [*range(200, 250), *range(450, 500)]
    t = np.arange(16000 * 4) / 16000
    wave = torch.from_numpy((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))[None]
    with torch.no_grad():
        frames, _ = model.audio_encoder(wave, torch.tensor([wave.shape[1]]))
        taggram = model.audio_encoder.backbones["MSD_musicnn"].forward_clip(
            model.audio_encoder.frontend(wave, torch.tensor([wave.shape[1]]))[0].transpose(1, 2),
            model.audio_encoder.patch_index(frames.shape[1] * 94, wave.device)[: frames.shape[1]])["taggram"]
    torch.testing.assert_close(frames[0, :, 450:500], taggram.reshape(frames.shape[1], 50), atol=1e-5, rtol=0)
    assert float(frames[..., model.heads.ta.grounding.tag_index].min()) >= 0.0
    assert float(frames[..., model.heads.ta.grounding.tag_index].max()) <= 1.0


@pytest.mark.parametrize("prompt, tag", [("a sad solo cello", "cello"), ("loud heavy metal band", "heavy metal"),
                                         ("a gentle harpsichord", "harpsichord"), ("a man speaking", "male voice")])
def test_prompt_lands_on_its_tag(model, prompt, tag):
    grounding = model.heads.ta.grounding
    embedding = torch.nn.functional.normalize(model.embed_texts([prompt]), dim=-1)
    similarity = (embedding @ grounding.tag_embeddings.t())[0]
    names = [name for name, _ in model.audio_encoder.tags()]
    assert names[int(similarity.argmax())] == tag
    assert torch.allclose(grounding.tag_embeddings.norm(dim=-1), torch.ones(100), atol=1e-5)


WIDTH = preset("musicnn").audio.hidden_size   # the musicnn preset's frame


def _inputs(batch=2, frames=5, tokens=7):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, frames, WIDTH, generator=g)
    tk = torch.randn(batch, tokens, 384, generator=g)
    return x, torch.ones(batch, frames, dtype=torch.bool), tk, torch.ones(batch, tokens, dtype=torch.bool)


@torch.no_grad()
def test_grounding_reads_the_prompt_and_ignores_padding(model):
    frames, fmask, tokens, tmask = _inputs()
    base = model.heads.ta.grounding(frames, fmask, tokens, tmask)
    assert base.shape == (2, 64)
    padded_tokens = torch.cat([tokens, torch.randn(2, 3, 384)], dim=1)
    padded_mask = torch.cat([tmask, torch.zeros(2, 3, dtype=torch.bool)], dim=1)
    padded_frames = torch.cat([frames, torch.rand(2, 2, WIDTH)], dim=1)
    padded_fmask = torch.cat([fmask, torch.zeros(2, 2, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(model.heads.ta.grounding(padded_frames, padded_fmask, padded_tokens, padded_mask),
                               base, atol=1e-6, rtol=0)
    other = model.heads.ta.grounding(frames, fmask, tokens.flip(0), tmask)
    assert float((other - base).abs().max()) > 1e-3


def test_grounding_needs_tags():
    cfg = preset("tiny")
    cfg.heads.ta_grounding = 8
    with pytest.raises(ValueError, match="TA grounding needs tag probabilities"):
        DeRAMOS(cfg)


def test_grounded_heads_export_matches_torch(model, tmp_path):
    import onnxruntime as ort

    from deramos.export.graphs import HeadsGraph, export_graph

    frames, fmask, tokens, tmask = _inputs(batch=3, frames=6, tokens=9)
    fmask[1, 4:] = False
    tmask[2, 5:] = False
    export_graph("heads", HeadsGraph(model.heads).eval(), (frames, fmask, tokens, tmask.long()), tmp_path / "heads.onnx")
    session = ort.InferenceSession(str(tmp_path / "heads.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feeds = dict(zip(names, [frames.numpy(), fmask.numpy(), tokens.numpy(), tmask.long().numpy()]))
    for name in names:   # the contract's dtypes
        want = {"tensor(bool)": np.bool_, "tensor(int64)": np.int64, "tensor(float)": np.float32}
        feeds[name] = feeds[name].astype(want[next(i.type for i in session.get_inputs() if i.name == name)])
    mi, ta = session.run(None, feeds)[:2]
    with torch.no_grad():
        out = model.heads(frames, fmask, tokens, tmask)
    np.testing.assert_allclose(ta, out["ta"].numpy(), atol=1e-4)
    np.testing.assert_allclose(mi, out["mi"].numpy(), atol=1e-4)

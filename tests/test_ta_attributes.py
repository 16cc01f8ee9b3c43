"""TA by attributes (heads.AttributeTABranch, training/attribute_fit.py): the reader's shapes and
masking, its heads graph through ONNX Runtime, its labels, and a fit on the shipped real clips whose
text side then reads the hand-written free-form prompts (tests/data/freeform), which no training
prompt repeats."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_ablation import real_music_heldout

from deramos.data.clips import load_examples
from deramos.data.realmusic.attributes import FAMILIES, RealAttributes, check_assertion
from deramos.data.realmusic.freeform import held_out_texts, load_prompt_set, normalised
from deramos.model.checkpoint import load_checkpoint, save_checkpoint
from deramos.model.config import ModelConfig, preset
from deramos.model.heads import AttributeTABranch
from deramos.model.network import DeRAMOS
from deramos.model.text_encoder import tokenizer_file
from deramos.runtime.errors import TrainingError
from deramos.training.attribute_fit import (
    UNLABELLED,
    attribute_vocabulary,
    audio_targets,
    band_tempo,
    embed_prompts,
    fit_attribute_reader,
    text_targets,
    training_prompts,
)
from deramos.training.features import Featurizer

pytestmark = pytest.mark.usefixtures("torch_single_thread")
VALUES = 15 + 3 + 3 + 2 + 2 + 8 + 2    # families, ensemble, tempo, mood, dynamics, genre, drums


def attribute_model(seed: int = 3) -> DeRAMOS:
    cfg = preset("musicnn")
    cfg.heads.ta_attributes = attribute_vocabulary()     # deramos-train --ta-attributes
    return DeRAMOS(cfg, seed=seed).eval()


@pytest.fixture(scope="module")
def model():
    return attribute_model()


WIDTH = preset("musicnn").audio.hidden_size   # the musicnn preset's frame


def _inputs(batch=2, frames=5, tokens=7):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, frames, WIDTH, generator=g)
    tk = torch.randn(batch, tokens, 384, generator=g)
    return x, torch.ones(batch, frames, dtype=torch.bool), tk, torch.ones(batch, tokens, dtype=torch.bool)


def test_the_vocabulary_travels_with_the_config(model):
    assert isinstance(model.heads.ta, AttributeTABranch)
    again = ModelConfig.from_dict(json.loads(model.cfg.to_json()))
    assert again.heads.ta_attributes == attribute_vocabulary()
    assert again.heads.ta_attributes["instrument"] == list(FAMILIES)
    assert isinstance(DeRAMOS(again).heads.ta, AttributeTABranch)


@torch.no_grad()
def test_a_saved_model_reads_the_same(model, tmp_path):
    """config.json is written with sorted keys: the reader's kinds (the TA MLP's input order) must
    not follow the vocabulary's order, or a loaded model would weigh the wrong kinds."""
    assert model.heads.ta.reader.kinds == ["drums", "dynamics", "ensemble", "genre", "mood", "tempo"]
    save_checkpoint(model, tmp_path / "run")
    loaded = load_checkpoint(tmp_path / "run").eval()
    assert list(model.cfg.heads.ta_attributes) != list(loaded.cfg.heads.ta_attributes)   # the order did change
    frames, fmask, tokens, tmask = _inputs()
    torch.testing.assert_close(loaded.heads(frames, fmask, tokens, tmask)["ta"], model.heads(frames, fmask, tokens, tmask)["ta"],
                               atol=1e-6, rtol=0)


@torch.no_grad()
def test_the_reader_ignores_padding_and_reads_the_prompt(model):
    frames, fmask, tokens, tmask = _inputs()
    read = model.heads.ta.reader(frames, fmask, tokens, tmask)
    assert read["asserted"].shape == read["heard"].shape == (2, 7)
    assert read["music"].shape == (2,) and read["audio"].shape == read["text"].shape == (2, VALUES)
    for name in ("asserted", "heard", "music"):
        assert 0.0 <= float(read[name].min()) and float(read[name].max()) <= 1.0
    padded = (torch.cat([frames, torch.rand(2, 2, WIDTH)], 1), torch.cat([fmask, torch.zeros(2, 2, dtype=torch.bool)], 1),
              torch.cat([tokens, torch.randn(2, 3, 384)], 1), torch.cat([tmask, torch.zeros(2, 3, dtype=torch.bool)], 1))
    again = model.heads.ta.reader(*padded)
    for name in read:
        torch.testing.assert_close(again[name], read[name], atol=1e-6, rtol=0)
    other = model.heads.ta.reader(frames, fmask, tokens.flip(0), tmask)
    assert float((other["asserted"] - read["asserted"]).abs().max()) > 1e-4


def test_attribute_heads_export_matches_torch(tmp_path):
    import onnxruntime as ort

    from deramos.export.graphs import HeadsGraph, export_graph

    model = attribute_model(seed=4)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():   # weights far from the initial ones, so that TA moves with the inputs
        for p in model.heads.ta.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    frames, fmask, tokens, tmask = _inputs(batch=3, frames=6, tokens=9)
    fmask[1, 4:] = False
    tmask[2, 5:] = False
    export_graph("heads", HeadsGraph(model.heads).eval(), (frames, fmask, tokens, tmask.long()), tmp_path / "heads.onnx")
    session = ort.InferenceSession(str(tmp_path / "heads.onnx"), providers=["CPUExecutionProvider"])
    want = {"tensor(bool)": np.bool_, "tensor(int64)": np.int64, "tensor(float)": np.float32}
    values = [frames.numpy(), fmask.numpy(), tokens.numpy(), tmask.long().numpy()]
    feeds = {i.name: v.astype(want[i.type]) for i, v in zip(session.get_inputs(), values)}
    mi, ta = session.run(None, feeds)[:2]
    with torch.no_grad():
        out = model.heads(frames, fmask, tokens, tmask)
    np.testing.assert_allclose(ta, out["ta"].numpy(), atol=1e-4)
    np.testing.assert_allclose(mi, out["mi"].numpy(), atol=1e-4)
    assert float(np.ptp(ta)) > 0.05     # three different inputs, three different TAs


def test_labels_in_the_readers_vocabulary():
    vocabulary = attribute_vocabulary()
    assert band_tempo({"tempo_bpm": 70.0, "mood": "minor"}) == {"tempo": "slow", "mood": "minor"}
    assert band_tempo({"tempo_bpm": 150.0, "tempo": "fast"}) == {"tempo": "fast"}
    heard = [RealAttributes(instrument="piano", others=("bass",), genre="jazz"),
             RealAttributes(instrument="guitar", genre="dance")]   # a recording's tag no prompt has
    audio = audio_targets(heard, vocabulary)
    assert audio["families"][0].nonzero().flatten().tolist() == [vocabulary["instrument"].index(f) for f in ("piano", "bass")]
    assert audio["genre"].tolist() == [vocabulary["genre"].index("jazz"), UNLABELLED]
    text = text_targets([{}, check_assertion({"instrument": ["piano"], "tempo": "slow"})], vocabulary)
    assert text["music"].tolist() == [0.0, 1.0] and text["instrument"].tolist() == [0.0, 1.0]
    assert text["tempo"].tolist() == [0, 1 + vocabulary["tempo"].index("slow")] and text["genre"].tolist() == [0, 0]


def test_training_prompts_never_use_an_evaluation_text_and_say_what_they_assert():
    heard = [RealAttributes(), RealAttributes(instrument="saxophone", genre="jazz", drums="drums", others=("bass",)),
             RealAttributes(instrument="guitar", genre="dance")]   # no words for "dance": not drawn from
    texts, asserts = training_prompts(heard, 3000, np.random.default_rng(0), tokenizer_file(preset("musicnn").text))
    assert len(texts) == len(asserts) == 3000
    assert not {normalised(t) for t in texts} & held_out_texts()
    not_music = sum(1 for a in asserts if not a)
    assert 380 <= not_music <= 580            # PROMPT_SOURCES: 10 % not-music prompts + 6 % other text
    assert all("tempo_bpm" not in a for a in asserts)
    assert not any(a.get("genre") == "dance" for a in asserts)
    named = [a for a in asserts if a]
    assert all(check_assertion(a) for a in named)


def real_music_training_set(root):
    """The shipped real clips as a deramos-realmusic-layout set whose train and dev lists hold them all."""
    real_music_heldout(root)
    listed = (root / "sets" / "test_mos_list.txt").read_text()
    (root / "sets" / "train_mos_list.txt").write_text(listed)
    (root / "sets" / "dev_mos_list.txt").write_text(listed)
    return root


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A reader fitted on the 48 shipped real clips (4 s each) and 3000 generated prompts."""
    root = real_music_training_set(tmp_path_factory.mktemp("attributes") / "set")
    fitted_model = attribute_model(seed=5)
    featurizer = Featurizer(fitted_model, cache_dir=tmp_path_factory.mktemp("cache"))
    examples, _ = load_examples(root, "train", 16000, progress=False)
    report = fit_attribute_reader(fitted_model, featurizer, examples, root, seed=0, prompts=3000, steps=300)
    return fitted_model, report, len(examples)


@pytest.mark.slow
def test_the_fit_labels_every_clip_and_freezes_the_reader(fitted):
    model, report, clips = fitted
    reader = model.heads.ta.reader
    assert report["audio_clips"] == clips == 48 and report["prompts"] == 3000
    assert set(report["audio_accuracy"]) == {"families", "ensemble", "tempo", "mood", "dynamics", "genre", "drums"}
    assert not any(p.requires_grad for p in reader.parameters())
    assert any(p.requires_grad for p in model.heads.ta.mlp.parameters())    # the TA loss trains the weighing
    assert float(reader.audio_scale.min()) > 0 and float((reader.audio_scale - 1).abs().max()) > 0.01


@pytest.mark.slow
@torch.no_grad()
def test_the_fitted_text_side_reads_hand_written_prompts(fitted):
    """Measured with 3000 prompts: about 0.95 music vs not, 0.9 instrument named or not, 0.9 tempo."""
    model, _, _ = fitted
    reader, vocabulary = model.heads.ta.reader, model.cfg.heads.ta_attributes
    described, unrelated = load_prompt_set()
    prompts = [*described, *unrelated]
    music, instrument, _, kinds = reader.text_logits(*embed_prompts(model, [p.text for p in prompts]))
    truth = text_targets([band_tempo(p.asserts) for p in prompts], vocabulary)
    assert float(((music > 0).float() == truth["music"]).float().mean()) >= 0.85
    assert float(((instrument > 0).float() == truth["instrument"]).float().mean()) >= 0.8
    assert float((kinds["tempo"].argmax(-1) == truth["tempo"]).float().mean()) >= 0.75


def test_a_corpus_without_real_music_attributes_is_refused(tiny_corpus, tmp_path):
    model = attribute_model()
    examples, _ = load_examples(tiny_corpus, "train", 16000, progress=False)
    with pytest.raises(TrainingError, match=r"--ta-attributes: 0 training clips of .*synth_meta.jsonl say what"):
        fit_attribute_reader(model, Featurizer(model, cache_dir=tmp_path), examples, tiny_corpus, seed=0)


@pytest.mark.slow
def test_training_fits_the_reader_once_and_keeps_it_frozen(tmp_path):
    """deramos-train --ta-attributes: the reader is fitted before epoch 1 (attribute_fit.json),
    stays as fitted while the TA MLP learns, and a resumed run loads it instead of fitting again."""
    from deramos.model.weights import read_tensors
    from deramos.training.train import TrainArgs, run_training

    root = real_music_training_set(tmp_path / "set")
    args = dict(data=str(root), out=str(tmp_path / "run"), preset="musicnn", epochs=2, stop_after=1, batch_size=16,
                cache_dir=str(tmp_path / "cache"), progress=False, ta_attributes=True, ta_attribute_prompts=500)
    run = run_training(TrainArgs(**args))
    fit = run / "attribute_fit.json"
    assert json.loads(fit.read_text())["audio_clips"] == 48
    first, written = read_tensors(run / "last" / "model.safetensors"), fit.stat().st_mtime_ns
    run_training(TrainArgs(**{**args, "stop_after": None}))
    second = read_tensors(run / "last" / "model.safetensors")
    assert fit.stat().st_mtime_ns == written
    reader = [k for k in first if k.startswith("heads.ta.reader.")]
    assert len(reader) == 2 + (2 + 6 * 2) + (2 * 4 + 6 * 2)     # 2 buffers; audio: 7 layers; text: 10
    for key in reader:
        torch.testing.assert_close(second[key], first[key], atol=0, rtol=0)
    moved = max(float((second[k] - first[k]).abs().max()) for k in first if k.startswith("heads.ta.mlp."))
    assert moved > 1e-4

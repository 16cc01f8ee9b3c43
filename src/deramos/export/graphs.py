"""torch -> ONNX for the three graphs of a bundle.

Each graph is a thin wrapper whose inputs and outputs are the contract's (runtime/contract.py). The
mel front-end is exported with its DFT-basis convolution (ONNX's STFT op does not run in
TensorRT) and a per-clip reflect padding built from Gather: ops both ONNX Runtime and
TensorRT run.
"""
from __future__ import annotations

import contextlib
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from ..build.onnxio import save_onnx
from ..runtime.contract import AUDIO_ENCODER, GRAPH_IO, HEADS, SPECS, TEXT_ENCODER, axis_sizes

DEFAULT_OPSET = 17
EXAMPLE_TOKENS = 12


class AudioEncoderGraph(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, waveform, lengths):
        return self.encoder(waveform, lengths)


class TextEncoderGraph(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        return self.encoder(input_ids, attention_mask)


class HeadsGraph(nn.Module):
    def __init__(self, heads):
        super().__init__()
        self.heads = heads

    def forward(self, frames, frame_mask, tokens, token_mask):
        out = self.heads(frames, frame_mask, tokens, token_mask)
        return tuple(out[name] for name in HEADS.output_names)   # the graph's outputs are named as the heads name them


DYNAMIC_AXES = {graph: spec.dynamic_axes() for graph, spec in SPECS.items()}


def graph_modules(model) -> dict[str, nn.Module]:
    return {AUDIO_ENCODER.name: AudioEncoderGraph(model.audio_encoder).eval(),
            TEXT_ENCODER.name: TextEncoderGraph(model.text_encoder).eval(),
            HEADS.name: HeadsGraph(model.heads).eval()}


def example_inputs(model, batch: int = 2) -> dict[str, tuple[torch.Tensor, ...]]:
    """Tracing inputs, the contract's example feeds (unequal lengths, so that the masking paths
    are recorded); the heads get the encoders' outputs for them."""
    cfg = model.cfg
    sizes = axis_sizes(samples=min(cfg.audio.window_samples, 3 * cfg.audio.sample_rate), tokens=EXAMPLE_TOKENS)
    vocab = int(model.text_encoder.model.config.vocab_size)
    wave, lengths = _tensors(AUDIO_ENCODER.example_feeds(batch, sizes, vocab=vocab))
    ids, mask = _tensors(TEXT_ENCODER.example_feeds(batch, sizes, vocab=vocab))
    with torch.no_grad():
        frames, frame_mask = model.audio_encoder(wave, lengths)
        tokens = model.text_encoder(ids, mask)
    return {AUDIO_ENCODER.name: (wave, lengths), TEXT_ENCODER.name: (ids, mask),
            HEADS.name: (frames, frame_mask, tokens, mask)}


def _tensors(feeds: dict) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(value) for value in feeds.values())


@contextlib.contextmanager
def export_mode(model):
    """Eval mode and the exportable STFT for the duration of an export."""
    frontend = model.audio_encoder.frontend
    was_training, used_conv = model.training, frontend.use_dft_conv
    model.eval()
    frontend.use_dft_conv = True
    try:
        yield
    finally:
        frontend.use_dft_conv = used_conv
        model.train(was_training)


def export_graph(name: str, module: nn.Module, inputs: tuple, path: Path, opset: int = DEFAULT_OPSET) -> list[Path]:
    """Write one graph; returns the files written (the .onnx and any external-data file).

    torch writes one side file per tensor for graphs over 2 GB, so the export goes to a
    scratch directory and is re-saved here in one piece (`save_onnx`)."""
    import onnx

    input_names, output_names = GRAPH_IO[name]
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        raw = Path(scratch) / path.name
        torch.onnx.export(module, inputs, str(raw), input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes=DYNAMIC_AXES[name],
                          opset_version=opset, do_constant_folding=True, dynamo=False)
        return save_onnx(onnx.load(str(raw), load_external_data=True), path)

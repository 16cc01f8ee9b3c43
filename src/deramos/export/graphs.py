"""torch -> ONNX for the three graphs of a bundle.

Each graph is a thin wrapper that fixes the input/output names of runtime/bundle.py. The
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
from ..runtime.contract import GRAPH_IO, SPECS

DEFAULT_OPSET = 17


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
        return out["mi"], out["ta"], out["mi_dist"], out["ta_dist"]


DYNAMIC_AXES = {graph: spec.dynamic_axes() for graph, spec in SPECS.items()}


def graph_modules(model) -> dict[str, nn.Module]:
    return {"audio_encoder": AudioEncoderGraph(model.audio_encoder).eval(),
            "text_encoder": TextEncoderGraph(model.text_encoder).eval(),
            "heads": HeadsGraph(model.heads).eval()}


def example_inputs(model, batch: int = 2) -> dict[str, tuple[torch.Tensor, ...]]:
    """Tracing inputs: unequal lengths so that masking paths are recorded."""
    cfg = model.cfg
    n = min(cfg.audio.window_samples, 3 * cfg.audio.sample_rate)
    wave = torch.randn(batch, n) * 0.1
    lengths = torch.tensor([n] + [n * 2 // 3] * (batch - 1), dtype=torch.int64)
    vocab = int(model.text_encoder.model.config.vocab_size)
    ids = torch.randint(min(5, vocab - 1), min(1000, vocab), (batch, 12), dtype=torch.int64)   # ids the model has
    mask = torch.ones(batch, 12, dtype=torch.int64)
    mask[1:, 8:] = 0
    with torch.no_grad():
        frames, frame_mask = model.audio_encoder(wave, lengths)
        tokens = model.text_encoder(ids, mask)
    return {"audio_encoder": (wave, lengths), "text_encoder": (ids, mask),
            "heads": (frames, frame_mask, tokens, mask)}


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

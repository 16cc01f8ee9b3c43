"""PyTorch as one more backend: the eager model behind the runtime's Backend interface, so that
the export is checked against it by the comparator every other artefact goes through
(runtime/compare.py).

It runs what the graphs were exported from (export/graphs.py's modules, fed and read by the
contract's names), with one difference that makes it the reference: the mel front-end is
torch.stft computed in float64, i.e. the exact model and not the DFT-basis convolution that
went into the graph, so the front-end is checked too. (In float32, torch.stft's own rounding
is larger than the graph's: up to 0.05 vs 0.009 normalised log-mel units on quiet, low-passed
clips; a reference that noisy would fail a correct graph.)
"""
from __future__ import annotations

import numpy as np
import torch

from ..runtime.backends import Backend
from ..runtime.contract import SPECS
from .graphs import graph_modules


class TorchBackend(Backend):
    """The model in eval mode with its float64 front-end until close() puts the front-end back."""

    name = "pytorch"

    def __init__(self, model):
        super().__init__()
        self.model = model.eval()
        self.modules = graph_modules(model)
        self._frontend = model.audio_encoder.frontend
        self._saved = (self._frontend.float64, self._frontend.use_dft_conv)
        self._frontend.float64, self._frontend.use_dft_conv = True, False

    def _run(self, graph: str, feeds: dict) -> dict[str, np.ndarray]:
        spec = SPECS[graph]
        inputs = [torch.from_numpy(np.ascontiguousarray(value)) for value in spec.inputs_of(feeds)]
        with torch.no_grad():
            result = self.modules[graph](*inputs)
        values = result if isinstance(result, tuple) else (result,)
        return {name: value.numpy() for name, value in zip(spec.output_names, values)}

    def describe(self) -> str:
        return f"pytorch eager ({self.model.cfg.name}; float64 STFT front-end)"

    def close(self) -> None:
        self._frontend.float64, self._frontend.use_dft_conv = self._saved

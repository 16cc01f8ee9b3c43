"""The commands that need the PyTorch side (deramos-train, -pretrain, -eval, -export, -realmusic)
start here, so that a runtime-only install (`pip install deramos`: no torch) answers with one
line saying what to install, instead of a ModuleNotFoundError traceback. Nothing heavy is
imported at module level: deramos.runtime reads the hint below too.
"""
from __future__ import annotations

import importlib
import sys

from .runtime.errors import TORCH_THEN_EXPORT_EXTRA

# Top-level modules of the train/export extras; a missing one means the extra is not installed.
EXTRA_MODULES = {"torch", "torchaudio", "transformers", "safetensors", "scipy", "onnx", "onnxscript", "psutil"}


def missing_extra_message(command: str, module: str) -> str:
    return (f"{command} needs {module}, which this install does not have (a runtime-only install scores "
            f"clips with deramos-run and an exported bundle); to train, evaluate or export: "
            f"{TORCH_THEN_EXPORT_EXTRA}")


def _run(command: str, module: str) -> None:
    try:
        main = importlib.import_module(module).main
        main(prog_name=command)
    except ModuleNotFoundError as error:
        top = (error.name or "").split(".")[0]
        if top not in EXTRA_MODULES:
            raise
        print(f"error: {missing_extra_message(command, top)}", file=sys.stderr)
        sys.exit(2)


def train() -> None:
    _run("deramos-train", "deramos.training.train")


def pretrain() -> None:
    _run("deramos-pretrain", "deramos.training.pretrain")


def evaluate() -> None:
    _run("deramos-eval", "deramos.training.evaluate")


def export() -> None:
    _run("deramos-export", "deramos.export.cli")


def realmusic() -> None:
    _run("deramos-realmusic", "deramos.training.realmusic_cli")

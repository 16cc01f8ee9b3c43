"""The commands that need the PyTorch side (deramos-train, -pretrain, -eval, -export, -realmusic)
start here, so that a runtime-only install (`pip install deramos`: no torch) answers with one
line saying what to install, instead of a ModuleNotFoundError traceback. Nothing heavy is
imported at module level. The line is runtime/cli_common.py's, so that a command that meets
the missing module only once it runs (a lazy import) says the same.
"""
from __future__ import annotations

import importlib

from .runtime.cli_common import fail, missing_extra, missing_extra_message


def _run(command: str, module: str) -> None:
    try:
        main = importlib.import_module(module).main
    except ModuleNotFoundError as error:
        if not missing_extra(error):
            raise
        fail(missing_extra_message(command, missing_extra(error)))
    main(prog_name=command)


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

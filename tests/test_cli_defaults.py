"""The CLIs take their defaults and choices from the library: what --help shows is what a
library caller gets from the dataclass or function the CLI fills in."""
from __future__ import annotations

import dataclasses
import inspect
import re

import click
import pytest

from deramos.data.clips import WINDOW_POLICIES
from deramos.data.synth import generate_corpus
from deramos.data.synth.cli import main as synth_main
from deramos.model.checkpoint import CHECKPOINT_KINDS
from deramos.model.config import PRESETS
from deramos.training.evaluate import evaluate_checkpoint
from deramos.training.evaluate import main as eval_main
from deramos.training.losses import LOSS_KINDS, LossConfig
from deramos.training.pretrain import PRETRAINABLE, PretrainArgs
from deramos.training.pretrain import main as pretrain_main
from deramos.training.train import DEFAULT_LR, TrainArgs
from deramos.training.train import main as train_main


def field_defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def parameter_defaults(function) -> dict:
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


def options(command: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in command.params if isinstance(p, click.Option)}


def help_of(command: click.Command) -> str:
    """--help as a terminal 1000 columns wide prints it: one line per option."""
    with click.Context(command, info_name=command.name, terminal_width=1000, max_content_width=1000) as ctx:
        return command.get_help(ctx)


def help_line(command: click.Command, flag: str) -> str:
    """The option's entry in --help (a long metavar moves its text to the next line)."""
    lines = help_of(command).splitlines()
    (start,) = [i for i, line in enumerate(lines) if line.strip().startswith(flag + " ")]
    end = next(i for i in range(start + 1, len(lines) + 1) if i == len(lines) or lines[i].strip().startswith("-"))
    return " ".join(line.strip() for line in lines[start:end])


def shows_default(line: str, value) -> bool:
    """`[default: V]` or, for a range, `[default: V; x>=1]`; a flag pair names the side."""
    if isinstance(value, bool):
        return "[default: " in line
    return re.search(rf"\[default: {re.escape(str(value))}[];]", line) is not None


# (command, library defaults, the options that must take theirs; CLI name -> library name)
CASES = {
    "deramos-train": (train_main, field_defaults(TrainArgs),
                      {n: n for n in ("preset", "loss", "epochs", "batch_size", "warmup_steps", "grad_clip", "patience",
                                      "seed", "device", "audio_encoder_lr_scale", "window_policy",
                                      "counterfactual_prompts")}),
    "deramos-pretrain": (pretrain_main, field_defaults(PretrainArgs),
                         {n: n for n in ("preset", "epochs", "batch_size", "lr", "seed")}),
    "deramos-eval": (eval_main, parameter_defaults(evaluate_checkpoint),
                     {"split": "split", "kind": "kind", "batch_size": "batch_size", "device": "device"}),
    "deramos-synth": (synth_main, parameter_defaults(generate_corpus),
                      {n: n for n in ("clips", "systems", "seed", "min_seconds", "max_seconds", "progress")}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_help_defaults_are_the_library_defaults(name):
    command, defaults, mapping = CASES[name]
    found = options(command)
    for cli_name, library_name in mapping.items():
        option, expected = found[cli_name], defaults[library_name]
        assert option.default == expected and type(option.default) is type(expected), (cli_name, option.default)
        assert option.show_default, cli_name
        flag = max(option.opts, key=len)
        assert shows_default(help_line(command, flag), expected), (cli_name, help_line(command, flag))


def test_the_library_defaults_are_the_documented_recipe():
    """Pins the values themselves, so a changed default is a deliberate change (README, docs)."""
    train = field_defaults(TrainArgs)
    assert (train["preset"], train["loss"], train["epochs"], train["batch_size"], train["seed"]) == \
        ("small", "dera", 100, 24, 1984)
    assert field_defaults(PretrainArgs) == {"preset": "small", "epochs": 6, "batch_size": 16, "lr": 1e-3,
                                            "seed": 1984, "progress": True}
    assert "[default: 100]" in help_line(train_main, "--epochs")
    assert "[default: 6]" in help_line(pretrain_main, "--epochs")


def test_choices_come_from_the_library_constants():
    train, pretrain, evaluate = options(train_main), options(pretrain_main), options(eval_main)
    assert list(train["preset"].type.choices) == list(PRESETS)
    assert list(train["loss"].type.choices) == list(LOSS_KINDS)
    assert list(train["window_policy"].type.choices) == list(WINDOW_POLICIES)
    assert list(pretrain["preset"].type.choices) == list(PRETRAINABLE)
    assert list(evaluate["kind"].type.choices) == list(CHECKPOINT_KINDS)
    assert f"[{'|'.join(PRESETS)}]" in help_line(train_main, "--preset")


def test_unset_options_name_the_library_default_in_their_help():
    lr = help_line(train_main, "--lr")
    for preset_name, value in DEFAULT_LR.items():
        assert f"{preset_name} {value:g}" in lr
    assert f"[{LossConfig.rank_weight:g}]" in help_line(train_main, "--rank-weight")
    assert f"[{LossConfig.align_weight:g}]" in help_line(train_main, "--align-weight")

"""`deramos-eval`: MSE, LCC, SRCC and KTAU of a checkpoint on a MusicEval-layout split,
at utterance and system level, for MI and TA; optionally the challenge answer file."""
from __future__ import annotations

import json
import sys

import click
import numpy as np

from ..data.clips import load_examples
from ..data.musiceval import read_system_mos, write_answer
from ..model.checkpoint import CHECKPOINT_KINDS, load_checkpoint
from ..runtime.cli_common import Command, defaults_of, errors_as_messages, fail, show_progress
from ..runtime.errors import EvaluationError, message_of, one_line
from ..runtime.metrics import evaluate, format_table
from .features import Featurizer, predict


def evaluate_checkpoint(data: str, checkpoint: str, split: str = "test", *, kind: str = "best_combined",
                        batch_size: int = 16, device: str = "cpu", progress: bool = True,
                        list_file: str | None = None, cache_dir: str | None = None) -> dict:
    """Score every loadable clip of the split (or list file) with the checkpoint; metrics where
    the scores are known. With `cache_dir`, a frozen encoder's outputs are read from and written
    to that feature cache (deramos-train's), so each clip is encoded once across checkpoints.
    A missing or mismatched checkpoint or list, or no clip, raises EvaluationError."""
    try:
        model = load_checkpoint(checkpoint, kind, device)
        examples, problems = load_examples(data, split, model.cfg.audio.sample_rate, progress=progress,
                                           list_file=list_file)
    except (FileNotFoundError, ValueError) as err:
        raise EvaluationError(one_line(err)) from None
    if not examples:
        raise EvaluationError(f"{data}: no clips could be loaded from the {split} list")
    featurizer = Featurizer(model, cache_dir=cache_dir, device=device)
    mi, ta = predict(featurizer, [e.wave for e in examples], [e.clip.prompt for e in examples], batch_size)
    return {"checkpoint": str(model.checkpoint_dir), "split": split, "clips": len(examples),
            "problems": problems, "metrics": score_metrics(data, examples, mi, ta),
            "predictions": {e.clip.wav_id: (float(m), float(t)) for e, m, t in zip(examples, mi, ta)}}


def score_metrics(data: str, examples: list, mi, ta) -> dict:
    """Utterance metrics when every clip has scores, system metrics when the system MOS file
    exists; {} when neither."""
    scored = all(e.clip.mi is not None for e in examples)
    true = {"MI": np.array([e.clip.mi for e in examples]), "TA": np.array([e.clip.ta for e in examples])} if scored else None
    try:
        system_truth = read_system_mos(data)
    except FileNotFoundError:
        system_truth = None
    if true is None and system_truth is None:
        return {}
    return evaluate([e.clip.system_id for e in examples], {"MI": mi, "TA": ta}, true, system_truth)


DEFAULTS = defaults_of(evaluate_checkpoint)


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="MusicEval-layout directory.")
@click.option("--checkpoint", required=True, type=click.Path(exists=True), help="A run directory or a checkpoint directory.")
@click.option("--split", default=DEFAULTS["split"], show_default=True, help="train, dev or test (sets/<split>_mos_list.txt).")
@click.option("--list", "list_file", type=click.Path(exists=True, dir_okay=False), help="Score this list file instead (ids only is fine).")
@click.option("--select", "kind", type=click.Choice(CHECKPOINT_KINDS), default=DEFAULTS["kind"], show_default=True,
              help="Which checkpoint of a run directory.")
@click.option("--answer", type=click.Path(dir_okay=False), help="Write predictions as answer.txt (wavid,MI,TA).")
@click.option("--json", "as_json", is_flag=True, help="Print metrics as JSON.")
@click.option("--batch-size", default=DEFAULTS["batch_size"], show_default=True)
@click.option("--device", default=DEFAULTS["device"], show_default=True)
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Frozen-encoder feature cache (as deramos-train's); none by default.")
def main(data, checkpoint, split, list_file, kind, answer, as_json, batch_size, device, cache_dir):
    """Evaluate a checkpoint: utterance- and system-level MSE/LCC/SRCC/KTAU for MI and TA.

    Example: deramos-eval --data /tmp/se --checkpoint /tmp/run --split test --answer answer.txt
    """
    show_progress()
    with errors_as_messages():
        result = evaluate_checkpoint(data, checkpoint, split, kind=kind, batch_size=batch_size, device=device,
                                     progress=sys.stderr.isatty(), list_file=list_file, cache_dir=cache_dir)
    if answer:
        ids = list(result["predictions"])
        try:
            write_answer(answer, ids, [result["predictions"][i][0] for i in ids],
                         [result["predictions"][i][1] for i in ids])
        except (OSError, ValueError) as err:
            fail(f"--answer: {message_of(err)}")
    if as_json:
        click.echo(json.dumps({k: v for k, v in result.items() if k != "predictions"}, indent=2))
    else:
        click.echo(f"{result['checkpoint']} on {split}: {result['clips']} clips"
                   + (f", {len(result['problems'])} skipped" if result["problems"] else ""))
        if result["metrics"]:
            click.echo(format_table(result["metrics"]))
    if answer:
        click.echo(f"answer file: {answer}", err=True)


if __name__ == "__main__":
    main()

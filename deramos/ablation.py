"""The paper's claim, checked on our data: DeRA-MOS losses vs point-wise L1 vs distribution-only
vs pairwise margin. Same preset, corpus, budget; several seeds each; SRCC/KTAU of MI and TA at
utterance and system level on a held-out corpus (a different synth seed), as mean ± std.

As in the paper, every loss trains the heads on a frozen pre-trained audio encoder: here one
encoder pre-trained once with deramos-pretrain on the training corpus, shared by all runs, and
the same counterfactual prompts for every loss.

    python -m deramos.ablation --out build/ablation --report docs/ablation.md

Runs whose result file exists are not repeated, so an interrupted ablation resumes.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click
import numpy as np

from .cli_common import show_progress
from .evaluate import evaluate_checkpoint
from .losses import LOSS_KINDS
from .pretrain import PRETRAINABLE, PretrainArgs, pretrain
from .synth import generate_corpus
from .train import TrainArgs, run_training

LEVELS = (("utterance", "MI"), ("utterance", "TA"), ("system", "MI"), ("system", "TA"))


def run_one(corpus: Path, heldout_list: Path, heldout: Path, out: Path, loss: str, seed: int, args: dict) -> dict:
    result_file = out / f"{loss}-seed{seed}.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    run = out / "runs" / f"{loss}-seed{seed}"
    started = time.time()
    run_training(TrainArgs(data=str(corpus), out=str(run), preset=args["preset"], loss=loss, epochs=args["epochs"],
                           batch_size=args["batch_size"], seed=seed, patience=args["epochs"], progress=False,
                           cache_dir=str(out / "cache"), lr=args["lr"], init_audio_encoder=str(out / "pretrain"),
                           freeze_audio_encoder=True, counterfactual_prompts=args["counterfactual_prompts"]))
    evaluation = evaluate_checkpoint(str(heldout), str(run), list_file=str(heldout_list), progress=False)
    result = {"loss": loss, "seed": seed, "train_seconds": round(time.time() - started, 1),
              "metrics": evaluation["metrics"]}
    result_file.write_text(json.dumps(result, indent=2))
    return result


def summarise(results: list[dict]) -> dict:
    table = {}
    for loss in sorted({r["loss"] for r in results}, key=LOSS_KINDS.index):
        rows = [r for r in results if r["loss"] == loss]
        table[loss] = {f"{level} {score} {metric}": (float(np.mean(values)), float(np.std(values)))
                       for level, score in LEVELS for metric in ("SRCC", "KTAU")
                       for values in [[r["metrics"][level][score][metric] for r in rows]]}
        table[loss]["runs"] = len(rows)
    return table


def markdown(table: dict, settings: dict, command: str) -> str:
    columns = [f"{level} {score} {metric}" for level, score in LEVELS for metric in ("SRCC", "KTAU")]
    short = {c: c.replace("utterance", "utt").replace("system", "sys") for c in columns}
    lines = ["# Ablation: the DeRA-MOS losses against the baselines", "",
             f"Reproduce with `{command}` ({settings['total_minutes']:.0f} min on this 2-core CPU).", "",
             f"Preset `{settings['preset']}`, training corpus `deramos-synth --clips {settings['clips']} --seed "
             f"{settings['corpus_seed']}` (train/dev lists); the audio encoder pre-trained once on it "
             f"(`deramos-pretrain --epochs {settings['pretrain_epochs']}`, {settings['pretrain_minutes']:.0f} min) and "
             f"frozen, as in the paper; heads trained {settings['epochs']} epochs, batch {settings['batch_size']}, "
             f"peak LR {settings['lr']:g}, {settings['counterfactual_prompts']} counterfactual prompts per clip, "
             f"seeds {settings['seeds']}; the checkpoint kept is `best_combined` (dev). Evaluated on every clip of a "
             f"held-out corpus (`--clips {settings['heldout_clips']} --seed {settings['heldout_seed']}`): mean ± std "
             "over seeds.", "",
             "| loss | runs | " + " | ".join(short[c] for c in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for loss, row in table.items():
        cells = [f"{row[c][0]:.3f} ± {row[c][1]:.3f}" for c in columns]
        lines.append(f"| {loss} | {row['runs']} | " + " | ".join(cells) + " |")
    best = {c: max(table, key=lambda loss: table[loss][c][0]) for c in columns}
    lines += ["", "Best mean per column: " + ", ".join(f"{short[c]}: {best[c]}" for c in columns) + ".", ""]
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", default="build/ablation", show_default=True, type=click.Path(file_okay=False))
@click.option("--report", default="docs/ablation.md", show_default=True, type=click.Path(dir_okay=False))
@click.option("--preset", type=click.Choice(PRETRAINABLE), default="small", show_default=True)
@click.option("--clips", default=2000, show_default=True)
@click.option("--heldout-clips", default=600, show_default=True)
@click.option("--pretrain-epochs", default=6, show_default=True)
@click.option("--epochs", default=15, show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--counterfactual-prompts", default=4, show_default=True)
@click.option("--seeds", default="1,2,3", show_default=True)
@click.option("--losses", default=",".join(LOSS_KINDS), show_default=True)
def main(out, report, preset, clips, heldout_clips, pretrain_epochs, epochs, batch_size, lr, counterfactual_prompts,
         seeds, losses):
    """Train every loss with every seed on the same data and budget; write a markdown report."""
    show_progress(logging.ERROR)
    out = Path(out)
    started = time.time()
    corpus, heldout = out / "corpus", out / "heldout"
    if not (corpus / "sets").is_dir():
        generate_corpus(corpus, clips=clips, systems=10, seed=31, min_seconds=3, max_seconds=4, progress=False)
    if not (heldout / "sets").is_dir():
        generate_corpus(heldout, clips=heldout_clips, systems=10, seed=32, min_seconds=3, max_seconds=4, progress=False)
    heldout_list = heldout / "all_mos_list.txt"
    heldout_list.write_text("".join((heldout / "sets" / f"{s}_mos_list.txt").read_text() for s in ("train", "dev", "test")))
    if not (out / "pretrain" / "audio_encoder.safetensors").exists():
        pretrain(PretrainArgs(data=str(corpus), out=str(out / "pretrain"), preset=preset, epochs=pretrain_epochs,
                              progress=False))
    pretrained = json.loads((out / "pretrain" / "pretrain.json").read_text())["epochs"]
    pretrain_minutes = sum(epoch["seconds"] for epoch in pretrained) / 60
    args = {"preset": preset, "epochs": epochs, "batch_size": batch_size, "lr": lr,
            "counterfactual_prompts": counterfactual_prompts}
    results = []
    for loss in losses.split(","):
        for seed in (int(s) for s in seeds.split(",")):
            click.echo(f"{loss} seed {seed} ...", err=True)
            results.append(run_one(corpus, heldout_list, heldout, out, loss, seed, args))
    settings = dict(args, clips=clips, corpus_seed=31, heldout_clips=heldout_clips, heldout_seed=32,
                    seeds=seeds, pretrain_epochs=pretrain_epochs, pretrain_minutes=pretrain_minutes,
                    total_minutes=pretrain_minutes + sum(r["train_seconds"] for r in results) / 60)
    table = summarise(results)
    text = markdown(table, settings, "make ablation")
    Path(report).parent.mkdir(parents=True, exist_ok=True)
    Path(report).write_text(text)
    (out / "summary.json").write_text(json.dumps({"settings": settings, "table": table}, indent=2))
    click.echo(text)
    click.echo(f"wall time {(time.time() - started) / 60:.1f} min", err=True)


if __name__ == "__main__":
    main()

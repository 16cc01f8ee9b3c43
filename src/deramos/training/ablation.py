"""The paper's claim, checked on our data: DeRA-MOS losses vs point-wise L1 vs distribution-only
vs pairwise margin. Same preset, corpus, budget and counterfactual prompts; several seeds each;
mean ± std over seeds on held-out sets the training never saw.

As in the paper, every loss trains the heads on frozen pre-trained encoders. Two setups:

- real music (`make ablation`): the `musicnn` preset (musicnn and MiniLM ship pre-trained) on
  the default model's training corpus (`--data`, built by scripts/train_realmusic_model.sh),
  evaluated on the real-music held-out set (the real-music report's numbers: SRCC/KTAU, matched
  vs mismatched AUC, paired wins, clean/heavy MI) and the synthetic held-out set. DeRA-MOS is
  compared with each baseline by a paired bootstrap over the real held-out clips;
- synthetic (`make ablation-small`, the previous report): a `small`/`tiny` encoder pre-trained
  once with deramos-pretrain on a deramos-synth corpus made here, then frozen.

    python -m deramos.training.ablation --preset musicnn --data build/ablation/merged \\
        --heldout real=build/ablation/real-heldout --heldout synthetic=build/ablation/heldout

Runs whose result file exists are not repeated, so an interrupted ablation resumes.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click
import numpy as np

from ..data.synth import generate_corpus
from ..model.checkpoint import load_checkpoint
from ..model.config import PRESETS
from ..runtime.cli_common import Command, show_progress
from ..runtime.metrics import spearman
from .evaluate import evaluate_checkpoint
from .losses import LOSS_KINDS
from .pretrain import PRETRAINABLE, PretrainArgs, pretrain
from .realmusic_report import evaluate_model as real_music_report
from .train import TrainArgs, run_training

LEVELS = (("utterance", "MI"), ("utterance", "TA"), ("system", "MI"), ("system", "TA"))
METRICS = ("SRCC", "KTAU")
COLUMNS = tuple(f"{level} {score} {metric}" for level, score in LEVELS for metric in METRICS)
REAL_COLUMNS = ("AUC", "paired wins", "MI clean", "MI heavy")
BOOTSTRAP_STATISTICS = ("utterance MI SRCC", "utterance TA SRCC", "paired wins")


def is_real_music(heldout: Path) -> bool:
    """A deramos-realmusic set (it writes sources.json beside deramos-synth's layout): its clips
    carry the real-music attributes the report's matched and mismatched prompts are made from."""
    return (heldout / "sources.json").is_file() and (heldout / "synth_meta.jsonl").is_file()


def all_clips_list(heldout: Path, out: Path) -> Path:
    """Every clip of a held-out set (train + dev + test lists): none of them was trained on."""
    listed = out / f"{heldout.name}-all_mos_list.txt"
    listed.write_text("".join((heldout / "sets" / f"{s}_mos_list.txt").read_text() for s in ("train", "dev", "test")))
    return listed


def evaluate_run(run: Path, heldouts: dict[str, Path], out: Path, cache_dir: str | None) -> dict:
    results = {}
    for name, heldout in heldouts.items():
        if is_real_music(heldout):
            report = real_music_report(load_checkpoint(str(run)), heldout, format_clips=0, keep_predictions=True,
                                       cache_dir=Path(cache_dir) if cache_dir else None)
            results[name] = {key: report[key] for key in ("clips", "metrics", "predictions")}
            results[name]["real"] = {"AUC": report["matched_vs_mismatched_auc"], "paired wins": report["paired_wins"]["rate"],
                                     "MI clean": report["mi_clean_mean"], "MI heavy": report["mi_heavy_mean"]}
        else:
            evaluation = evaluate_checkpoint(str(heldout), str(run), list_file=str(all_clips_list(heldout, out)),
                                             progress=False, cache_dir=cache_dir)
            results[name] = {"clips": evaluation["clips"], "metrics": evaluation["metrics"]}
    return results


def run_one(out: Path, heldouts: dict[str, Path], loss: str, seed: int, train: dict) -> dict:
    result_file = out / f"{loss}-seed{seed}.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    run = out / "runs" / f"{loss}-seed{seed}"
    started = time.time()
    run_training(TrainArgs(out=str(run), loss=loss, seed=seed, patience=train["epochs"], progress=False, **train))
    trained = time.time() - started
    result = {"loss": loss, "seed": seed, "train_seconds": round(trained, 1),
              "heldout": evaluate_run(run, heldouts, out, train["cache_dir"])}
    result["seconds"] = round(time.time() - started, 1)
    result_file.write_text(json.dumps(result, indent=1))
    return result


def summarise(results: list[dict]) -> dict:
    """heldout -> loss -> column -> (mean, std) over seeds, plus the number of runs."""
    table: dict = {}
    for name in results[0]["heldout"]:
        table[name] = {}
        for loss in sorted({r["loss"] for r in results}, key=LOSS_KINDS.index):
            rows = [r["heldout"][name] for r in results if r["loss"] == loss]
            values = {f"{level} {score} {metric}": [row["metrics"][level][score][metric] for row in rows]
                      for level, score in LEVELS for metric in METRICS}
            if "real" in rows[0]:
                values.update({c: [row["real"][c] for row in rows] for c in REAL_COLUMNS})
            table[name][loss] = {c: (float(np.mean(v)), float(np.std(v))) for c, v in values.items()}
            table[name][loss]["runs"] = len(rows)
            table[name][loss]["clips"] = rows[0]["clips"]
    return table


def seed_mean_statistics(predictions: dict, index: np.ndarray) -> dict:
    """The bootstrap's statistics on the clips `index` of seed-averaged predictions."""
    p = {k: v[index] for k, v in predictions.items()}
    return {"utterance MI SRCC": spearman(p["mi"], p["mi_true"]), "utterance TA SRCC": spearman(p["ta"], p["ta_true"]),
            "paired wins": float((p["ta_matched"] > p["ta_mismatched"]).mean())}


def paired_bootstrap(results: list[dict], heldout: str, reference: str = "dera", resamples: int = 2000,
                     seed: int = 0) -> dict:
    """reference minus each other loss on the same resampled clips (each loss's predictions
    averaged over its seeds): the difference, its 95 % interval and P(reference ahead)."""
    averaged = {}
    for loss in {r["loss"] for r in results}:
        runs = [r["heldout"][heldout]["predictions"] for r in results if r["loss"] == loss]
        averaged[loss] = {k: np.mean([np.asarray(run[k]) for run in runs], axis=0) for k in runs[0]}
    if reference not in averaged:
        return {}
    clips = len(averaged[reference]["mi"])
    rng = np.random.default_rng(seed)
    draws = [np.arange(clips)] + [rng.integers(0, clips, clips) for _ in range(resamples)]   # the first: every clip once
    statistics = {loss: [seed_mean_statistics(predictions, index) for index in draws] for loss, predictions in averaged.items()}
    out = {}
    for loss in sorted(set(averaged) - {reference}, key=LOSS_KINDS.index):
        for k in BOOTSTRAP_STATISTICS:
            point, *diffs = [ours[k] - theirs[k] for ours, theirs in zip(statistics[reference], statistics[loss])]
            out.setdefault(loss, {})[k] = {"difference": point, "ci95": [float(np.percentile(diffs, 2.5)),
                                                                          float(np.percentile(diffs, 97.5))],
                                           "p_ahead": float(np.mean(np.array(diffs) > 0))}
    return out


def markdown(table: dict, bootstrap: dict, settings: dict, command: str) -> str:
    lines = ["# Ablation: the DeRA-MOS losses against the baselines", "",
             f"Reproduce with `{command}` ({settings['total_minutes']:.0f} min of training and evaluation on this "
             "2-core CPU).", "", settings["setup"], ""]
    short = {c: c.replace("utterance", "utt").replace("system", "sys") for c in COLUMNS + REAL_COLUMNS}
    for name, rows in table.items():
        columns = [c for c in COLUMNS + REAL_COLUMNS if c in next(iter(rows.values()))]
        clips = next(iter(rows.values()))["clips"]
        lines += [f"## Held-out set `{name}` ({clips} clips): mean ± std over seeds", "",
                  "| loss | runs | " + " | ".join(short[c] for c in columns) + " |", "|---|---|" + "---|" * len(columns)]
        for loss, row in rows.items():
            lines.append(f"| {loss} | {row['runs']} | " + " | ".join(f"{row[c][0]:.3f} ± {row[c][1]:.3f}" for c in columns) + " |")
        best = {c: max(rows, key=lambda loss: rows[loss][c][0] * (-1 if c == "MI heavy" else 1)) for c in columns}
        lines += ["", "Best mean per column: " + ", ".join(f"{short[c]}: {best[c]}" for c in columns) + ".", ""]
    for name, comparisons in bootstrap.items():
        lines += [f"## DeRA-MOS minus each baseline on `{name}`: paired bootstrap over clips", "",
                  f"Each loss's scores averaged over its seeds; {settings['resamples']} resamples of the held-out clips; "
                  "difference (95 % interval), and how often DeRA-MOS is ahead.", "",
                  "| baseline | " + " | ".join(BOOTSTRAP_STATISTICS) + " |", "|---|" + "---|" * len(BOOTSTRAP_STATISTICS)]
        for loss, stats in comparisons.items():
            cells = [f"{s['difference']:+.3f} ({s['ci95'][0]:+.3f} to {s['ci95'][1]:+.3f}), ahead {s['p_ahead']:.0%}"
                     for s in (stats[k] for k in BOOTSTRAP_STATISTICS)]
            lines.append(f"| {loss} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def synthetic_setup(out: Path, preset: str, clips: int, heldout_clips: int, pretrain_epochs: int) -> tuple[Path, dict, str]:
    """A deramos-synth corpus and held-out corpus made here and an encoder pre-trained on it."""
    corpus, heldout = out / "corpus", out / "heldout"
    if not (corpus / "sets").is_dir():
        generate_corpus(corpus, clips=clips, systems=10, seed=31, min_seconds=3, max_seconds=4, progress=False)
    if not (heldout / "sets").is_dir():
        generate_corpus(heldout, clips=heldout_clips, systems=10, seed=32, min_seconds=3, max_seconds=4, progress=False)
    if not (out / "pretrain" / "audio_encoder.safetensors").exists():
        pretrain(PretrainArgs(data=str(corpus), out=str(out / "pretrain"), preset=preset, epochs=pretrain_epochs,
                              progress=False))
    minutes = sum(epoch["seconds"] for epoch in json.loads((out / "pretrain" / "pretrain.json").read_text())["epochs"]) / 60
    text = (f"Training corpus `deramos-synth --clips {clips} --seed 31` (train/dev lists); the audio encoder "
            f"pre-trained once on it (`deramos-pretrain --epochs {pretrain_epochs}`, {minutes:.0f} min) and frozen, as "
            f"in the paper. Held-out: every clip of `deramos-synth --clips {heldout_clips} --seed 32`.")
    return corpus, {"synthetic": heldout}, text


def parse_heldouts(specs: tuple[str, ...]) -> dict[str, Path]:
    heldouts = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not (Path(path) / "sets").is_dir():
            raise click.BadParameter(f"{spec!r}: expected NAME=DIR with DIR in the MusicEval layout (DIR/sets/)",
                                     param_hint="--heldout")
        heldouts[name] = Path(path)
    return heldouts


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", default="build/ablation", show_default=True, type=click.Path(file_okay=False))
@click.option("--report", default="docs/ablation.md", show_default=True, type=click.Path(dir_okay=False))
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="small", show_default=True,
              help=f"Presets {', '.join(PRETRAINABLE)} get an encoder pre-trained here on a synthetic corpus; the "
                   "others (musicnn) ship pre-trained and need --data and --heldout.")
@click.option("--data", type=click.Path(exists=True, file_okay=False),
              help="Training corpus (MusicEval layout; train and dev lists). Default: a deramos-synth corpus made here.")
@click.option("--heldout", multiple=True, metavar="NAME=DIR",
              help="Held-out set to evaluate every run on (repeatable; all its clips). A deramos-realmusic set also "
                   "gets the real-music report's numbers and the paired bootstrap.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Frozen-encoder feature cache [OUT/cache].")
@click.option("--clips", default=2000, show_default=True, help="Synthetic setup: training corpus size.")
@click.option("--heldout-clips", default=600, show_default=True, help="Synthetic setup: held-out corpus size.")
@click.option("--pretrain-epochs", default=6, show_default=True, help="Synthetic setup: encoder pre-training.")
@click.option("--epochs", default=15, show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--counterfactual-prompts", default=4, show_default=True)
@click.option("--contrast-weight", default=0.0, show_default=True, help="The TA contrast term, the same for every loss.")
@click.option("--seeds", default="1,2,3", show_default=True)
@click.option("--losses", default=",".join(LOSS_KINDS), show_default=True)
@click.option("--resamples", default=2000, show_default=True, help="Paired bootstrap resamples.")
def main(out, report, preset, data, heldout, cache_dir, clips, heldout_clips, pretrain_epochs, epochs, batch_size, lr,
         counterfactual_prompts, contrast_weight, seeds, losses, resamples):
    """Train every loss with every seed on the same data and budget; write a markdown report."""
    show_progress(logging.ERROR)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    heldouts = parse_heldouts(heldout)
    if preset in PRETRAINABLE and data is None:
        corpus, made, setup = synthetic_setup(out, preset, clips, heldout_clips, pretrain_epochs)
        heldouts = {**made, **heldouts}
        init = str(out / "pretrain")
    elif data is None or not heldouts:
        raise click.UsageError(f"--preset {preset}: give the training corpus (--data) and at least one --heldout")
    else:
        corpus, init = Path(data), None
        setup = f"Training corpus `{data}` (train/dev lists); the preset's encoders ship pre-trained and stay frozen."
    train = {"data": str(corpus), "preset": preset, "epochs": epochs, "batch_size": batch_size, "lr": lr,
             "counterfactual_prompts": counterfactual_prompts, "cache_dir": cache_dir or str(out / "cache"),
             "init_audio_encoder": init, "freeze_audio_encoder": init is not None,
             "loss_options": {"contrast_weight": contrast_weight} if contrast_weight else {}}
    results = []
    for loss in losses.split(","):
        for seed in (int(s) for s in seeds.split(",")):
            click.echo(f"{loss} seed {seed} ...", err=True)
            results.append(run_one(out, heldouts, loss, seed, train))
    setup += (f" Preset `{preset}`; heads trained {epochs} epochs, batch {batch_size}, peak LR {lr:g}, "
              f"{counterfactual_prompts} counterfactual prompts per clip, TA contrast weight {contrast_weight:g}, "
              f"seeds {seeds}; the checkpoint kept is `best_combined` (dev).")
    settings = {"setup": setup, "resamples": resamples, "total_minutes": sum(r["seconds"] for r in results) / 60}
    table = summarise(results)
    bootstrap = {name: paired_bootstrap(results, name, resamples=resamples)
                 for name in heldouts if "predictions" in results[0]["heldout"][name]}
    text = markdown(table, bootstrap, settings, "make ablation" if preset == "musicnn" else "make ablation-small")
    Path(report).parent.mkdir(parents=True, exist_ok=True)
    Path(report).write_text(text)
    (out / "summary.json").write_text(json.dumps({"settings": settings, "table": table, "bootstrap": bootstrap}, indent=1))
    click.echo(text)
    click.echo(f"wall time {(time.time() - started) / 60:.1f} min", err=True)


if __name__ == "__main__":
    main()

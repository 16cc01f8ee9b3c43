"""`deramos-train`: train DeRA-MOS (or a baseline loss) on a MusicEval-layout directory.

Runs alone or under `torchrun --nproc_per_node N` (DistributedDataParallel: gloo on CPU,
nccl on GPU). Each epoch ends with a validation pass and an atomic save of `RUN/last/`
(weights, optimiser, RNG), so a run killed at any moment resumes from its last full epoch.

RUN/
  config.json        the model config and the training arguments
  metrics.jsonl      one line per epoch
  best_loss/         lowest validation loss
  best_mi_sys/       highest system-level MI SRCC on dev
  best_combined/     highest (utterance MI SRCC + system TA SRCC) / 2 on dev
  last/              the latest epoch, plus train_state.{json,safetensors} for resuming
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .checkpoint import recover_dir, save_checkpoint, save_tensors
from .config import preset
from .data import crop, load_examples
from .features import Featurizer, predict
from .losses import LOSS_KINDS, LossConfig, total_loss, with_counterfactuals
from .metrics import evaluate
from .model import DeRAMOS
from .musiceval import read_system_mos

log = logging.getLogger("deramos")
# Frozen pretrained encoders (paper) want the paper's small step; encoders trained from scratch a larger one.
DEFAULT_LR = {"paper": 5e-5, "small": 3e-4, "musicnn": 3e-4, "tiny": 1e-3}
SELECTIONS = {  # checkpoint name -> (score from an epoch record, higher is better)
    "best_loss": lambda r: -r["val_loss"],
    "best_mi_sys": lambda r: r["dev"]["system"]["MI"]["SRCC"],
    "best_combined": lambda r: (r["dev"]["utterance"]["MI"]["SRCC"] + r["dev"]["system"]["TA"]["SRCC"]) / 2,
}


@dataclass
class TrainArgs:
    data: str
    out: str
    preset: str = "small"
    loss: str = "dera"
    epochs: int = 100
    batch_size: int = 24
    lr: float | None = None      # None: the preset's default (DEFAULT_LR)
    weight_decay: float = 0.01
    patience: int = 15
    seed: int = 1984
    device: str = "cpu"
    audio_encoder: str | None = None
    text_encoder: str | None = None
    window_policy: str = "variable"
    cache_dir: str | None = None
    max_steps_per_epoch: int | None = None
    progress: bool = True
    loss_options: dict = field(default_factory=dict)
    warmup_steps: int = 200
    grad_clip: float = 1.0
    # Counterfactual prompts (synthetic corpora only; 0 = off, the paper's recipe): per clip this
    # many prompts that get one or two attributes wrong, with the TA the simulated raters would
    # give; each step pairs every clip with one of them as well as with its own prompt.
    counterfactual_prompts: int = 0
    init_audio_encoder: str | None = None   # a deramos-pretrain output: start from its encoder
    freeze_audio_encoder: bool = False      # train the heads only (the paper's recipe with MuQ)
    audio_encoder_lr_scale: float = 1.0     # a trainable audio encoder learns at lr * this
    stop_after: int | None = None   # end this invocation after that epoch; the schedule still spans `epochs`


class TrainStep(torch.nn.Module):
    """The part of a step with trainable parameters, as one module so DDP can wrap it."""

    def __init__(self, model: DeRAMOS, featurizer: Featurizer):
        super().__init__()
        self.model, self.featurizer = model, featurizer

    def forward(self, waves: list, prompts: list, counterfactual: list | None = None):
        return self.featurizer.heads(waves, prompts, counterfactual)


# ---------------------------------------------------------------------------------------------

def setup_distributed(device: str) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return (dist.get_rank() if world > 1 else 0), world


def build_model(args: TrainArgs) -> DeRAMOS:
    cfg = preset(args.preset)
    if args.freeze_audio_encoder:
        cfg.audio.frozen = True
    if args.audio_encoder:
        cfg.audio.source = args.audio_encoder
    if args.text_encoder:
        cfg.text.source = args.text_encoder
    return DeRAMOS(cfg, seed=args.seed)


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int) -> list[np.ndarray]:
    """The same shuffled batches on every rank and after a resume (seeded by epoch)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def learning_rate(base: float, step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10%: a function of the global step alone, so a
    resumed run follows the same schedule without saving scheduler state."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train_epoch(step_module, optimizer, examples, args, loss_cfg, centres, epoch, rank, world,
                counterfactuals=None) -> float:
    step_module.train()
    rng = np.random.default_rng([args.seed, epoch, rank])
    window = step_module_cfg(step_module).audio.window_samples
    random_crop = not step_module_cfg(step_module).audio.frozen
    batches = epoch_batches(len(examples), args.batch_size, epoch, args.seed)[: args.max_steps_per_epoch]
    total_steps = len(batches) * args.epochs
    base_lr = optimizer.defaults["lr"]      # the preset default or --lr, resolved once in run_training
    warmup = min(args.warmup_steps, max(1, total_steps // 10))   # short runs warm up for 10% of their steps
    params = [p for group in optimizer.param_groups for p in group["params"]]
    losses = []
    bar = tqdm(batches, desc=f"epoch {epoch}", unit="batch", disable=not args.progress or rank != 0, leave=False)
    for index, batch in enumerate(bar):
        for group in optimizer.param_groups:
            scheduled = learning_rate(base_lr, (epoch - 1) * len(batches) + index, total_steps, warmup)
            group["lr"] = group.get("lr_scale", 1.0) * scheduled
        if len(batch) < world:
            continue   # every rank needs a clip, or the gradient all-reduce would wait forever
        shard = [examples[i] for i in batch[rank::world]]
        waves = [crop(e.wave, window, rng if random_crop else None) for e in shard]
        cf_prompts, cf_targets = pick_counterfactuals(shard, counterfactuals, rng)
        out = step_module(waves, [e.clip.prompt for e in shard], cf_prompts)
        device = out["mi"].device
        y_mi = torch.tensor([e.clip.mi for e in shard], dtype=torch.float32, device=device)
        y_ta = torch.tensor([e.clip.ta for e in shard], dtype=torch.float32, device=device)
        if cf_prompts is not None:
            out, y_ta = with_counterfactuals(out, y_ta, torch.tensor(cf_targets, dtype=torch.float32, device=device))
        loss, _ = total_loss(out, y_mi, y_ta, centres, loss_cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses):.4f}")
    mean = float(np.mean(losses)) if losses else math.nan
    if world > 1:   # report the loss of the whole batch, not of rank 0's shard
        total = torch.tensor([mean], dtype=torch.float64)
        dist.all_reduce(total)
        mean = float(total) / world
    return mean


def pick_counterfactuals(shard, counterfactuals, rng) -> tuple[list[str] | None, list[float] | None]:
    """One counterfactual (prompt, TA) per clip of the shard, or (None, None) when off."""
    if not counterfactuals:
        return None, None
    pools = [counterfactuals[e.clip.path.name] for e in shard]
    picked = [pool[int(rng.integers(len(pool)))] for pool in pools]
    return [p for p, _ in picked], [t for _, t in picked]


def load_train_counterfactuals(args: TrainArgs, train: list) -> dict | None:
    if not args.counterfactual_prompts:
        return None
    from .synth.counterfactual import load_counterfactuals

    try:
        table = load_counterfactuals(args.data, args.counterfactual_prompts, args.seed)
    except FileNotFoundError as err:
        raise click.ClickException(f"--counterfactual-prompts: {err}") from None
    missing = [e.clip.path.name for e in train if e.clip.path.name not in table]
    if missing:
        raise click.ClickException(f"--counterfactual-prompts: {missing[0]} (and {len(missing) - 1} more) "
                                   f"not in {args.data}/synth_meta.jsonl")
    return table


def step_module_cfg(step_module):
    module = step_module.module if hasattr(step_module, "module") else step_module
    return module.model.cfg


@torch.no_grad()
def validate(model, featurizer, examples, args, loss_cfg, centres, system_truth) -> dict:
    model.eval()
    window = model.cfg.audio.window_samples
    losses, weights = [], []
    for start in range(0, len(examples), args.batch_size):
        batch = examples[start:start + args.batch_size]
        out = featurizer.heads([crop(e.wave, window, None) for e in batch], [e.clip.prompt for e in batch])
        y_mi = torch.tensor([e.clip.mi for e in batch], dtype=torch.float32)
        y_ta = torch.tensor([e.clip.ta for e in batch], dtype=torch.float32)
        loss, _ = total_loss({k: v.cpu() for k, v in out.items()}, y_mi, y_ta, centres, loss_cfg)
        losses.append(float(loss))
        weights.append(len(batch))
    mi, ta = predict(featurizer, [e.wave for e in examples], [e.clip.prompt for e in examples], args.batch_size)
    true = {"MI": np.array([e.clip.mi for e in examples]), "TA": np.array([e.clip.ta for e in examples])}
    metrics = evaluate([e.clip.system_id for e in examples], {"MI": mi, "TA": ta}, true, system_truth)
    return {"val_loss": float(np.average(losses, weights=weights)), "dev": metrics}


# ---------------------------------------------------------------------------------------------
# Resume state: optimiser tensors and RNG in safetensors, the rest in JSON (no pickle).

def save_train_state(directory: Path, optimizer, state: dict, record: dict) -> None:
    opt = optimizer.state_dict()
    tensors = {"torch_rng": torch.get_rng_state()}
    for index, slots in opt["state"].items():
        for name, value in slots.items():
            tensors[f"opt.{index}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    save_tensors(directory / "train_state.safetensors", tensors)
    # The epoch's metrics travel with the state, so metrics.jsonl can always be repaired from it.
    (directory / "train_state.json").write_text(json.dumps(dict(state, param_groups=opt["param_groups"],
                                                                record=record), indent=2))


def load_train_state(directory: Path, optimizer) -> dict:
    from safetensors.torch import load_file

    record = json.loads((directory / "train_state.json").read_text())
    tensors = load_file(str(directory / "train_state.safetensors"))
    slots: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            slots.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": slots, "param_groups": record.pop("param_groups")})
    torch.set_rng_state(tensors["torch_rng"])
    return record


def resume_if_possible(run: Path, model, optimizer) -> dict:
    recover_dir(run / "last")
    state_file = run / "last" / "train_state.json"
    if not state_file.exists():
        _repair_metrics(run / "metrics.jsonl", 0, None)
        return {"epoch": 0, "best": {}, "stale_epochs": 0}
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(run / "last" / "model.safetensors")), strict=False)
    state = load_train_state(run / "last", optimizer)
    _repair_metrics(run / "metrics.jsonl", state["epoch"], state.pop("record", None))
    log.info("resuming %s after epoch %d", run, state["epoch"])
    return state


def _repair_metrics(path: Path, last_epoch: int, last_record: dict | None) -> None:
    """metrics.jsonl = exactly one line per saved epoch: drop lines of unsaved epochs and a line
    torn by a crash mid-write; restore the saved epoch's line if the crash came before it."""
    if not path.exists() and last_record is None:
        return
    records = []
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    kept = {r["epoch"]: r for r in records if r.get("epoch", 0) <= last_epoch}
    if last_record is not None:
        kept.setdefault(last_record["epoch"], last_record)
    path.write_text("".join(json.dumps(kept[e]) + "\n" for e in sorted(kept)))


def record_epoch(run: Path, model, optimizer, record: dict, state: dict, args: TrainArgs) -> None:
    """Save the selection checkpoints that improved, then `last/` together with its resume
    state (one atomic directory swap), then the metrics line."""
    extra = {"training": asdict(args)}
    for name, score_of in SELECTIONS.items():
        score = score_of(record)
        score = -math.inf if score is None or math.isnan(score) else score
        if score > state["best"].get(name, -math.inf):
            state["best"][name] = score
            save_checkpoint(model, run / name, dict(extra, epoch=record["epoch"], selection=name))
    save_checkpoint(model, run / "last", dict(extra, epoch=record["epoch"]),
                    write_more=lambda tmp: save_train_state(tmp, optimizer, state, record))
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")


def run_training(args: TrainArgs) -> Path:
    rank, world = setup_distributed(args.device)
    torch.manual_seed(args.seed)
    run = Path(args.out)
    model = build_model(args)
    if args.init_audio_encoder:
        from .pretrain import load_pretrained_encoder

        try:
            load_pretrained_encoder(model, args.init_audio_encoder)
        except (FileNotFoundError, ValueError) as err:
            raise click.ClickException(f"--init-audio-encoder: {err}") from None
    model = model.to(args.device)
    loss_cfg = LossConfig(kind=args.loss, **args.loss_options)
    cache = args.cache_dir or str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "deramos" / "features")
    featurizer = Featurizer(model, cache_dir=cache, device=args.device, window_policy=args.window_policy)
    try:
        train, _ = load_examples(args.data, "train", model.cfg.audio.sample_rate, progress=args.progress and rank == 0)
        dev, _ = load_examples(args.data, "dev", model.cfg.audio.sample_rate, progress=args.progress and rank == 0)
    except FileNotFoundError as err:
        raise click.ClickException(str(err)) from None
    if not train or not dev:
        raise click.ClickException(f"{args.data}: need clips in both the train and the dev list")
    system_truth = _system_truth(args.data)
    counterfactuals = load_train_counterfactuals(args, train)
    optimizer = torch.optim.AdamW(parameter_groups(model, args), lr=args.lr or DEFAULT_LR[args.preset],
                                  weight_decay=args.weight_decay)
    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(json.dumps({"model": model.cfg.to_dict(), "training": asdict(args)}, indent=2))
    state = resume_if_possible(run, model, optimizer)
    step_module = TrainStep(model, featurizer)
    if world > 1:
        step_module = torch.nn.parallel.DistributedDataParallel(step_module, find_unused_parameters=True)
    centres = model.heads.bins.centres
    for epoch in range(state["epoch"] + 1, args.epochs + 1):
        started = time.time()
        train_loss = train_epoch(step_module, optimizer, train, args, loss_cfg, centres.to(args.device), epoch, rank,
                                 world, counterfactuals)
        record = {"epoch": epoch, "train_loss": train_loss}
        record.update(validate(model, featurizer, dev, args, loss_cfg, centres.cpu(), system_truth))
        record["seconds"] = round(time.time() - started, 2)
        improved = record["val_loss"] < state.get("best_val_loss", math.inf)
        state["best_val_loss"] = min(record["val_loss"], state.get("best_val_loss", math.inf))
        state["stale_epochs"] = 0 if improved else state["stale_epochs"] + 1
        state["epoch"] = epoch
        if rank == 0:
            record_epoch(run, model, optimizer, record, state, args)
            _print_epoch(record)
        if world > 1:
            dist.barrier()
        if args.stop_after is not None and epoch >= args.stop_after:
            break
        if state["stale_epochs"] >= args.patience:
            if rank == 0:
                click.echo(f"early stop: no validation improvement for {args.patience} epochs", err=True)
            break
    if world > 1:
        dist.destroy_process_group()
    return run


def parameter_groups(model, args: TrainArgs) -> list[dict]:
    """Trainable parameters; a pre-trained audio encoder may learn slower than the heads."""
    encoder = [p for p in model.audio_encoder.parameters() if p.requires_grad]
    mine = {id(p) for p in encoder}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in mine]
    groups = [{"params": rest, "lr_scale": 1.0}]
    if encoder:
        groups.append({"params": encoder, "lr_scale": args.audio_encoder_lr_scale})
    return groups


def _system_truth(root):
    try:
        return read_system_mos(root)
    except FileNotFoundError:
        return None


def _print_epoch(r: dict) -> None:
    u, s = r["dev"]["utterance"], r["dev"]["system"]
    click.echo(f"epoch {r['epoch']:3d}  train {r['train_loss']:.4f}  val {r['val_loss']:.4f}  "
               f"SRCC utt MI {u['MI']['SRCC']:.3f} TA {u['TA']['SRCC']:.3f}  "
               f"sys MI {s['MI']['SRCC']:.3f} TA {s['TA']['SRCC']:.3f}  ({r['seconds']:.1f} s)", err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="MusicEval-layout directory.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory (resumed if it exists).")
@click.option("--preset", type=click.Choice(["paper", "small", "musicnn", "tiny"]), default="small", show_default=True)
@click.option("--loss", type=click.Choice(LOSS_KINDS), default="dera", show_default=True,
              help="dera = distributional + listwise (MI) + alignment (TA); the others are baselines.")
@click.option("--epochs", default=100, show_default=True)
@click.option("--batch-size", default=24, show_default=True)
@click.option("--lr", type=float, help="Peak AdamW learning rate [paper 5e-5, small and musicnn 3e-4, tiny 1e-3].")
@click.option("--warmup-steps", default=200, show_default=True, help="Linear warm-up, then cosine decay to 10%.")
@click.option("--grad-clip", default=1.0, show_default=True, help="Gradient norm clip (0: off).")
@click.option("--patience", default=15, show_default=True, help="Early stopping on validation loss.")
@click.option("--seed", default=1984, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1 ...")
@click.option("--audio-encoder", type=click.Path(exists=True, file_okay=False), help="MuQ checkpoint directory (config.json + model.safetensors).")
@click.option("--text-encoder", type=click.Path(exists=True, file_okay=False), help="Hugging Face encoder directory (with its tokenizer).")
@click.option("--init-audio-encoder", type=click.Path(exists=True),
              help="Start the audio encoder from a deramos-pretrain output (from-scratch presets).")
@click.option("--freeze-audio-encoder", is_flag=True,
              help="Keep the audio encoder fixed and train the heads only (e.g. after --init-audio-encoder).")
@click.option("--audio-encoder-lr-scale", default=1.0, show_default=True,
              help="A trainable audio encoder learns at this fraction of --lr (e.g. 0.2 after --init-audio-encoder).")
@click.option("--window-policy", type=click.Choice(["variable", "pad"]), default="variable", show_default=True)
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Frozen-encoder feature cache [~/.cache/deramos/features].")
@click.option("--max-steps-per-epoch", type=int, help="Cap the steps of an epoch (smoke runs).")
@click.option("--stop-after", type=int, help="Stop after this epoch (time-boxing); rerun to resume. The LR schedule spans --epochs.")
@click.option("--rank-weight", type=float, help="λ_r of the listwise loss [0.01].")
@click.option("--align-weight", type=float, help="λ_a of the alignment loss [0.2].")
@click.option("--counterfactual-prompts", default=0, show_default=True, metavar="K",
              help="deramos-synth/deramos-realmusic corpora only: also train TA on K prompts per clip that get 1-2 attributes "
                   "wrong, scored like the simulated raters would (0 = off, the paper's recipe).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def main(**opts):
    """Train DeRA-MOS on a MusicEval-layout directory.

    Example: deramos-train --data /tmp/se --preset tiny --epochs 3 --out /tmp/run
    """
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    loss_options = {k: v for k in ("rank_weight", "align_weight") if (v := opts.pop(k)) is not None}
    progress = not opts.pop("no_progress")
    args = TrainArgs(**opts, progress=progress, loss_options=loss_options)
    run = run_training(args)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"run saved in {run}")


if __name__ == "__main__":
    main()

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
  best_combined_unrelated/   the same, among epochs whose dev clips give prompts about something
                     else (speech, rain, silence...: the training generator's) TA <= 2 on >= 90 %
  last/              the latest epoch, plus train_state.{json,safetensors} for resuming
"""
from __future__ import annotations

import functools
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

from ..data.clips import WINDOW_POLICIES, crop, load_examples
from ..data.musiceval import read_system_mos
from ..model.checkpoint import recover_dir, save_checkpoint
from ..model.config import PRESETS, preset
from ..model.musicnn import MODELS as MUSICNN_BACKBONES
from ..model.network import DeRAMOS
from ..model.tempo_tonality import WIDTHS as SIGNAL_FEATURES
from ..model.weights import save_tensors
from ..runtime.cli_common import Command, defaults_of, errors_as_messages, show_progress
from ..runtime.errors import TrainingError, message_of, one_line, progress_log
from ..runtime.metrics import evaluate
from .features import Featurizer, predict
from .losses import LOSS_KINDS, LossConfig, total_loss, with_counterfactuals
from .schedule import epoch_batches, learning_rate, set_learning_rate

log = logging.getLogger("deramos")
# Frozen pretrained encoders (paper) want the paper's small step; encoders trained from scratch a larger one.
DEFAULT_LR = {"paper": 5e-5, "small": 3e-4, "musicnn": 3e-4, "tiny": 1e-3}
UNRELATED_DEV_SHARE = 0.9   # issue 19's target: prompts about other things at TA <= 2 on >= 90 %
UNRELATED_DEV_SEED = 19


def _combined(r: dict) -> float:
    return (r["dev"]["utterance"]["MI"]["SRCC"] + r["dev"]["system"]["TA"]["SRCC"]) / 2


SELECTIONS = {  # checkpoint name -> (score from an epoch record, higher is better)
    "best_loss": lambda r: -r["val_loss"],
    "best_mi_sys": lambda r: r["dev"]["system"]["MI"]["SRCC"],
    "best_combined": _combined,
    # best_combined reads only each clip's own prompt: a TA branch that has not yet learnt that a
    # prompt about rain or speech deserves TA 1 can win it (docs/realmusic.md, "Seed spread").
    "best_combined_unrelated": lambda r: (
        _combined(r) if r["dev"].get("unrelated", {}).get("share_at_most_2", 0.0) >= UNRELATED_DEV_SHARE else None),
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
    init_heads: str | None = None           # a deramos-train checkpoint: start from its heads (fine-tuning)
    freeze_audio_encoder: bool = False      # train the heads only (the paper's recipe with MuQ)
    audio_encoder_lr_scale: float = 1.0     # a trainable audio encoder learns at lr * this
    ta_grounding: int | None = None         # TA tag grounding width; None: the preset's (0 = off)
    ta_attributes: bool = False             # TA by attributes (heads.AttributeTABranch), reader fitted first
    ta_attribute_prompts: int = 12000       # generated prompts the reader's text side is fitted on
    musicnn_backbones: tuple[str, ...] | None = None   # musicnn preset: the backbones to run (None: the preset's)
    signal_features: tuple[str, ...] | None = None     # musicnn preset: rhythm/tonality/envelope/tuning (None: the preset's)
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


@dataclass
class TrainingSession:
    """What every epoch of a run works with, set up once by `start_session`."""

    args: TrainArgs
    run: Path
    model: DeRAMOS
    featurizer: Featurizer
    step_module: torch.nn.Module          # TrainStep, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    loss_cfg: LossConfig
    train: list
    dev: list
    system_truth: dict | None
    counterfactuals: dict | None          # wav name -> [(prompt, TA)], or None when off
    state: dict                           # epoch, best scores, stale epochs (resumed from last/)
    rank: int = 0
    world: int = 1

    @property
    def centres(self) -> torch.Tensor:
        return self.model.heads.bins.centres


def build_model(args: TrainArgs) -> DeRAMOS:
    cfg = preset(args.preset)
    if args.freeze_audio_encoder:
        cfg.audio.frozen = True
    if args.audio_encoder:
        cfg.audio.source = args.audio_encoder
    if args.text_encoder:
        cfg.text.source = args.text_encoder
    if args.ta_grounding is not None:
        cfg.heads.ta_grounding = args.ta_grounding
    if args.musicnn_backbones:
        if cfg.audio.arch != "musicnn":
            raise TrainingError(f"--musicnn-backbones: preset {args.preset!r} has no musicnn encoder")
        cfg.audio.backbones = tuple(args.musicnn_backbones)
        if len(cfg.audio.backbones) == 1:
            cfg.heads.mi_heads = 2     # one backbone: 290-wide frames, which 4 heads do not divide
    if args.signal_features:
        if cfg.audio.arch != "musicnn":
            raise TrainingError(f"--signal-features: preset {args.preset!r} has no musicnn encoder")
        network = tuple(f for f in cfg.audio.features if f not in SIGNAL_FEATURES)
        cfg.audio.features = network + tuple(f for f in SIGNAL_FEATURES if f in args.signal_features)
    if args.ta_attributes:
        from .attribute_fit import attribute_vocabulary

        cfg.heads.ta_attributes = attribute_vocabulary()
    try:
        model = DeRAMOS(cfg, seed=args.seed)
    except (OSError, ValueError) as err:   # an encoder directory that is not one
        raise TrainingError(f"{message_of(err)} (building the {args.preset} model)") from None
    if args.init_heads:
        try:
            start_from_heads(model, args.init_heads)
        except (FileNotFoundError, ValueError) as err:
            raise TrainingError(f"--init-heads: {one_line(err)}") from None
    if args.init_audio_encoder:
        from .pretrain import load_pretrained_encoder

        try:
            load_pretrained_encoder(model, args.init_audio_encoder)
        except (FileNotFoundError, ValueError) as err:
            raise TrainingError(f"--init-audio-encoder: {err}") from None
    return model


def start_from_heads(model: DeRAMOS, checkpoint: str) -> list[str]:
    """Copy the heads of a trained checkpoint into `model`, every tensor whose name and shape agree
    (a grounded model started from an ungrounded one keeps its new grounding layer and the TA
    MLP's first layer as initialised); returns the names left as they were."""
    from ..model.checkpoint import resolve_checkpoint
    from ..model.weights import read_tensors

    state = read_tensors(resolve_checkpoint(checkpoint, "best_combined") / "model.safetensors")
    own = model.state_dict()
    taken = {k: v for k, v in state.items() if k.startswith("heads.") and k in own and own[k].shape == v.shape}
    if not taken:
        raise ValueError(f"{checkpoint}: no heads tensor fits this model")
    model.load_state_dict(taken, strict=False)
    return sorted(k for k in own if k.startswith("heads.") and k not in taken)


def base_learning_rate(args: TrainArgs) -> float:
    if args.lr:
        return args.lr
    if args.preset not in DEFAULT_LR:
        raise TrainingError(f"preset {args.preset!r} has no default learning rate; give --lr")
    return DEFAULT_LR[args.preset]


def train_epoch(session: TrainingSession, epoch: int) -> float:
    """One pass over the epoch's batches, this rank's share of each; -> the mean loss of all ranks."""
    args, optimizer = session.args, session.optimizer
    session.step_module.train()
    rng = np.random.default_rng([args.seed, epoch, session.rank])
    batches = epoch_batches(len(session.train), args.batch_size, epoch, args.seed)[: args.max_steps_per_epoch]
    total_steps = len(batches) * args.epochs
    base_lr = optimizer.defaults["lr"]      # the preset default or --lr, resolved once in start_session
    warmup = min(args.warmup_steps, max(1, total_steps // 10))   # short runs warm up for 10% of their steps
    losses = []
    bar = tqdm(batches, desc=f"epoch {epoch}", unit="batch", disable=not args.progress or session.rank != 0,
               leave=False)
    for index, batch in enumerate(bar):
        set_learning_rate(optimizer, learning_rate(base_lr, (epoch - 1) * len(batches) + index, total_steps, warmup))
        if len(batch) < session.world:
            continue   # every rank needs a clip, or the gradient all-reduce would wait forever
        shard = [session.train[i] for i in batch[session.rank::session.world]]
        losses.append(apply_gradients(session, step_loss(session, shard, rng)))
        bar.set_postfix(loss=f"{np.mean(losses):.4f}")
    return mean_over_ranks(losses, session.world)


def step_loss(session: TrainingSession, shard: list, rng: np.random.Generator) -> torch.Tensor:
    """The training loss of one shard: random crops (fixed ones for a frozen encoder, whose
    features are cached), and its counterfactual prompts when those are on."""
    audio = session.model.cfg.audio
    waves = [crop(e.wave, audio.window_samples, None if audio.frozen else rng) for e in shard]
    cf_prompts, cf_targets = pick_counterfactuals(shard, session.counterfactuals, rng)
    out = session.step_module(waves, [e.clip.prompt for e in shard], cf_prompts)
    device = out["mi"].device
    y_mi = torch.tensor([e.clip.mi for e in shard], dtype=torch.float32, device=device)
    y_ta = torch.tensor([e.clip.ta for e in shard], dtype=torch.float32, device=device)
    if cf_prompts is not None:
        out, y_ta = with_counterfactuals(out, y_ta, torch.tensor(cf_targets, dtype=torch.float32, device=device))
    loss, _ = total_loss(out, y_mi, y_ta, session.centres.to(session.args.device), session.loss_cfg)
    return loss


def apply_gradients(session: TrainingSession, loss: torch.Tensor) -> float:
    optimizer = session.optimizer
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if session.args.grad_clip:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, session.args.grad_clip)
    optimizer.step()
    return loss.item()


def mean_over_ranks(losses: list[float], world: int) -> float:
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
    from ..data.synth.counterfactual import load_counterfactuals

    try:
        table = load_counterfactuals(args.data, args.counterfactual_prompts, args.seed)
    except FileNotFoundError as err:
        raise TrainingError(f"--counterfactual-prompts: {err}") from None
    missing = [e.clip.path.name for e in train if e.clip.path.name not in table]
    if missing:
        raise TrainingError(f"--counterfactual-prompts: {missing[0]} (and {len(missing) - 1} more) "
                            f"not in {args.data}/synth_meta.jsonl")
    return table


@torch.no_grad()
def validate(session: TrainingSession) -> dict:
    """Validation loss on the dev clips (centre crops), and every metric of their predictions."""
    model, featurizer, examples, args = session.model, session.featurizer, session.dev, session.args
    model.eval()
    window = model.cfg.audio.window_samples
    losses, weights = [], []
    for start in range(0, len(examples), args.batch_size):
        batch = examples[start:start + args.batch_size]
        out = featurizer.heads([crop(e.wave, window, None) for e in batch], [e.clip.prompt for e in batch])
        y_mi = torch.tensor([e.clip.mi for e in batch], dtype=torch.float32)
        y_ta = torch.tensor([e.clip.ta for e in batch], dtype=torch.float32)
        loss, _ = total_loss({k: v.cpu() for k, v in out.items()}, y_mi, y_ta, session.centres.cpu(), session.loss_cfg)
        losses.append(float(loss))
        weights.append(len(batch))
    mi, ta = predict(featurizer, [e.wave for e in examples], [e.clip.prompt for e in examples], args.batch_size)
    true = {"MI": np.array([e.clip.mi for e in examples]), "TA": np.array([e.clip.ta for e in examples])}
    metrics = evaluate([e.clip.system_id for e in examples], {"MI": mi, "TA": ta}, true, session.system_truth)
    metrics["unrelated"] = unrelated_dev_metrics(featurizer, [e.wave for e in examples], args.batch_size)
    return {"val_loss": float(np.average(losses, weights=weights)), "dev": metrics}


@functools.lru_cache(maxsize=4)   # drawn once per run, not every epoch
def dev_unrelated_prompts(count: int) -> tuple[str, ...]:
    """`count` prompts about something that is not music (the training generator's, never one the
    free-form evaluation uses), the same every epoch and every run."""
    from ..data.realmusic.corpus import unused_by_evaluation
    from ..data.realmusic.phrasing import unrelated_prompt

    rng = np.random.default_rng(UNRELATED_DEV_SEED)
    return tuple(unused_by_evaluation(unrelated_prompt(rng), unrelated_prompt) for _ in range(count))


def unrelated_dev_metrics(featurizer: Featurizer, waves: list, batch_size: int) -> dict:
    """TA of each dev clip with one prompt about something else: its mean, and the share at or
    below the free-form evaluation's limit for such prompts (raters give them 1)."""
    from ..data.realmusic.freeform import UNRELATED_TA_LIMIT

    _, ta = predict(featurizer, waves, list(dev_unrelated_prompts(len(waves))), batch_size)
    return {"TA_mean": float(ta.mean()), "share_at_most_2": float((ta <= UNRELATED_TA_LIMIT).mean())}


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
    """Train, or resume, the run in `args.out`; return its directory. Progress goes to the
    `deramos.progress` logger; bad arguments or data raise TrainingError (ValueError for an
    unknown loss or preset)."""
    session = start_session(args)
    for epoch in range(session.state["epoch"] + 1, args.epochs + 1):
        if not end_epoch(session, train_and_validate(session, epoch)):
            break
    if session.world > 1:
        dist.destroy_process_group()
    return session.run


def start_session(args: TrainArgs) -> TrainingSession:
    """Model, data, optimiser and the state resumed from `last/`, in the order that fixes the
    random streams (a run and its resumption draw the same numbers)."""
    rank, world = setup_distributed(args.device)
    torch.manual_seed(args.seed)
    model = build_model(args).to(args.device)
    loss_cfg = LossConfig(kind=args.loss, **args.loss_options)
    featurizer = Featurizer(model, cache_dir=feature_cache_dir(args), device=args.device,
                            window_policy=args.window_policy)
    train, dev = load_splits(args, model.cfg.audio.sample_rate, progress=args.progress and rank == 0)
    system_truth = _system_truth(args.data)
    counterfactuals = load_train_counterfactuals(args, train)
    run = Path(args.out)
    if model.cfg.heads.ta_attributes:
        prepare_attribute_reader(args, model, featurizer, train, run, rank)
    optimizer = torch.optim.AdamW(parameter_groups(model, args), lr=base_learning_rate(args),
                                  weight_decay=args.weight_decay)
    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(json.dumps({"model": model.cfg.to_dict(), "training": asdict(args)}, indent=2))
    state = resume_if_possible(run, model, optimizer)
    step_module = TrainStep(model, featurizer)
    if world > 1:
        step_module = torch.nn.parallel.DistributedDataParallel(step_module, find_unused_parameters=True)
    return TrainingSession(args, run, model, featurizer, step_module, optimizer, loss_cfg, train, dev, system_truth,
                           counterfactuals, state, rank, world)


def prepare_attribute_reader(args: TrainArgs, model, featurizer, train: list, run: Path, rank: int) -> None:
    """Fit the TA attribute reader on its own labels (a new run; a resumed one loads it with the
    rest of `last/`) and freeze it: the TA loss trains only the MLP that weighs what it reads."""
    from .attribute_fit import fit_attribute_reader

    if not (run / "last" / "train_state.json").exists():
        report = fit_attribute_reader(model, featurizer, train, args.data, seed=args.seed,
                                      prompts=args.ta_attribute_prompts, progress=args.progress and rank == 0)
        if rank == 0:
            run.mkdir(parents=True, exist_ok=True)
            (run / "attribute_fit.json").write_text(json.dumps(report, indent=2))
            progress_log.info(f"attribute reader: {report['audio_clips']} clips, {report['prompts']} prompts; "
                              f"train accuracy audio {report['audio_accuracy']}, text {report['text_accuracy']}")
    model.heads.ta.reader.requires_grad_(False)


def feature_cache_dir(args: TrainArgs) -> str:
    return args.cache_dir or str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "deramos" / "features")


def load_splits(args: TrainArgs, sample_rate: int, progress: bool) -> tuple[list, list]:
    try:
        train, _ = load_examples(args.data, "train", sample_rate, progress=progress)
        dev, _ = load_examples(args.data, "dev", sample_rate, progress=progress)
    except FileNotFoundError as err:
        raise TrainingError(str(err)) from None
    if not train or not dev:
        raise TrainingError(f"{args.data}: need clips in both the train and the dev list")
    return train, dev


def train_and_validate(session: TrainingSession, epoch: int) -> dict:
    started = time.time()
    record = {"epoch": epoch, "train_loss": train_epoch(session, epoch)}
    record.update(validate(session))
    record["seconds"] = round(time.time() - started, 2)
    return record


def end_epoch(session: TrainingSession, record: dict) -> bool:
    """Update the early-stopping state, save (rank 0) and report the epoch; -> go on?"""
    args, state = session.args, session.state
    improved = record["val_loss"] < state.get("best_val_loss", math.inf)
    state["best_val_loss"] = min(record["val_loss"], state.get("best_val_loss", math.inf))
    state["stale_epochs"] = 0 if improved else state["stale_epochs"] + 1
    state["epoch"] = record["epoch"]
    if session.rank == 0:
        record_epoch(session.run, session.model, session.optimizer, record, state, args)
        progress_log.info(format_epoch(record))
    if session.world > 1:
        dist.barrier()
    if args.stop_after is not None and record["epoch"] >= args.stop_after:
        return False
    if state["stale_epochs"] >= args.patience:
        if session.rank == 0:
            progress_log.info(f"early stop: no validation improvement for {args.patience} epochs")
        return False
    return True


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


def format_epoch(r: dict) -> str:
    u, s = r["dev"]["utterance"], r["dev"]["system"]
    return (f"epoch {r['epoch']:3d}  train {r['train_loss']:.4f}  val {r['val_loss']:.4f}  "
            f"SRCC utt MI {u['MI']['SRCC']:.3f} TA {u['TA']['SRCC']:.3f}  "
            f"sys MI {s['MI']['SRCC']:.3f} TA {s['TA']['SRCC']:.3f}  {_unrelated_column(r['dev'])}({r['seconds']:.1f} s)")


def _unrelated_column(dev: dict) -> str:
    unrelated = dev.get("unrelated")   # absent in runs recorded before it was measured
    return f"unrelated TA<=2 {unrelated['share_at_most_2']:.2f}  " if unrelated else ""


DEFAULTS = defaults_of(TrainArgs)
LOSS_DEFAULTS = defaults_of(LossConfig)


def _default(name: str, **option):
    """An option whose default is TrainArgs' (shown in --help)."""
    return click.option(f"--{name.replace('_', '-')}", default=DEFAULTS[name], show_default=True, **option)


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="MusicEval-layout directory.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory (resumed if it exists).")
@_default("preset", type=click.Choice(list(PRESETS)))
@_default("loss", type=click.Choice(LOSS_KINDS),
          help="dera = distributional + listwise (MI) + alignment (TA); the others are baselines.")
@_default("epochs")
@_default("batch_size")
@click.option("--lr", type=float, help="Peak AdamW learning rate ["
              + ", ".join(f"{name} {lr:g}" for name, lr in DEFAULT_LR.items()) + "].")
@_default("warmup_steps", help="Linear warm-up, then cosine decay to 10%.")
@_default("grad_clip", help="Gradient norm clip (0: off).")
@_default("patience", help="Early stopping on validation loss.")
@_default("seed")
@_default("device", help="cpu, cuda, cuda:1 ...")
@click.option("--audio-encoder", type=click.Path(exists=True, file_okay=False), help="MuQ checkpoint directory (config.json + model.safetensors).")
@click.option("--text-encoder", type=click.Path(exists=True, file_okay=False), help="Hugging Face encoder directory (with its tokenizer).")
@click.option("--init-audio-encoder", type=click.Path(exists=True),
              help="Start the audio encoder from a deramos-pretrain output (from-scratch presets).")
@click.option("--init-heads", type=click.Path(exists=True),
              help="Start the heads from a trained checkpoint (fine-tuning; tensors whose shape differs stay new).")
@click.option("--freeze-audio-encoder", is_flag=True,
              help="Keep the audio encoder fixed and train the heads only (e.g. after --init-audio-encoder).")
@_default("audio_encoder_lr_scale",
          help="A trainable audio encoder learns at this fraction of --lr (e.g. 0.2 after --init-audio-encoder).")
@_default("window_policy", type=click.Choice(WINDOW_POLICIES))
@click.option("--ta-grounding", type=click.IntRange(min=0), metavar="WIDTH",
              help="TA tag grounding: the prompt's similarity to each musicnn tag beside the audio's tag "
                   "probabilities, WIDTH wide in TA's MLP (musicnn preset only; 0 = off, the preset's default: "
                   "64 was measured against 0 in docs/realmusic.md and did not win).")
@click.option("--ta-attributes", is_flag=True,
              help="TA by attributes: a reader fitted first on the corpus's rendered attributes (audio) and on "
                   "generated prompts with what each asserts (text), then frozen; the TA loss trains the MLP that "
                   "weighs, per kind, whether the prompt names it and whether the clip has it (deramos-realmusic "
                   "corpora; replaces TA's cross-attention).")
@_default("ta_attribute_prompts", type=click.IntRange(min=100), metavar="N",
          help="With --ta-attributes: generated prompts the reader's text side is fitted on.")
@click.option("--musicnn-backbones", type=click.Choice(MUSICNN_BACKBONES), multiple=True,
              help="musicnn preset: the backbones whose features make a frame (repeatable; default both). One "
                   "backbone halves the audio encoder's work (290-wide frames; MI attention with 2 heads).")
@click.option("--signal-features", type=click.Choice(tuple(SIGNAL_FEATURES)), multiple=True,
              help="musicnn preset: the signal-processing features beside musicnn's in every frame (repeatable; "
                   "default rhythm, tonality and tuning). envelope adds 12: how fast the log-mel falls and how high its "
                   "floor sits, per band third (reverb, noise, clipping, low-pass); tuning adds 4: how the pitches' "
                   "place between two semitones spreads, wanders and drifts (wobble, detuning; "
                   "deramos/model/tempo_tonality.py).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Frozen-encoder feature cache [~/.cache/deramos/features].")
@click.option("--max-steps-per-epoch", type=int, help="Cap the steps of an epoch (smoke runs).")
@click.option("--stop-after", type=int, help="Stop after this epoch (time-boxing); rerun to resume. The LR schedule spans --epochs.")
@click.option("--rank-weight", type=float, help=f"λ_r of the listwise loss [{LOSS_DEFAULTS['rank_weight']:g}].")
@click.option("--align-weight", type=float, help=f"λ_a of the alignment loss [{LOSS_DEFAULTS['align_weight']:g}].")
@click.option("--contrast-weight", type=float,
              help="With --counterfactual-prompts: weight of the squared error of the TA difference between a "
                   f"clip's prompt and its counterfactual [{LOSS_DEFAULTS['contrast_weight']:g}: off].")
@_default("counterfactual_prompts", metavar="K",
          help="deramos-synth/deramos-realmusic corpora only: also train TA on K prompts per clip that get 1-2 attributes "
               "wrong, scored like the simulated raters would (0 = off, the paper's recipe).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def main(**opts):
    """Train DeRA-MOS on a MusicEval-layout directory.

    Example: deramos-train --data /tmp/se --preset tiny --epochs 3 --out /tmp/run
    """
    show_progress()
    loss_options = {k: v for k in ("rank_weight", "align_weight", "contrast_weight") if (v := opts.pop(k)) is not None}
    progress = not opts.pop("no_progress")
    args = TrainArgs(**opts, progress=progress, loss_options=loss_options)
    with errors_as_messages():
        run = run_training(args)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"run saved in {run}")


if __name__ == "__main__":
    main()

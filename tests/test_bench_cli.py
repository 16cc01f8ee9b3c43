"""deramos-bench picks the embedded default model's trained weights only for that model's preset."""
from __future__ import annotations

import json

from deramos.bench.cli import default_checkpoint_of, embedded_preset
from deramos.runtime.paths import PACKAGE_DIR


def test_the_embedded_model_is_measured_under_its_own_preset_only():
    shipped = json.loads((PACKAGE_DIR / "default_model" / "config.json").read_text())["model"]["name"]
    assert embedded_preset() == shipped
    assert default_checkpoint_of(shipped) == PACKAGE_DIR / "default_model"
    others = {"paper", "small", "musicnn", "tiny"} - {shipped}
    assert all(default_checkpoint_of(name) is None for name in others)


def test_another_default_checkpoint_follows_its_config(monkeypatch, tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights are not read here")
    (tmp_path / "config.json").write_text(json.dumps({"model": {"name": "small"}}))
    monkeypatch.setenv("DERAMOS_DEFAULT_CHECKPOINT", str(tmp_path))
    assert embedded_preset() == "small" and default_checkpoint_of("small") == tmp_path
    (tmp_path / "config.json").write_text("{not json")
    assert embedded_preset() is None and default_checkpoint_of("small") is None

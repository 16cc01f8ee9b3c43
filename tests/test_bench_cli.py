"""deramos-bench picks the embedded default model's trained weights only for that model's preset."""
from __future__ import annotations

import json

import numpy as np
import pytest

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


def test_reward_loop_rows_on_every_precision_and_against_a_baseline(runtime_bundle, tmp_path):
    """The reward loop runs in worker processes (real Scorer, real ONNX Runtime) for each CPU
    precision the bundle has and each batch size; the baseline's FP32 is the ratio's base."""
    from deramos.bench.cli import format_reward, make_inputs, reward_rows
    from deramos.runtime.bundle import load_bundle

    bundle = load_bundle(runtime_bundle)
    make_inputs(bundle, 4, 1.0, tmp_path / "inputs.npz")
    base = {"inputs": str(tmp_path / "inputs.npz"), "batch_sizes": [1, 4], "seconds": 0.05, "threads": 1,
            "candidates": 4}
    said = []
    rows = reward_rows(bundle, base, tmp_path, said.append, "this")
    rows += reward_rows(bundle, dict(base, batch_sizes=[4]), tmp_path, said.append, "baseline")
    assert [(r["bundle"], r["precision"]) for r in rows] == [("this", "fp32"), ("this", "fp16"),
                                                            ("baseline", "fp32"), ("baseline", "fp16")]
    assert all("error" not in r for r in rows), rows
    assert sorted(rows[0]["batch"]) == ["1", "4"] and rows[0]["candidates"] == 4
    for m in rows[0]["batch"].values():
        assert m["prompts"] >= 3 and m["candidates_per_second"] > 0 and m["p95_ms"] >= m["p50_ms"] > 0
    assert rows[0]["peak_rss_mb"] > 10
    lines = format_reward(rows, 1.0)
    assert lines[0] == "reward loop: best-of-4, 1 s clips, a new prompt each time"
    ratio_of = {(line.split()[0], line.split()[2], line.split()[3]): line.split()[-1] for line in lines[2:]}
    assert ratio_of["baseline", "fp32", "4"] == "1.00"                      # the base itself
    assert ratio_of["this", "fp32", "1"] == "nan"                           # no baseline at batch 1
    expected = rows[0]["batch"]["4"]["candidates_per_second"] / rows[2]["batch"]["4"]["candidates_per_second"]
    assert float(ratio_of["this", "fp32", "4"]) == pytest.approx(expected, abs=0.006)
    assert said[0] == "measuring the reward loop: this onnxruntime-cpu fp32 ..."


def _row(label, precision, cps_times, candidates=4):
    return {"bundle": label, "backend": "onnxruntime-cpu", "precision": precision, "candidates": candidates,
            "peak_rss_mb": 100.0 + len(cps_times),
            "batch": {"8": {"candidates_per_second": candidates / np.mean(cps_times), "times_s": cps_times}}}


def test_rounds_merge_over_all_prompts_and_ratios_are_per_round():
    from deramos.bench.cli import format_reward, merge_rounds, round_ratios

    this = merge_rounds([_row("this", "int8", [1.0, 1.0]), _row("this", "int8", [2.0, 2.0, 2.0])])
    base = merge_rounds([_row("baseline", "fp32", [2.0, 2.0]), _row("baseline", "fp32", [8.0, 8.0])])
    m = this["batch"]["8"]
    assert this["rounds"] == 2 and m["prompts"] == 5 and this["peak_rss_mb"] == pytest.approx(103.0)
    assert m["candidates_per_second"] == pytest.approx(4 / 1.6)           # all prompts' mean time, not a mean of rates
    assert m["rounds_cps"] == pytest.approx([4.0, 2.0]) and m["p50_ms"] == pytest.approx(2000.0)
    # round 1: 4 vs 2 cand/s, round 2: 2 vs 0.5; the pooled rates would say 2.5 / 0.8 = 3.1
    assert round_ratios(this, base, "8") == pytest.approx([2.0, 4.0])
    assert round_ratios(this, base, "1") == [] and round_ratios(this, None, "8") == []
    lines = format_reward([this, base], 10.0)
    assert lines[0] == "reward loop: best-of-4, 10 s clips, a new prompt each time; 2 interleaved rounds"
    assert lines[1].endswith("x base  rounds")
    assert lines[2].split()[-2:] == ["3.00", "2.00-4.00"] and lines[3].split()[-2:] == ["1.00", "1.00-1.00"]
    failed = {"bundle": "this", "backend": "onnxruntime-cpu", "precision": "int8", "error": "worker failed: boom"}
    assert merge_rounds([_row("this", "int8", [1.0]), failed]) == failed


def test_reward_rounds_interleave_bundles(runtime_bundle, tmp_path):
    from deramos.bench.cli import make_inputs, reward_rounds
    from deramos.runtime.bundle import load_bundle

    bundle = load_bundle(runtime_bundle)
    make_inputs(bundle, 4, 1.0, tmp_path / "inputs.npz")
    base = {"inputs": str(tmp_path / "inputs.npz"), "batch_sizes": [4], "seconds": 0.1, "threads": 1, "candidates": 4}
    said = []
    rows = reward_rounds([("this", bundle), ("baseline", bundle)], base, tmp_path, said.append, rounds=2)
    assert said == [f"measuring the reward loop: {label} onnxruntime-cpu {precision} (round {k} of 2) ..."
                    for k in (1, 2) for label in ("this", "baseline") for precision in ("fp32", "fp16")]
    assert [(r["bundle"], r["precision"], r["rounds"]) for r in rows] == [
        ("this", "fp32", 2), ("this", "fp16", 2), ("baseline", "fp32", 2), ("baseline", "fp16", 2)]
    m = rows[0]["batch"]["4"]
    assert len(m["rounds_cps"]) == 2 and all(c > 0 for c in m["rounds_cps"]) and m["prompts"] >= 6


def test_graph_rows_count_the_bundles_own_flops(runtime_bundle, tmp_path):
    """The ONNX Runtime rows' GFLOP/s come from the bundle's graphs (what they run), PyTorch
    eager's from the model the code builds; the bundle's count follows the clip's length."""
    from deramos.bench.cli import bundle_flops_per_clip, format_table, make_inputs
    from deramos.runtime.bundle import load_bundle

    bundle = load_bundle(runtime_bundle)
    counts = {}
    for seconds in (1.0, 2.0):
        make_inputs(bundle, 1, seconds, tmp_path / f"inputs-{seconds}.npz")
        counts[seconds] = bundle_flops_per_clip(bundle, tmp_path / f"inputs-{seconds}.npz")
    assert counts[1.0] > 1e6 and 1.5 < counts[2.0] / counts[1.0] < 2.5

    def row(backend, clips_per_second):
        return {"backend": backend, "precision": "fp32", "peak_rss_mb": 100.0,
                "batch": {"1": {"clips_per_second": clips_per_second, "p50_ms": 1.0, "p95_ms": 2.0}}}
    report = {"rows": [row("torch-eager", 1.0), row("onnxruntime-cpu", 3.0)], "flops_per_clip": 2e9,
              "bundle_flops_per_clip": 1e9, "matmul_gflops": 100.0, "threads": 2, "clip_seconds": 10.0}
    lines = format_table(report).splitlines()
    assert float(lines[1].split()[-1]) == pytest.approx(2.0)      # eager: 2 GFLOP x 1 clip/s
    assert float(lines[2].split()[-1]) == pytest.approx(3.0)      # the bundle: 1 GFLOP x 3 clips/s
    assert lines[4].startswith("this bundle's audio and text encoder graphs: 1.0 GFLOP per clip")

"""The torch-free build stage, the comparator, INT8 targets and the bundle self-check."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from deramos.build.stage import BuildOptions, build_bundle
from deramos.runtime import compare as cmp
from deramos.runtime import targets
from deramos.runtime.bundle import BundleError, load_bundle

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# A child interpreter in which `import torch` fails as it does where torch is not installed.
NO_TORCH = """
import importlib.abc, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name == "transformers":
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, _NoTorch())
"""


def _run(args, **kw):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, **kw)


# -- INT8 targets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, kind", [("fpu sse2 avx2 fma", "x86-avx2"), ("avx2 avx512f avx512_vnni", "x86-vnni"),
                                         ("avx2 avx_vnni", "x86-vnni"), ("avx2 amx_int8 amx_tile", "x86-vnni")])
def test_cpu_flags_decide_the_x86_kind(tmp_path, monkeypatch, flags, kind):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert targets.cpu_flags(cpuinfo) == set(flags.split())
    monkeypatch.setattr(targets, "cpu_flags", lambda: set(flags.split()))
    targets.cpu_kind.cache_clear()
    try:
        monkeypatch.setattr(targets.platform, "machine", lambda: "x86_64")
        assert targets.cpu_kind() == kind
        assert targets.default_int8_target() == "x86-avx2"     # right on every x86 CPU
    finally:
        targets.cpu_kind.cache_clear()


def test_this_machine_is_described():
    flags = targets.cpu_flags()
    kind = targets.cpu_kind()
    print(f"\nthis CPU: {kind} ({' '.join(sorted(flags & (targets.VNNI_FLAGS | {'avx2', 'avx512f'})))})", end="")
    assert kind in ("x86-avx2", "x86-vnni", "arm64")
    assert (kind == "x86-vnni") == bool(flags & targets.VNNI_FLAGS)


def test_int8_mismatch_lines():
    assert targets.int8_mismatch("x86-avx2", "cpu", cpu="x86-vnni") is None
    assert targets.int8_mismatch("x86-avx2", "cpu", cpu="x86-avx2") is None
    assert targets.int8_mismatch(None, "cpu", cpu="x86-avx2") is None
    line = targets.int8_mismatch("x86-vnni", "cpu", cpu="x86-avx2")
    assert line == ("INT8 graphs were made for x86-vnni; this CPU has no VNNI, so their full-range weights can "
                    "saturate its INT8 kernels (scores drift): rebuild with --int8-target x86-avx2")
    assert targets.int8_mismatch("x86-avx2", "cpu", cpu="arm64").endswith("rebuild with --int8-target arm64 for its kernels")
    assert "not TensorRT" in targets.int8_mismatch("x86-avx2", "cuda")
    assert targets.int8_mismatch("tensorrt", "cuda") is None
    with pytest.raises(ValueError, match="unknown INT8 target 'sse'"):
        targets.int8_scheme("sse")


def test_build_target_note_names_a_drift_check_on_saturating_kernels():
    line = targets.build_target_note("x86-vnni", cpu="x86-avx2")
    assert line.startswith("this CPU has no VNNI: its INT8 kernels saturate the full-range x86-vnni graphs")
    assert "tensorrt graphs" in targets.build_target_note("tensorrt", cpu="x86-avx2")
    for target, cpu in (("x86-vnni", "x86-vnni"), ("x86-avx2", "x86-avx2"), ("x86-avx2", "x86-vnni"), ("arm64", "arm64")):
        assert targets.build_target_note(target, cpu=cpu) is None


# -- the comparator against scipy ------------------------------------------------------------------


def test_agreement_against_scipy():
    rng = np.random.default_rng(0)
    ref = rng.uniform(1, 5, 200)
    cand = ref + rng.normal(0, 0.1, 200) + 0.03
    a = cmp.agreement(ref, cand)
    assert a.n == 200
    assert a.srcc == pytest.approx(stats.spearmanr(cand, ref).statistic, abs=1e-12)
    assert a.ktau == pytest.approx(stats.kendalltau(cand, ref).statistic, abs=1e-12)
    assert a.mae == pytest.approx(np.abs(cand - ref).mean()) and a.max_abs == pytest.approx(np.abs(cand - ref).max())
    assert a.spread == pytest.approx(ref.std()) and a.rel_noise == pytest.approx((cand - ref).std() / ref.std())
    low, high = a.srcc_ci
    assert low < a.srcc < high and high - low < 0.02
    # A constant offset reorders nothing: no relative drift, only the absolute gates see it.
    shifted = cmp.agreement(ref, ref + 0.04)
    assert shifted.rel_noise == pytest.approx(0.0, abs=1e-9) and shifted.srcc == 1.0
    assert shifted.failures("MI", cmp.TOLERANCES["fp16"]) == []
    assert shifted.failures("MI", cmp.Tolerance(max_abs=0.01)) == ["MI: max |Δ| 0.04 > 0.01"]


def test_rank_gate_only_where_scores_spread():
    rng = np.random.default_rng(1)
    flat = 3.0 + rng.normal(0, 0.001, 64)                    # an untrained model: scores hardly vary
    noisy = flat + rng.normal(0, 0.0005, 64)
    a = cmp.agreement(flat, noisy)
    assert a.spread < cmp.MIN_SPREAD and a.srcc < 0.97
    failures = a.failures("TA", cmp.TOLERANCES["int8"])
    assert len(failures) == 1 and failures[0].startswith("TA: drift std is 0.")          # not an SRCC line
    spread = 3.0 + rng.normal(0, 0.5, 64)
    shuffled = cmp.agreement(spread, spread + rng.normal(0, 0.3, 64)).failures("TA", cmp.TOLERANCES["int8"])
    assert any(f.startswith("TA: SRCC ") and "95% CI" in f and "64 clips" in f for f in shuffled)


def test_system_rows_need_three_systems_of_two_clips():
    ref = {"MI": np.arange(6.0), "TA": np.arange(6.0)}
    one_each = cmp.compare_scores(ref, ref, precision="fp16", candidate_name="c", reference_name="r", source="s",
                                  systems=list("abcdef"))
    assert one_each.systems == {}
    pairs = cmp.compare_scores(ref, ref, precision="fp16", candidate_name="c", reference_name="r", source="s",
                               systems=list("aabbcc"))
    assert set(pairs.systems) == {"MI", "TA"} and pairs.systems["MI"].n == 3 and pairs.passed


# -- the build stage (torch-free) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def fp32_bundle(export_model, tmp_path_factory):
    """An FP32-only bundle of the export tests' model (probe clips included)."""
    from deramos.export.api import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("fp32") / "bundle"
    export_bundle(export_model, out, ExportOptions(validate_clips=8, progress=False), say=lambda _: None)
    return out


def test_export_writes_probes_with_fp32_scores(fp32_bundle):
    bundle = load_bundle(fp32_bundle)
    assert bundle.precisions() == ["fp32"]
    index = json.loads((fp32_bundle / "probes" / "probes.json").read_text())
    assert len(index["clips"]) == 32 and index["sample_rate"] == bundle.sample_rate
    assert all(f"probes/{n:02d}.flac" in bundle.files for n in range(32))
    mi, ta = (np.array([c[k] for c in index["clips"]]) for k in ("mi", "ta"))
    assert mi.std() > 0.001 and ta.std() > 0.02 and np.all((mi >= 1) & (mi <= 5)) and np.all((ta >= 1) & (ta <= 5))
    # The stored scores are what the FP32 graphs give for these very files.
    from deramos.runtime.scorer import Scorer

    with Scorer.load(fp32_bundle, backend="onnxruntime-cpu") as scorer:
        again = scorer.score_batch([str(fp32_bundle / c["file"]) for c in index["clips"]], [c["prompt"] for c in index["clips"]])
    assert np.abs(np.array([s.mi for s in again]) - mi).max() < 1e-5


def test_build_without_torch_adds_fp16_and_int8_that_pass(fp32_bundle, tmp_path):
    """deramos-build in an interpreter where torch cannot be imported: FP16 + INT8 graphs that
    pass the comparator, then `deramos-run --self-check` passes on each precision."""
    root = Path(shutil.copytree(fp32_bundle, tmp_path / "bundle"))
    code = NO_TORCH + "import sys; from deramos.build.cli import main; sys.argv = ['deramos-build'] + sys.argv[1:]; main()"
    done = _run([sys.executable, "-c", code, str(root), "--fp16", "--int8", "--calib", "probes"])
    assert done.returncode == 0, done.stderr
    assert "int8: PASS" in done.stderr and "fp16: PASS" in done.stderr
    assert "calibrating on 32 clips from" in done.stderr and "probe clips" in done.stderr
    manifest = load_bundle(root).as_json()
    assert load_bundle(root).precisions() == ["fp32", "fp16", "int8"]
    assert manifest["int8"]["target"] == "x86-avx2" and manifest["int8"]["scheme"]["weight_bits"] == 7
    assert manifest["checks"]["int8"]["clips"] == 64 and manifest["checks"]["int8"]["passed"]
    # Speed on this machine, every kept precision against FP32 (whichever is faster here).
    speed = manifest["speed"]
    assert sorted(speed["seconds_per_batch"]) == ["fp16", "fp32", "int8"] and speed["batch"] == 8
    assert all(t > 0 for t in speed["seconds_per_batch"].values())
    assert speed["vs_fp32"]["int8"] == pytest.approx(speed["seconds_per_batch"]["fp32"] / speed["seconds_per_batch"]["int8"])
    line = next(l for l in done.stderr.splitlines() if l.startswith("speed here (onnxruntime-cpu, 8 windows per batch, 2 per audio-encoder run): fp32 "))
    assert ("not faster than fp32 on this CPU" in line) == any(r < 1 for r in speed["vs_fp32"].values())
    for precision in ("fp32", "fp16", "int8"):
        check = _run([sys.executable, "-c", NO_TORCH + "from deramos.runtime.cli import main; main()",
                      "--bundle", str(root), "--precision", precision, "--self-check", "--backend", "onnxruntime-cpu"])
        assert check.returncode == 0, (precision, check.stdout, check.stderr)
        assert check.stdout.startswith(f"onnxruntime-cpu ({precision}") and "vs stored FP32 outputs on 32 clips" in check.stdout
        assert check.stdout.rstrip().endswith("PASS")


def _broken_int8(fp32_bundle: Path, target: Path) -> Path:
    """A bundle whose INT8 audio encoder was quantised with ranges 1000x too small (every
    activation clips), hashes recomputed: it loads, runs, and is wrong."""
    from deramos.build.onnxio import save_onnx
    from deramos.calibration.quantize import quantize

    root = Path(shutil.copytree(fp32_bundle, target))
    build_bundle(root, BuildOptions(int8=True, calib="probes", check=False))
    ranges = json.loads((root / "calibration" / "audio_encoder.ranges.json").read_text())["ranges"]
    tiny = {k: [(np.asarray(lo) / 1000).tolist(), (np.asarray(hi) / 1000).tolist()] for k, (lo, hi) in ranges.items()}
    save_onnx(quantize(root / "audio_encoder.onnx", tiny, "minmax", "x86-avx2"), root / "audio_encoder.int8.onnx")
    load_bundle(root, verify=False).save()
    return root


REAL_CLIPS = Path(__file__).parent / "data" / "realmusic_clean" / "clips.jsonl"


def test_shipped_real_clips_travel_with_the_bundle_and_calibrate_int8(fp32_bundle, tmp_path):
    """--ship-calib copies real clips (and their SOURCES.md) into the bundle, hashed; INT8 then
    calibrates on them by default, without torch, from the bundle alone; a changed clip is refused."""
    import hashlib

    code = NO_TORCH + "import sys; from deramos.build.cli import main; sys.argv = ['deramos-build'] + sys.argv[1:]; main()"
    shipped = tmp_path / "shipped"
    done = _run([sys.executable, "-c", code, str(fp32_bundle), "--ship-calib", str(REAL_CLIPS), "--out", str(shipped)])
    assert done.returncode == 0, done.stderr
    assert f"shipping 48 calibration clips from {REAL_CLIPS} in calibration/clips/" in done.stderr
    files = load_bundle(shipped).files
    listed = {n for n in files if n.startswith("calibration/clips/")}
    assert len(listed) == 48 + 2 and {"calibration/clips/clips.jsonl", "calibration/clips/SOURCES.md"} <= listed
    for name in listed:
        assert files[name] == hashlib.sha256((shipped / name).read_bytes()).hexdigest()
    rows = [json.loads(line) for line in (shipped / "calibration/clips/clips.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [json.loads(line)["prompt"] for line in REAL_CLIPS.read_text().splitlines()]

    built = tmp_path / "int8"
    done = _run([sys.executable, "-c", code, str(shipped), "--int8", "--calib-clips", "8", "--no-speed",
                 "--out", str(built)])
    assert done.returncode in (0, 1), done.stderr        # the tiny test model's INT8 may miss; calibration is the point
    assert f"calibrating on 8 clips from {shipped / 'calibration/clips/clips.jsonl'}" in done.stderr

    clip = shipped / "calibration/clips" / rows[0]["path"]
    clip.write_bytes(clip.read_bytes()[:-1] + b"\0")
    with pytest.raises(BundleError, match=r"calibration/clips/.*sha256"):
        load_bundle(shipped)
    done = _run([sys.executable, "-m", "deramos.build.cli", str(fp32_bundle), "--ship-calib", str(tmp_path / "no.jsonl"),
                 "--out", str(tmp_path / "never")])
    assert done.returncode == 2 and not (tmp_path / "never").exists()


def test_self_check_fails_on_a_broken_int8_graph(fp32_bundle, tmp_path):
    from deramos.runtime.scorer import Scorer, SelfCheckFailed

    root = _broken_int8(fp32_bundle, tmp_path / "broken")
    done = _run([sys.executable, "-m", "deramos.runtime.cli", "--bundle", str(root), "--precision", "int8", "--self-check"])
    assert done.returncode == 1, (done.stdout, done.stderr)
    last = done.stdout.rstrip().splitlines()[-1]
    assert last.startswith("FAIL: ") and "drift std is" in last, done.stdout
    assert "Traceback" not in done.stderr
    # the report says how much of each INT8 graph is INT8 (the build stage's count, in the manifest)
    share = load_bundle(root, verify=False).manifest.int8["quantized"]["audio_encoder"]
    assert f"graph audio_encoder  int8_ops {share['quantized_ops']}  of_ops {share['quantizable_ops']}  " \
           f"int8_weight_share {share['quantized_weight_share']:.4g}  int8_flop_share {share['quantized_flop_share']:.4g}" \
           in done.stdout
    with pytest.raises(SelfCheckFailed, match=r"self-check failed for onnxruntime-cpu \(int8"):
        Scorer.load(root, backend="onnxruntime-cpu", precision="int8", self_check=True)
    # FP32 from the same bundle is still right.
    with Scorer.load(root, backend="onnxruntime-cpu", self_check=True) as scorer:
        assert scorer.self_check_report.passed and scorer.self_check_report.scores["MI"].max_abs < 1e-4


def test_failed_check_keeps_what_passed(fp32_bundle, tmp_path, monkeypatch):
    """INT8 misses a (configured, impossible) tolerance: the bundle keeps FP32 + FP16, the INT8
    files are gone, the failed report stays in the manifest, and the CLI exits 1."""
    monkeypatch.setitem(cmp.TOLERANCES, "int8", cmp.Tolerance(max_abs=0.0))
    root = Path(shutil.copytree(fp32_bundle, tmp_path / "bundle"))
    result = build_bundle(root, BuildOptions(fp16=True, int8=True, calib="probes"))
    assert result.failed == ["int8"]
    bundle = load_bundle(root)
    manifest = bundle.as_json()
    assert bundle.precisions() == ["fp32", "fp16"]
    assert not (root / "audio_encoder.int8.onnx").exists() and "int8" not in manifest and bundle.manifest.int8 is None
    assert manifest["checks"]["int8"]["passed"] is False
    assert manifest["checks"]["int8"]["failures"][0].startswith("MI: max |Δ| ")
    assert manifest["checks"]["fp16"]["passed"] is True
    assert sorted(manifest["speed"]["seconds_per_batch"]) == ["fp16", "fp32"]   # a dropped precision is not timed


def test_speed_report_says_which_precision_does_not_pay():
    from deramos.build.speed import SpeedReport

    report = SpeedReport(8, {"fp32": 0.100, "fp16": 0.050, "int8": 0.125})
    assert report.ratio("fp16") == pytest.approx(2.0) and report.ratio("int8") == pytest.approx(0.8)
    assert report.slower() == ["int8"]
    assert report.format() == ("speed here (onnxruntime-cpu, 8 windows per batch, 2 per audio-encoder run): fp32 100 ms, fp16 50 ms (2.00x), "
                               "int8 125 ms (0.80x); int8 not faster than fp32 on this CPU: serve fp32 here")


def test_build_cli_errors_are_one_line(tmp_path):
    done = _run([sys.executable, "-m", "deramos.build.cli", str(tmp_path / "absent"), "--int8"])
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'absent'}: bundle directory not found"
    done = _run([sys.executable, "-m", "deramos.build.cli", str(tmp_path)])
    assert done.returncode == 2 and "nothing to build: give --fp16, --int8, --trt and/or --ship-calib" in done.stderr


@pytest.mark.slow
def test_int8_search_keeps_the_costliest_layers_fp32(fp32_bundle, tmp_path):
    """Per-layer sensitivity, then the costliest layers kept FP32 until the target is met."""
    from deramos.build.search import quantisable_layers, search_exclusions
    from deramos.calibration.dataset import ClipSet
    from deramos.calibration.quantize import op_flops, quantized_share
    from deramos.runtime.audio import load_audio
    from deramos.runtime.probes import load_probes

    root = Path(shutil.copytree(fp32_bundle, tmp_path / "bundle"))
    build_bundle(root, BuildOptions(int8=True, calib="probes", check=False))
    bundle = load_bundle(root, verify=False)
    ranges = json.loads((root / "calibration" / "audio_encoder.ranges.json").read_text())["ranges"]
    probes = load_probes(bundle)
    clips = ClipSet([load_audio(f, bundle.sample_rate) for f in probes.files[:12]], probes.prompts[:12], source="probes")
    layers = quantisable_layers(root / "audio_encoder.onnx")
    assert len(layers) >= 4 and all(nodes for nodes in layers.values())

    loose = search_exclusions(bundle, "audio_encoder", ranges, "minmax", "x86-avx2", clips, cmp.Tolerance(rel_noise=10.0))
    assert loose.kept_fp32 == [] and loose.comparison.passed and loose.sensitivity == {}   # nothing to search
    full = loose.comparison.scores["MI"].rel_noise + loose.comparison.scores["TA"].rel_noise
    assert full > 0
    said = []
    strict = search_exclusions(bundle, "audio_encoder", ranges, "minmax", "x86-avx2", clips,
                               cmp.Tolerance(max_abs=1e-6), say=said.append)   # only FP32 would meet it
    costliest = sorted(layers, key=lambda layer: -strict.sensitivity[layer])
    assert strict.kept_fp32 == costliest[:-1]          # all but one layer: FP32 everywhere is not INT8
    assert not strict.comparison.passed and strict.seconds_per_batch == {}
    assert strict.comparison.failures[0] == (
        f"audio_encoder: the INT8 search found no passing graph with any layer left in INT8 "
        f"({len(layers) - 1} of {len(layers)} layers kept FP32 still miss the tolerance)")
    share = quantized_share(root / "audio_encoder.int8.onnx")          # what is on disk is still INT8
    assert share["quantized_ops"] >= 1 and share["qdq_nodes"] >= 2
    assert any("INT8 sensitivity of" in line for line in said)
    assert strict.to_dict()["kept_nodes"] == [n for layer in strict.kept_fp32 for n in layers[layer]]
    assert strict.to_dict()["passed"] is False

    # a tolerance the all-INT8 graph just meets: searched as is, nothing is kept FP32; with a
    # margin that the all-INT8 graph misses, the search keeps layers until the stricter one is met
    worst = max(loose.comparison.scores[k].rel_noise for k in ("MI", "TA"))
    just = cmp.Tolerance(rel_noise=worst * 1.05)
    assert search_exclusions(bundle, "audio_encoder", ranges, "minmax", "x86-avx2", clips, just).kept_fp32 == []
    stricter = search_exclusions(bundle, "audio_encoder", ranges, "minmax", "x86-avx2", clips, just.tightened(0.5))
    assert stricter.kept_fp32 and stricter.comparison.passed
    assert max(stricter.comparison.scores[k].rel_noise for k in ("MI", "TA")) <= worst * 1.05 * 0.5
    assert set(stricter.seconds_per_batch) == {"fp32", "int8_all_layers", "int8_searched"}

    # counted in FLOPs, the same result is not INT8 when the work must stay integer
    flops = op_flops(root / "audio_encoder.onnx", {"waveform": np.zeros((1, bundle.window_samples), np.float32),
                                                   "lengths": np.array([bundle.window_samples], np.int64)})
    assert set(flops) >= {n for nodes in layers.values() for n in nodes} and min(flops.values()) > 0
    demanding = search_exclusions(bundle, "audio_encoder", ranges, "minmax", "x86-avx2", clips, just.tightened(0.5),
                                  flops=flops, min_flop_share=0.999)
    assert demanding.kept_fp32 and not demanding.comparison.passed
    assert re.fullmatch(r"audio_encoder: the passing graph keeps \d+\.\d% of the FLOPs in INT8 \(< 100%\): "
                        r"\d+ of \d+ layers FP32; not INT8", demanding.comparison.failures[0])


def test_a_tightened_tolerance_takes_the_margin_off_every_allowance():
    int8 = cmp.TOLERANCES["int8"].tightened(0.3)
    assert (int8.mae, int8.rel_noise, int8.srcc, int8.max_abs) == pytest.approx((0.105, 0.14, 0.979, None))
    assert cmp.TOLERANCES["fp32"].tightened(0.5).max_abs == pytest.approx(5e-4)
    assert cmp.TOLERANCES["int8"].tightened(0.0) == cmp.TOLERANCES["int8"]
    with pytest.raises(ValueError, match="margin 1.0: must be in"):
        cmp.TOLERANCES["int8"].tightened(1.0)


def test_search_margin_out_of_range_is_refused_before_anything_is_built(tmp_path):
    from click.testing import CliRunner

    from deramos.build.cli import main

    result = CliRunner().invoke(main, [str(tmp_path), "--int8", "--int8-search", "--int8-search-margin", "1"])
    assert result.exit_code == 2 and "--int8-search-margin" in result.output and "0<=x<1" in result.output.replace(" ", "")
    assert list(tmp_path.iterdir()) == []

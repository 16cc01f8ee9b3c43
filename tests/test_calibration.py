"""INT8: QDQ graphs, the drift report, the calibration cache, calibration sources and methods."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from deramos.build.onnxio import save_onnx
from deramos.build.stage import BuildOptions, build_bundle
from deramos.calibration import quantize as q
from deramos.calibration.dataset import held_out_set, load_calibration_set
from deramos.export.api import ExportOptions
from deramos.runtime.bundle import GRAPHS, load_bundle, sha256_file
from deramos.runtime.contract import INT8_DEFAULT_GRAPHS, TOLERANCES
from deramos.runtime.metrics import spearman
from deramos.runtime.text import PromptTokenizer

pytestmark = pytest.mark.usefixtures("torch_single_thread")

QDQ = ("QuantizeLinear", "DequantizeLinear")
FRONTEND = "/encoder/frontend/"


@pytest.fixture(scope="module")
def bundle(export_bundle_dir):
    root, manifest, _ = export_bundle_dir
    return root, manifest


@pytest.fixture(scope="module")
def tok(bundle):
    return PromptTokenizer(bundle[0] / "tokenizer.json", bundle[1]["tokenizer"]["max_tokens"])


def _ort(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


BOTH = ("audio_encoder", "text_encoder")   # the shared bundle quantises both (tests/conftest.py)


# -- the INT8 graphs -------------------------------------------------------------------------------


def test_default_int8_quantises_the_audio_encoder_only():
    assert ExportOptions().build.int8_graphs == INT8_DEFAULT_GRAPHS == ("audio_encoder",)


def test_int8_files_and_heads_entry(bundle):
    root, manifest = bundle
    for graph in ("audio_encoder", "text_encoder"):
        assert manifest["graphs"][graph]["files"]["int8"] == [f"{graph}.int8.onnx"]
        assert (root / f"{graph}.int8.onnx").is_file()
    assert manifest["graphs"]["heads"]["files"]["int8"] == ["heads.onnx"]
    assert not (root / "heads.int8.onnx").exists()
    assert manifest["int8"]["quantized_graphs"] == ["audio_encoder", "text_encoder"]
    assert manifest["int8"]["method"] == "minmax"
    assert manifest["int8"]["target"] == "x86-avx2"        # the default on any x86 build machine
    assert manifest["int8"]["scheme"] == {"activations": "int8-symmetric", "weights": "int8-symmetric-per-channel",
                                          "weight_bits": 7, "conv_gemm": True,
                                          "default_ops": ["matmul", "conv-gemm"]}
    assert manifest["int8"]["quantized_ops"] == ["matmul", "conv-gemm"]
    # what of each graph is really INT8, counted from the files (calibration/quantize.py)
    from deramos.build.stage import _graph_flops
    from deramos.calibration.quantize import quantized_share
    from deramos.runtime.bundle import load_bundle

    import onnx

    for graph in ("audio_encoder", "text_encoder"):
        share = manifest["int8"]["quantized"][graph]
        assert {k: v for k, v in share.items() if "flop" not in k} == quantized_share(root / f"{graph}.int8.onnx")
        # a CPU target's default: every MatMul/Gemm outside the front-end, no convolution (this
        # model has none that can run as an integer GEMM; QDQ ones lose to FP32 on a CPU)
        fp32 = onnx.load(str(root / f"{graph}.onnx"), load_external_data=False).graph.node
        matmuls = [n for n in fp32 if n.op_type in ("MatMul", "Gemm") and not n.name.startswith(FRONTEND)]
        convs = [n for n in fp32 if n.op_type == "Conv" and not n.name.startswith(FRONTEND)]
        assert share["quantized_ops"] == len(matmuls) > 0 and share["integer_gemms"] == 0
        assert share["quantizable_ops"] == len(matmuls) + len(convs)
        assert (share["quantized_weight_share"] < 1.0) == bool(convs) and share["quantized_weight_share"] > 0.1
        # not every FLOP of the audio encoder: its convolutions and FP32-kept mel front-end count
        # too; the text encoder has neither
        assert share["gflop_per_window"] > 0
        assert (0.0 < share["quantized_flop_share"] < 1.0) if graph == "audio_encoder" else \
            share["quantized_flop_share"] == pytest.approx(1.0)
        assert share == quantized_share(root / f"{graph}.int8.onnx", _graph_flops(load_bundle(root), graph))
        assert share["qdq_nodes"] >= 2 * share["quantized_ops"]
    assert quantized_share(root / "heads.onnx")["quantized_ops"] == 0


@pytest.mark.parametrize("graph", ["audio_encoder", "text_encoder"])
def test_int8_graphs_are_symmetric_qdq(bundle, graph):
    import onnx
    from onnx import TensorProto, numpy_helper

    root, _ = bundle
    proto = onnx.load(str(root / f"{graph}.int8.onnx"))
    inits = {i.name: i for i in proto.graph.initializer}
    qdq = [n for n in proto.graph.node if n.op_type in QDQ]
    assert sum(n.op_type == "QuantizeLinear" for n in qdq) > 10
    assert sum(n.op_type == "DequantizeLinear" for n in qdq) > 10
    int8_weights = [i for i in proto.graph.initializer if i.data_type == TensorProto.INT8 and len(i.dims) >= 2]
    assert len(int8_weights) >= 4, "weights are not stored as int8"
    zero_points = []
    for node in qdq:
        assert len(node.input) == 3, f"{node.name}: no zero point"
        zero_points.append(numpy_helper.to_array(inits[node.input[2]]))
    assert all(np.all(z == 0) for z in zero_points), "asymmetric quantisation (a non-zero zero point)"
    assert {z.dtype.name for z in zero_points} <= {"int8", "int32"}      # int32: biases
    # Every quantised MatMul reads an int8 weight through a DequantizeLinear.
    produced_by = {o: n for n in proto.graph.node for o in n.output}
    matmuls = [n for n in proto.graph.node if n.op_type in ("MatMul", "Conv") and not n.name.startswith(FRONTEND)]
    fed = [n for n in matmuls if all(produced_by.get(i) is not None and produced_by[i].op_type == "DequantizeLinear"
                                     for i in n.input[:2])]
    assert len(fed) >= 4


@pytest.mark.parametrize("graph", ["audio_encoder", "text_encoder"])
def test_no_qdq_inside_the_frontend(bundle, graph):
    import onnx

    root, _ = bundle
    fp32 = onnx.load(str(root / f"{graph}.onnx"))
    int8 = onnx.load(str(root / f"{graph}.int8.onnx"))
    region = {(n.name, n.op_type) for n in fp32.graph.node if n.name.startswith(FRONTEND)}
    assert region == {(n.name, n.op_type) for n in int8.graph.node if n.name.startswith(FRONTEND)}
    if graph == "audio_encoder":
        assert len(region) > 20
    produced_by = {o: n for n in int8.graph.node for o in n.output}
    for node in int8.graph.node:
        if node.name.startswith(FRONTEND):
            for tensor in node.input:
                producer = produced_by.get(tensor)
                assert producer is None or producer.op_type not in QDQ, f"{node.name} reads {producer.name}"
        if node.op_type in QDQ:
            assert not node.name.startswith(FRONTEND), node.name
            # A Q/DQ pair may sit where a front-end tensor LEAVES the front-end, never between two of its nodes.
            consumers = [c for c in int8.graph.node if node.output[0] in c.input]
            assert not any(c.name.startswith(FRONTEND) for c in consumers), node.name


def test_int8_graphs_run_close_to_fp32(bundle, tok):
    root, _ = bundle
    rng = np.random.default_rng(3)
    wave = (0.1 * rng.standard_normal((3, 32000))).astype(np.float32)
    feeds = {"waveform": wave, "lengths": np.array([32000, 20000, 9000], np.int64)}
    (frames32, mask32), (frames8, mask8) = (_ort(root / f).run(None, feeds) for f in
                                            ("audio_encoder.onnx", "audio_encoder.int8.onnx"))
    np.testing.assert_array_equal(mask32, mask8)
    a, b = frames32[mask32].ravel(), frames8[mask8].ravel()
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.98
    assert not np.array_equal(a, b)                     # it is quantised, not a copy


# -- the drift report ------------------------------------------------------------------------------


def test_drift_report(bundle, export_bundle_dir):
    root, manifest = bundle
    report = manifest["checks"]["int8"]
    assert report["source"] == "synthetic held-out corpus: 64" and report["clips"] == 64   # = validate_clips
    assert report["tolerance"] == TOLERANCES["int8"].to_dict() == {"mae": 0.15, "rel_noise": 0.2, "srcc": 0.97}
    for level in ("utterance", "system"):
        for score in ("MI", "TA"):
            entry = report[level][score]
            assert set(entry) == {"n", "mae", "max_abs", "spread", "rel_noise", "srcc", "srcc_ci", "ktau"}, (level, score)
            assert entry["srcc_ci"][0] <= entry["srcc"] <= entry["srcc_ci"][1]
            print(f"\nint8 drift {level:9s} {score}: MAE {entry['mae']:.5f} max|d| {entry['max_abs']:.5f} spread "
                  f"{entry['spread']:.4f} SRCC {entry['srcc']:.4f} {entry['srcc_ci']}", end="")
    for score in ("MI", "TA"):
        entry = report["utterance"][score]
        assert entry["spread"] >= 0.02, "the fixture model's scores must spread for a ranking to mean something"
        assert entry["srcc"] >= 0.97 and entry["mae"] <= 0.15 and entry["rel_noise"] <= 0.2
    assert report["utterance"]["TA"]["spread"] >= 0.05     # the SRCC gate (MIN_SPREAD) is exercised
    assert set(report["graphs"]) == {"audio_encoder", "text_encoder", "heads"}
    assert report["graphs"]["heads"]["max_abs"] <= 1e-6      # the INT8 bundle keeps the FP32 heads
    assert 0.99 < report["graphs"]["audio_encoder"]["min_cosine"] < 1.0
    assert report["passed"] is True and report["failures"] == []
    said = export_bundle_dir[2]
    assert any(line.startswith("onnxruntime-cpu (int8") and " on 64 clips (synthetic held-out corpus: 64)" in line
               for line in said), said


def test_drift_report_numbers_are_reproducible(bundle, tok, export_model):
    """Recompute the utterance-level drift on the same held-out set, clip by clip with plain
    ONNX Runtime sessions (not the Scorer the report came from): the report tells the truth."""
    root, manifest = bundle
    cfg = export_model.cfg
    held = held_out_set(None, cfg.audio.sample_rate, cfg.audio.window_seconds, manifest["checks"]["int8"]["clips"],
                        seed=0 + 4242)                  # ExportOptions.seed + 4242, as the build does
    scores = {}
    for precision in ("fp32", "int8"):
        sessions = {g: _ort(root / manifest["graphs"][g]["files"][precision][0]) for g in GRAPHS}
        mi, ta = [], []
        for wave, prompt in zip(held.waves, held.prompts):
            frames, frame_mask = sessions["audio_encoder"].run(None, {"waveform": wave[None], "lengths": np.array([len(wave)])})
            ids, mask = tok.encode([prompt])
            (tokens,) = sessions["text_encoder"].run(None, {"input_ids": ids, "attention_mask": mask})
            out = sessions["heads"].run(None, {"frames": frames, "frame_mask": frame_mask, "tokens": tokens,
                                               "token_mask": mask})
            mi.extend(out[0]), ta.extend(out[1])
        scores[precision] = {"MI": np.array(mi), "TA": np.array(ta)}
    report = manifest["checks"]["int8"]["utterance"]
    for score in ("MI", "TA"):
        diff = np.abs(scores["fp32"][score] - scores["int8"][score])
        assert diff.mean() == pytest.approx(report[score]["mae"], rel=0.02, abs=1e-5)
        assert spearman(scores["int8"][score], scores["fp32"][score]) == pytest.approx(report[score]["srcc"], abs=0.01)


# -- the calibration cache -------------------------------------------------------------------------


def _ranges(root: Path, graph: str) -> dict:
    return json.loads(q.ranges_path(root, graph).read_text())


@pytest.fixture(scope="module")
def cache_runs(bundle, export_model, export_corpus, jsonl_source, tmp_path_factory):
    """Successive torch-free builds into one directory (a copy of the shared bundle):
    1. plain rebuild: the cache must be reused;
    2. audio_encoder's graph_sha256 edited: that cache is rebuilt (calibration: a JSONL file);
    3. text_encoder's ranges edited (key intact), --recalibrate: both rebuilt."""
    root = Path(shutil.copytree(bundle[0], tmp_path_factory.mktemp("cache") / "bundle"))
    before = {g: q.ranges_path(root, g).read_bytes() for g in BOTH}
    runs = {"before": before}

    said: list[str] = []
    build_bundle(root, BuildOptions(int8=True, check=False, int8_graphs=BOTH, calib_clips=32), say=said.append)
    manifest = load_bundle(root).as_json()
    runs["reuse"] = (manifest, said, {g: q.ranges_path(root, g).read_bytes() for g in BOTH})

    cached = _ranges(root, "audio_encoder")
    cached["graph_sha256"] = "0" * 64
    q.ranges_path(root, "audio_encoder").write_text(json.dumps(cached))
    said = []
    build_bundle(root, BuildOptions(int8=True, check=False, int8_graphs=BOTH, calib_clips=32), say=said.append)
    manifest = load_bundle(root).as_json()
    runs["mismatch"] = (manifest, said, {g: _ranges(root, g) for g in BOTH})
    runs["mismatch_sha"] = sha256_file(q.ranges_path(root, "audio_encoder"))

    said = []   # other calibration data asked for: both caches are rebuilt from it
    build_bundle(root, BuildOptions(int8=True, check=False, int8_graphs=BOTH, calib=str(jsonl_source), calib_clips=8),
                 say=said.append)
    manifest = load_bundle(root).as_json()
    runs["other_data"] = (manifest, said, {g: _ranges(root, g) for g in BOTH})

    cached = _ranges(root, "text_encoder")
    cached["ranges"] = {name: [[-123.0], [123.0]] for name in cached["ranges"]}
    q.ranges_path(root, "text_encoder").write_text(json.dumps(cached))
    said = []
    build_bundle(root, BuildOptions(int8=True, check=False, int8_graphs=BOTH, recalibrate=True, calib_clips=8),
                 say=said.append)
    manifest = load_bundle(root).as_json()
    runs["recalibrate"] = (manifest, said, {g: _ranges(root, g) for g in BOTH})
    runs["root"] = root
    return runs


def test_second_export_reuses_the_cache(cache_runs):
    manifest, said, after = cache_runs["reuse"]
    assert manifest["int8"]["reused_cache"] == {"audio_encoder": True, "text_encoder": True}
    assert after == cache_runs["before"], "a reused cache file was rewritten"
    assert sum("reusing calibration cache calibration/" in line for line in said) == 2
    assert not any(line.startswith("calibrating on") for line in said)


def test_cache_for_another_graph_is_rebuilt(cache_runs, bundle):
    manifest, said, after = cache_runs["mismatch"]
    root = cache_runs["root"]
    assert manifest["int8"]["reused_cache"] == {"audio_encoder": False, "text_encoder": True}
    assert after["audio_encoder"]["graph_sha256"] == sha256_file(root / "audio_encoder.onnx")
    assert after["audio_encoder"]["method"] == "minmax"
    assert any(line.startswith("calibrating on 32 clips from synthetic") for line in said), said
    assert manifest["int8"]["calibration_set"]["clips"] == 32
    assert manifest["files"]["calibration/audio_encoder.ranges.json"] == cache_runs["mismatch_sha"]


def test_cache_for_other_calibration_data_is_rebuilt(cache_runs):
    manifest, said, after = cache_runs["other_data"]
    assert manifest["int8"]["reused_cache"] == {"audio_encoder": False, "text_encoder": False}
    assert any(line.startswith("calibrating on 6 clips from ") and "clips.jsonl" in line
               and "(asked for 8; that is all it has)" in line for line in said), said
    assert manifest["int8"]["calibration_set"]["clips"] == 6
    assert all(after[g]["calib"].endswith("clips.jsonl") and after[g]["clips"] == 8 for g in after)


def test_recalibrate_rebuilds_the_cache(cache_runs):
    manifest, said, after = cache_runs["recalibrate"]
    assert manifest["int8"]["reused_cache"] == {"audio_encoder": False, "text_encoder": False}
    assert not any("reusing calibration cache" in line for line in said)
    ranges = after["text_encoder"]["ranges"]
    assert not all(v == [[-123.0], [123.0]] for v in ranges.values()), "--recalibrate kept the edited ranges"
    assert load_bundle(cache_runs["root"]).precisions() == ["fp32", "fp16", "int8"]   # the build adds, never drops what passed


def test_cache_key(tmp_path):
    path = tmp_path / "g.ranges.json"
    ranges = {"x": [[-1.0], [1.0]]}
    key = q.cache_key("abc", "minmax", None, 8)
    path.write_text(json.dumps(dict(key, ranges=ranges)))
    assert q.load_ranges(path, key) == ranges
    assert q.load_ranges(path, q.cache_key("abd", "minmax", None, 8)) is None       # another graph
    assert q.load_ranges(path, q.cache_key("abc", "entropy", None, 8)) is None      # another method
    assert q.load_ranges(path, q.cache_key("abc", "minmax", str(tmp_path), 8)) is None  # other data
    assert q.load_ranges(path, q.cache_key("abc", "minmax", None, 16)) is None      # more clips
    path.write_text("{broken")
    assert q.load_ranges(path, key) is None
    assert q.load_ranges(tmp_path / "absent.json", key) is None


# -- calibration sources ---------------------------------------------------------------------------


def _jsonl(folder: Path, wavs: list[Path], extra: dict[int, str]) -> Path:
    """Good lines for `wavs` (relative and absolute paths), with `extra` lines inserted at
    the given 0-based positions."""
    (folder / "audio").mkdir(exist_ok=True)
    lines = []
    for i, wav in enumerate(wavs):
        if i % 2:
            lines.append(json.dumps({"path": str(wav), "prompt": f"clip {i} calm piano"}))
        else:
            shutil.copyfile(wav, folder / "audio" / wav.name)
            lines.append(json.dumps({"path": f"audio/{wav.name}", "prompt": f"clip {i} calm piano"}))
    for position, line in sorted(extra.items()):
        lines.insert(position, line)
    path = folder / "clips.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def jsonl_source(export_corpus, tmp_path_factory):
    """6 good lines and 3 bad ones: not JSON (line 3), an empty line (5), a missing file (9)."""
    wavs = sorted((export_corpus / "wav").glob("*.wav"))[:6]
    return _jsonl(tmp_path_factory.mktemp("jsonl"), wavs, {2: "{this is not json", 4: "",
                                                           8: json.dumps({"path": "audio/absent.wav", "prompt": "gone"})})


def test_source_musiceval_dir(export_corpus):
    clips = load_calibration_set(str(export_corpus), 16000, 6.0, limit=8)
    assert len(clips.waves) == len(clips.prompts) == len(clips.systems) == 8
    assert clips.problems == [] and "train" in clips.source
    assert all(w.dtype == np.float32 and 1.5 * 16000 <= len(w) <= 6 * 16000 for w in clips.waves)


def test_source_musiceval_held_out_corpus_without_a_train_split(export_corpus, tmp_path):
    """A held-out corpus (deramos-realmusic corpus --set heldout) lists only test clips: they are used."""
    import shutil

    held = tmp_path / "held"
    shutil.copytree(export_corpus, held)
    test_ids = (held / "sets" / "test_mos_list.txt").read_text()
    (held / "sets" / "train_mos_list.txt").write_text("")
    (held / "sets" / "dev_mos_list.txt").unlink()
    clips = load_calibration_set(str(held), 16000, 6.0, limit=64)
    assert len(clips.waves) == len(test_ids.split()) > 0
    assert clips.source == f"{held} (train+test)"
    (held / "sets" / "test_mos_list.txt").write_text("")
    assert load_calibration_set(str(held), 16000, 6.0, limit=64).waves == []


def test_source_jsonl_bad_lines_are_reported_not_fatal(jsonl_source):
    clips = load_calibration_set(str(jsonl_source), 16000, 6.0, limit=64)
    assert len(clips.waves) == 6
    assert clips.prompts == [f"clip {i} calm piano" for i in range(6)]
    assert len(clips.problems) == 2, clips.problems
    assert clips.problems[0] == f"{jsonl_source}:3: bad line (JSONDecodeError)"
    assert "absent.wav" in clips.problems[1] and "not found" in clips.problems[1]
    assert len(load_calibration_set(str(jsonl_source), 16000, 6.0, limit=4).waves) == 4


def test_source_jsonl_line_without_prompt_adds_no_clip(export_corpus, tmp_path):
    wavs = sorted((export_corpus / "wav").glob("*.wav"))[:3]
    path = _jsonl(tmp_path, wavs, {1: json.dumps({"path": str(wavs[2])})})    # line 2: no prompt
    clips = load_calibration_set(str(path), 16000, 6.0, limit=64)
    assert clips.problems == [f"{path}:2: bad line (KeyError)"]
    assert clips.prompts == ["clip 0 calm piano", "clip 1 calm piano", "clip 2 calm piano"]
    assert len(clips.waves) == len(clips.prompts) == 3


def test_export_reports_bad_calibration_lines(cache_runs):
    manifest, said, _ = cache_runs["other_data"]
    text = "\n".join(said) + json.dumps(manifest["int8"])
    assert "bad line" in text and "absent.wav" in text


def test_source_folder_with_prompts_txt(export_corpus, tmp_path):
    wavs = sorted((export_corpus / "wav").glob("*.wav"))[:4]
    tabbed = tmp_path / "tabbed"
    plain = tmp_path / "plain"
    for folder in (tabbed, plain):
        folder.mkdir()
        for wav in wavs:
            shutil.copyfile(wav, folder / wav.name)
    (tabbed / "prompts.txt").write_text("".join(f"{w.name}\tprompt for {w.stem}\n" for w in wavs[:3]))
    (plain / "prompts.txt").write_text("first prompt\n\nsecond prompt\n")
    clips = load_calibration_set(str(tabbed), 16000, 6.0, limit=64)
    assert clips.prompts == [f"prompt for {w.stem}" for w in wavs[:3]]
    assert clips.problems == [f"{wavs[3].name}: no prompt in prompts.txt"]
    clips = load_calibration_set(str(plain), 16000, 6.0, limit=64)
    assert clips.prompts == ["first prompt", "second prompt", "first prompt", "second prompt"]
    assert len(clips.waves) == 4 and clips.problems == []
    # A 44.1 kHz file is resampled to the model's rate.
    data, rate = sf.read(wavs[0])
    n44 = int(len(data) * 44100 / rate)
    sf.write(plain / "zz_44k.wav", np.interp(np.linspace(0, len(data) - 1, n44), np.arange(len(data)), data), 44100)
    clips = load_calibration_set(str(plain), 16000, 6.0, limit=64)
    assert len(clips.waves) == 5
    assert abs(len(clips.waves[-1]) - len(data) * 16000 / rate) <= 3
    with pytest.raises(FileNotFoundError, match="prompts.txt"):
        (tabbed / "prompts.txt").unlink()
        load_calibration_set(str(tabbed), 16000, 6.0, limit=64)


@pytest.mark.parametrize("kind", ["musiceval", "jsonl", "folder", "synthetic"])
def test_each_source_calibrates_both_encoders(kind, bundle, tok, export_corpus, jsonl_source, tmp_path):
    root, _ = bundle
    if kind == "folder":
        for wav in sorted((export_corpus / "wav").glob("*.wav"))[:4]:
            shutil.copyfile(wav, tmp_path / wav.name)
        (tmp_path / "prompts.txt").write_text("slow piano\nfast drums\n")
    spec = {"musiceval": str(export_corpus), "jsonl": str(jsonl_source), "folder": str(tmp_path), "synthetic": None}[kind]
    clips = load_calibration_set(spec, 16000, 6.0, limit=4, seed=0)
    assert len(clips.waves) == len(clips.prompts) == 4
    feeds = q.encoder_feeds(clips, tok)
    for graph in BOTH:
        ranges = q.calibrate(root / f"{graph}.onnx", feeds[graph], "minmax")
        target = tmp_path / f"{graph}.int8.onnx"
        save_onnx(q.quantize(root / f"{graph}.onnx", ranges, "minmax", "x86-avx2"), target)
        out = _ort(target).run(None, feeds[graph][0])[0]
        assert np.isfinite(out).all()


def test_source_synthetic(tmp_path):
    clips = load_calibration_set(None, 16000, 6.0, limit=6, seed=1)
    assert len(clips.waves) == 6 and all(p.strip() for p in clips.prompts)
    assert clips.source == "synthetic (rendered)"
    assert max(len(w) for w in clips.waves) == 6 * 16000
    with pytest.raises(FileNotFoundError):
        load_calibration_set(str(tmp_path / "nothing-here.txt"), 16000, 6.0, limit=6)


# -- calibration methods ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def method_feeds(tok):
    clips = load_calibration_set(None, 16000, 6.0, limit=8, seed=11)
    return {"minmax": q.encoder_feeds(clips, tok), "histogram": q.encoder_feeds(clips, tok, same_shapes=True)}


@pytest.mark.parametrize("method, graphs", [
    ("minmax", ("text_encoder", "audio_encoder")),
    ("percentile", ("text_encoder", "audio_encoder")),
    # entropy: text_encoder only (its threshold search costs ~0.3 s per tensor).
    pytest.param("entropy", ("text_encoder",), marks=pytest.mark.slow),
])
def test_calibration_method_produces_a_qdq_graph(bundle, method_feeds, tmp_path, method, graphs):
    import onnx

    root, _ = bundle
    for graph in graphs:
        feeds = method_feeds["minmax" if method == "minmax" else "histogram"][graph]
        ranges = q.calibrate(root / f"{graph}.onnx", feeds, method)
        assert ranges and all(np.all(np.isfinite(np.asarray(v, np.float64))) for v in ranges.values())
        json.dumps(ranges)                                      # storable in the cache
        target = tmp_path / f"{graph}.{method}.int8.onnx"
        assert save_onnx(q.quantize(root / f"{graph}.onnx", ranges, method, "x86-avx2"), target) == [target]
        ops = {n.op_type for n in onnx.load(str(target)).graph.node}
        assert set(QDQ) <= ops
        feeds = method_feeds["minmax" if method == "minmax" else "histogram"][graph][0]
        got = _ort(target).run(None, feeds)[0]
        want = _ort(root / f"{graph}.onnx").run(None, feeds)[0]
        assert got.shape == want.shape and np.isfinite(got).all()
        a, b = got.ravel().astype(np.float64), want.ravel().astype(np.float64)
        assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.95


def test_unknown_method_and_target_are_refused(bundle, tmp_path):
    root = Path(shutil.copytree(bundle[0], tmp_path / "bundle"))
    with pytest.raises(ValueError, match="unknown calibration method 'kl'; choose from minmax, entropy, percentile"):
        build_bundle(root, BuildOptions(int8=True, calib_method="kl"))
    with pytest.raises(ValueError, match="unknown INT8 target 'x86-sse'; choose from x86-avx2, x86-vnni, arm64, tensorrt"):
        build_bundle(root, BuildOptions(int8=True, int8_target="x86-sse"))


@pytest.mark.parametrize("target, limit", [("x86-avx2", 64), ("x86-vnni", 127), ("tensorrt", 127)])
def test_weight_range_follows_the_int8_target(bundle, method_feeds, target, limit):
    """x86 without VNNI: weights in 7 bits (|w| <= 64, no int16 saturation in VPMADDUBSW);
    the other targets use the full symmetric range."""
    from onnx import TensorProto, numpy_helper

    root, _ = bundle
    ranges = q.calibrate(root / "audio_encoder.onnx", method_feeds["minmax"]["audio_encoder"], "minmax")
    proto = q.quantize(root / "audio_encoder.onnx", ranges, "minmax", target)
    weights = [numpy_helper.to_array(i) for i in proto.graph.initializer if i.data_type == TensorProto.INT8 and len(i.dims) >= 2]
    assert len(weights) >= 4
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) in (limit - 1, limit)

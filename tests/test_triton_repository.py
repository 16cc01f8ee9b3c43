"""deramos-triton-repo: a native Triton model repository, checked against the bundle's graphs.

No Triton server with the onnxruntime backend runs here, so the checks are: every config.pbtxt
parses as Triton's ModelConfig, its tensors are the graphs' own (names, dtypes, dims), and the
ensemble's wiring, run step by step on the copied ONNX files, scores a window as the Scorer does."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from runtime_helpers import RATE, music

pytest.importorskip("tritonclient.grpc", reason="needs deramos[triton-client]")

from deramos.runtime.bundle import GRAPHS, load_bundle, sha256_file  # noqa: E402
from deramos.serve.repository import RepositoryOptions, main, validate_repository, write_repository  # noqa: E402

ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(int64)": "TYPE_INT64", "tensor(bool)": "TYPE_BOOL"}


@pytest.fixture(scope="module")
def repository(runtime_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("triton") / "repo"
    bundle = load_bundle(runtime_bundle)
    names = write_repository(bundle, out, RepositoryOptions(device="gpu", instances=2))
    return bundle, out, names, validate_repository(out)


def _type_name(config, value: int) -> str:
    return config.DESCRIPTOR.fields_by_name["input"].message_type.fields_by_name["data_type"].enum_type \
        .values_by_number[value].name


def test_every_precision_has_three_graphs_and_an_ensemble(repository):
    bundle, out, names, configs = repository
    assert bundle.precisions() == ["fp32", "fp16"]
    expected = [f"deramos_{g}{s}" for s in ("", "_fp16") for g in (*GRAPHS, "window")]
    assert names == expected and sorted(configs) == sorted(expected)
    for precision, suffix in (("fp32", ""), ("fp16", "_fp16")):
        for graph in GRAPHS:
            model = out / f"deramos_{graph}{suffix}" / "1" / "model.onnx"
            assert sha256_file(model) == sha256_file(bundle.graph_path(graph, precision))
        assert (out / f"deramos_window{suffix}" / "tokenizer.json").read_bytes() == bundle.tokenizer_file.read_bytes()


@pytest.mark.parametrize("suffix, precision", [("", "FP32"), ("_fp16", "FP16")])
def test_graph_configs_match_the_onnx_graphs(repository, suffix, precision):
    bundle, out, _, configs = repository
    for graph in GRAPHS:
        config = configs[f"deramos_{graph}{suffix}"]
        session = ort.InferenceSession(str(out / config.name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        for declared, actual in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
            assert [t.name for t in declared] == [a.name for a in actual]
            assert [_type_name(config, t.data_type) for t in declared] == [ORT_TYPES[a.type] for a in actual]
            for tensor, graph_io in zip(declared, actual):
                dims = [d if isinstance(d, int) else -1 for d in graph_io.shape[1:]]
                assert list(tensor.dims) == (dims or [1])
                assert list(tensor.reshape.shape) == [] and tensor.HasField("reshape") == (not dims)
        assert config.backend == "onnxruntime" and config.max_batch_size == 64
        assert config.dynamic_batching.max_queue_delay_microseconds == 2000
        assert [(g.count, g.kind) for g in config.instance_group] == [(2, 1)]      # KIND_GPU
        (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
        assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == precision


def test_ensemble_wiring_is_complete_and_typed(repository):
    _, _, _, configs = repository
    ensemble = configs["deramos_window"]
    assert ensemble.platform == "ensemble"
    available = {t.name: (t.data_type, list(t.dims)) for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        for tensor in model.input:
            source = step.input_map[tensor.name]
            assert available[source] == (tensor.data_type, list(tensor.dims)), (step.model_name, tensor.name)
        for tensor in model.output:
            available[step.output_map[tensor.name]] = (tensor.data_type, list(tensor.dims))
    assert [(t.name, t.data_type, list(t.dims)) for t in ensemble.output] == \
        [(name, *available[name]) for name in ("mi", "ta", "mi_dist", "ta_dist")]


def test_ensemble_steps_run_on_the_repository_files_score_as_the_scorer(repository, runtime_scorer):
    """Run the ensemble the way Triton would (each step on its model.onnx, tensors routed by
    input_map/output_map): one window and its prompt score exactly as Scorer.score does."""
    _, out, _, configs = repository
    wave, prompt = music(4.0, seed=7), "calm solo piano"
    ids, mask = runtime_scorer.tokenizer.encode([prompt])
    tensors = {"input_ids": ids, "attention_mask": mask, "waveform": wave[None].astype(np.float32),
               "lengths": np.array([len(wave)], np.int64)}
    for step in configs["deramos_window"].ensemble_scheduling.step:
        session = ort.InferenceSession(str(out / step.model_name / "1" / "model.onnx"),
                                       providers=["CPUExecutionProvider"])
        feeds = {name: tensors[source] for name, source in step.input_map.items()}
        results = session.run(None, feeds)
        tensors.update({step.output_map[o.name]: r for o, r in zip(session.get_outputs(), results)})
    expected = runtime_scorer.score(wave, prompt, sample_rate=RATE)
    assert (expected.windows, len(wave)) == (1, 4 * RATE)
    np.testing.assert_allclose([tensors["mi"][0], tensors["ta"][0]], [expected.mi, expected.ta], rtol=1e-5)


def test_cpu_repository_and_cli(runtime_bundle, tmp_path):
    from click.testing import CliRunner

    out = tmp_path / "repo"
    result = CliRunner().invoke(main, [str(runtime_bundle), "--out", str(out), "--instances", "3"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote 8 models to {out} (every config.pbtxt parsed by Triton's ModelConfig): ")
    config = validate_repository(out)["deramos_heads"]
    assert [(g.count, g.kind) for g in config.instance_group] == [(3, 2)]          # KIND_CPU
    assert not config.HasField("optimization")
    missing = CliRunner().invoke(main, [str(tmp_path / "nothing"), "--out", str(out)])
    assert missing.exit_code == 2
    assert missing.output.strip() == f"error: {tmp_path / 'nothing'}: bundle directory not found"


def test_graphs_with_external_weights_carry_their_data_file(runtime_bundle, tmp_path):
    """A graph over runtime/contract.py's EXTERNAL_DATA_MIN_BYTES keeps its weights in a side file
    named inside the graph: the repository must hold it beside model.onnx, or Triton cannot load."""
    import shutil

    import onnx

    from deramos.build.onnxio import save_onnx

    root = tmp_path / "bundle"
    shutil.copytree(runtime_bundle, root)
    bundle = load_bundle(root)
    written = save_onnx(onnx.load(str(root / "text_encoder.onnx")), root / "text_encoder.onnx", external_min_bytes=1000)
    bundle.set_graph_files("text_encoder", "fp32", [p.name for p in written])
    bundle.save()
    out = tmp_path / "repo"
    write_repository(load_bundle(root), out)
    folder = out / "deramos_text_encoder" / "1"
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "text_encoder.onnx.data"]
    ids = np.array([[101, 2023, 2003, 102]], np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    served = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)
    source = ort.InferenceSession(str(runtime_bundle / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(served[0], source.run(None, feeds)[0], atol=1e-6, rtol=0)


def test_scale_and_serve_never_import_torch():
    """deramos[ray] and deramos[serve] install without torch: their modules must not need it."""
    import subprocess
    import sys

    code = ("import sys, deramos.scale, deramos.scale.cli, deramos.serve.server, deramos.serve.repository, "
            "deramos.bench.serve_load; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

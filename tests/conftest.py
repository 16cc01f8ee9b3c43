"""Shared test fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def torch_single_thread():
    """Run torch on one intra-op thread for the module, then restore the setting.

    The model tests run many tiny ops; on a small shared CPU, OpenMP's thread hand-off costs
    milliseconds per op (the same tests run ~10x slower with 2 threads on a busy 2-core box)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A small synthetic MusicEval-layout corpus (48 clips, 4 systems, 2-3 s) for training and
    evaluation tests. Treat it as read-only: copy it before changing anything."""
    from deramos.data.synth import generate_corpus

    root = tmp_path_factory.mktemp("tiny_corpus") / "data"
    generate_corpus(root, clips=48, systems=4, seed=3, min_seconds=2.0, max_seconds=3.0, progress=False)
    return root


# --- runtime (deramos.runtime) -------------------------------------------------------------------


def _spread_scores(model):
    """Scale the last layer of both score MLPs so an untrained model's scores spread over the
    1-5 range: parity then compares values that differ from clip to clip, not a constant."""
    import torch

    with torch.no_grad():
        for mlp in (model.heads.mi.mlp, model.heads.ta.mlp):
            [layer for layer in mlp if isinstance(layer, torch.nn.Linear)][-1].weight.mul_(60.0)
    return model


@pytest.fixture(scope="session")
def runtime_model():
    """The tiny DeRA-MOS model (seeded, eval mode) behind `runtime_bundle`; do not modify it."""
    import torch

    from deramos.model.config import preset
    from deramos.model.network import DeRAMOS

    torch.manual_seed(1234)
    return _spread_scores(DeRAMOS(preset("tiny"))).eval()


@pytest.fixture(scope="session")
def runtime_bundle(runtime_model, tmp_path_factory):
    """An exported bundle (fp32 + fp16) of `runtime_model`. Read-only: copy it to tamper with it."""
    import torch

    from deramos.build.stage import BuildOptions
    from deramos.export.api import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("runtime") / "bundle"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # validation runs many tiny ops: see torch_single_thread
    try:
        export_bundle(runtime_model, out, ExportOptions(build=BuildOptions(fp16=True), validate_clips=8, progress=False),
                      say=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def runtime_scorer(runtime_bundle):
    """A shared ONNX Runtime CPU scorer over `runtime_bundle`."""
    from deramos.runtime import Scorer

    scorer = Scorer.load(runtime_bundle, backend="onnxruntime-cpu")
    yield scorer
    scorer.close()


# --- export, calibration, bundle (test_export / test_calibration / test_bundle / test_tensorrt) ----


class _one_torch_thread:  # noqa: N801 - used like a function: `with _one_torch_thread():`
    """Torch on one intra-op thread for a heavy fixture (see torch_single_thread: OpenMP's
    hand-off makes many small ops far slower with 2 threads on a busy 2-core box)."""

    def __enter__(self):
        import torch

        self.previous = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.previous)


class _Said(list):
    """A `say` callback that keeps every message (export_bundle reports through it)."""

    def __call__(self, text: str) -> None:
        self.append(str(text))

    @property
    def text(self) -> str:
        return "\n".join(self)


@pytest.fixture(scope="session")
def export_corpus(tmp_path_factory):
    """The synthetic corpus the export tests' model is trained on (48 clips, 4 systems, 2-3 s).
    Read-only (it is also the MusicEval-layout calibration source)."""
    from deramos.data.synth import generate_corpus

    root = tmp_path_factory.mktemp("export_corpus") / "data"
    generate_corpus(root, clips=48, systems=4, seed=0, min_seconds=2, max_seconds=3, progress=False)
    return root


@pytest.fixture(scope="session")
def export_run(export_corpus, tmp_path_factory):
    """A deramos-train run of the tiny preset (3 epochs): its scores spread out, unlike a
    random-init model's, so ranking checks (SRCC) mean something."""
    from deramos.training.train import TrainArgs, run_training

    base = tmp_path_factory.mktemp("export_run")
    with _one_torch_thread():
        return run_training(TrainArgs(data=str(export_corpus), out=str(base / "run"), preset="tiny", epochs=3,
                                      progress=False, cache_dir=str(base / "cache")))


@pytest.fixture(scope="session")
def export_model(export_run):
    """The trained tiny model (eval mode, torch.stft front-end), its scores spread out
    (`_spread_scores`): three epochs on 48 clips leave them within ~0.002 of each other, where
    any rounding reorders clips and a ranking check measures noise. Do not modify it."""
    from deramos.model.checkpoint import load_checkpoint

    return _spread_scores(load_checkpoint(export_run))


@pytest.fixture(scope="session")
def export_bundle_dir(export_model, tmp_path_factory):
    """One FP32 + FP16 + INT8 bundle of `export_model`, validated on 64 clips (the INT8 drift on a
    64-clip synthetic held-out set), shared by the export tests.
    Read-only: copy it (shutil.copytree) before changing anything.
    Returns (directory, manifest, messages said during the export)."""
    from deramos.build.stage import BuildOptions
    from deramos.export.api import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("export_bundle") / "bundle"
    said = _Said()
    build = BuildOptions(fp16=True, int8=True, calib_clips=32,
                         int8_graphs=("audio_encoder", "text_encoder"))   # both, so both are tested
    options = ExportOptions(build=build, validate_clips=64, progress=False)
    with _one_torch_thread():
        manifest = export_bundle(export_model, out, options, say=said)
    return out, manifest, said

"""deramos.scale: the manifest scored by a Ray Data actor pool on a local 2-CPU Ray cluster.

One cluster for the module (Ray takes seconds to start); 500 clips plus bad rows."""
from __future__ import annotations

import json
import os
import signal

import pytest

from runtime_helpers import error_lines, music, run_cli, write_wav

ray = pytest.importorskip("ray", reason="needs deramos[ray] (make test installs it)")
psutil = pytest.importorskip("psutil")

CLIPS = 500
PROMPTS = ["calm solo piano", "fast drums and bass", "a sad violin melody", "upbeat pop song"]


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """500 clips (1-4 s, 16 sources at 5 gains), then four rows that cannot be scored."""
    root = tmp_path_factory.mktemp("ray_clips")
    sources = [music(1.0 + (i % 7) * 0.5, seed=i) for i in range(16)]
    lines = []
    for i in range(CLIPS):
        path = write_wav(root / f"c{i:04d}.wav", sources[i % 16] * (0.5 + (i % 5) / 10))
        lines.append(json.dumps({"path": str(path), "prompt": PROMPTS[i % 4], "id": i}))
    (root / "notes.wav").write_text("not audio")
    lines += ["{not json",
              json.dumps({"path": str(root / "missing.wav"), "prompt": "x"}),
              json.dumps({"path": str(root / "c0000.wav")}),
              json.dumps({"path": str(root / "notes.wav"), "prompt": "y"})]
    path = root / "clips.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def local_results(manifest, runtime_bundle, tmp_path_factory):
    """deramos-run --json on one machine, the reference the Ray run must equal."""
    out = tmp_path_factory.mktemp("ray_local") / "local.jsonl"
    result = run_cli(["--jsonl", manifest, "--json", "--bundle", runtime_bundle, "--backend", "onnxruntime-cpu",
                      "-o", out, "-q"])
    assert result.exit_code == 1, result.stderr      # the four bad rows
    return [json.loads(line) for line in out.read_text().splitlines()]


def _ray_cli(manifest, bundle, out):
    return run_cli(["--jsonl", manifest, "--bundle", bundle, "--backend", "onnxruntime-cpu", "--ray", "auto",
                    "-o", out])


def _read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def ray_output(ray_cluster, manifest, runtime_bundle, tmp_path_factory):
    """deramos-run --ray over the manifest: (output file, CliRunner result)."""
    out = tmp_path_factory.mktemp("ray_out") / "ray.jsonl"
    return out, _ray_cli(manifest, runtime_bundle, out)


@pytest.mark.slow
def test_ray_run_equals_local_run_in_input_order(ray_output, manifest, local_results):
    out, result = ray_output
    assert result.exit_code == 1
    rows = _read(out)
    assert [r.pop("row") for r in rows] == list(range(1, CLIPS + 5))
    assert rows == local_results
    assert sum(r["error"] is None for r in rows) == CLIPS
    assert [r["error"] for r in rows[CLIPS:]] == [
        "line 501: not valid JSON (Expecting property name enclosed in double quotes)",
        f"{manifest.parent / 'missing.wav'}: file not found",
        f'line 503 ({manifest.parent / "c0000.wav"}): missing "prompt" (a string)',
        rows[-1]["error"]]
    assert rows[-1]["error"].startswith(f"{manifest.parent / 'notes.wav'}: ")
    assert error_lines(result.stderr) == [f"error: {r['error']}" for r in rows[CLIPS:]]
    assert f"ray: {CLIPS + 4} scored (4 failed), 0 already in {out}" in result.stderr


def test_ray_run_resumes_after_a_torn_last_line(ray_output, manifest, runtime_bundle, tmp_path):
    text = ray_output[0].read_text()
    lines = text.splitlines(keepends=True)
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(lines[:120]) + lines[120][:25])     # stopped while writing row 121
    result = _ray_cli(manifest, runtime_bundle, partial)
    assert result.exit_code == 1
    assert f"ray: {CLIPS + 4 - 120} scored (4 failed), 120 already in {partial}" in result.stderr
    assert partial.read_text() == text


def test_ray_refuses_to_resume_into_a_foreign_file(ray_cluster, manifest, runtime_bundle, tmp_path):
    out = tmp_path / "notes.jsonl"
    out.write_text('{"path": "a.wav"}\n')
    result = _ray_cli(manifest, runtime_bundle, out)
    assert result.exit_code == 2
    assert result.stderr.strip() == (f'error: {out}: line 1 is not a result line with a "row" number; '
                                     f"refusing to resume into it (choose another --out)")


def test_ray_needs_an_output_file(manifest, runtime_bundle):
    result = run_cli(["--jsonl", manifest, "--bundle", runtime_bundle, "--ray"])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: --ray needs --out FILE (.jsonl, or a .parquet folder): the results are "
                                     "written there in input order, and a rerun resumes from it")


def _actor_pids() -> set[int]:
    """Live actor processes (a killed one stays listed as a zombie until its parent reaps it)."""
    return {p.pid for p in psutil.process_iter(["cmdline", "status"])
            if p.info["status"] not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
            and any("ScorerActor" in part for part in p.info["cmdline"] or [])}


@pytest.mark.slow
def test_killed_actor_is_restarted_and_no_row_is_lost(ray_cluster, manifest, runtime_bundle, local_results, tmp_path):
    """SIGKILL one actor's process after the first results: Ray restarts it, its batch runs
    again, and the Parquet output holds every row exactly once, in order, equal to the local run."""
    import pyarrow.parquet as pq

    from deramos.runtime.cli import _jsonl_jobs
    from deramos.scale.batch import ScoringOptions, score_rows
    from deramos.scale.cli import rows_of

    rows = rows_of(_jsonl_jobs(str(manifest))[0])
    options = ScoringOptions(str(runtime_bundle), "onnxruntime-cpu")
    before, after, killed = set(), set(), []

    def kill_one_actor(result: dict) -> None:
        (after if killed else before).update(_actor_pids())
        if result["row"] == 40:
            victim = min(_actor_pids())
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    out = tmp_path / "scores.parquet"
    summary = score_rows(rows, out, options, on_result=kill_one_actor)
    assert (summary.skipped, summary.scored, summary.failed) == (0, CLIPS + 4, 4)
    assert len(killed) == 1 and killed[0] not in _actor_pids()
    assert after - before          # a new actor process took the dead one's place
    table = pq.read_table(out).to_pylist()
    assert [r["row"] for r in table] == list(range(1, CLIPS + 5))
    assert [(r["mi"], r["ta"], r["error"]) for r in table] == [(r["mi"], r["ta"], r["error"]) for r in local_results]
    assert [json.loads(r["record"])["id"] for r in table[:CLIPS]] == list(range(CLIPS))
    assert sorted(p.name for p in out.iterdir()) == ["part-000000.parquet", "part-000001.parquet"]

    (out / "part-000001.parquet").unlink()          # as if stopped before the second part
    summary = score_rows(rows, out, options)
    assert (summary.skipped, summary.scored) == (256, CLIPS + 4 - 256)
    assert pq.read_table(out).to_pylist() == table


def test_score_dataset_on_a_ray_dataset(ray_cluster, manifest, runtime_bundle, runtime_scorer):
    """The Python API on a Dataset read by Ray itself: every column kept, scores added."""
    from deramos.scale import ScoringOptions, score_dataset

    head = manifest.parent / "head.jsonl"
    head.write_text("\n".join(manifest.read_text().splitlines()[:40]) + "\n")
    scored = score_dataset(ray.data.read_json(str(head)), ScoringOptions(str(runtime_bundle), "onnxruntime-cpu"))
    rows = scored.take_all()
    assert [r["id"] for r in rows] == list(range(40))
    expected = runtime_scorer.score_batch([r["path"] for r in rows], [r["prompt"] for r in rows])
    assert [(r["mi"], r["ta"]) for r in rows] == [(s.mi, s.ta) for s in expected]
    assert all(r["error"] is None for r in rows)


def test_pool_shape_is_one_actor_per_cpu_slot_or_per_gpu():
    from deramos.scale.batch import _pool_shape

    assert _pool_shape({"CPU": 2.0}, None, None) == (0.0, 2)
    assert _pool_shape({"CPU": 16.0, "GPU": 4.0}, None, None) == (1.0, 4)
    assert _pool_shape({"CPU": 16.0, "GPU": 1.0}, None, 0.5) == (0.5, 2)
    assert _pool_shape({"CPU": 16.0}, 3, None) == (0.0, 3)
    with pytest.raises(ValueError, match="^actors must be >= 1, got 0$"):
        _pool_shape({"CPU": 2.0}, 0, None)

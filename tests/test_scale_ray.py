"""deramos.scale: the manifest scored by a Ray Data actor pool on a local 2-CPU Ray cluster.

One cluster for the module (Ray takes seconds to start), listening on 127.0.0.1 only; 500 clips
plus bad rows, and a small manifest of every kind of bad row a local run survives."""
from __future__ import annotations

import json
import os
import signal
import threading

import pytest
from runtime_helpers import error_lines, music, run_cli, write_wav

ray = pytest.importorskip("ray", reason="needs deramos[ray] (make test installs it)")
psutil = pytest.importorskip("psutil")

CLIPS = 500
PROMPTS = ["calm solo piano", "fast drums and bass", "a sad violin melody", "upbeat pop song"]


@pytest.fixture(scope="module")
def ray_cluster():
    from deramos.scale import start_local

    start_local(num_cpus=2)         # every process on 127.0.0.1
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
            and any("Scorer" in part and "MapWorker" in part for part in p.info["cmdline"] or [])}


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

    def kill_one_actor(row: int, result: dict) -> None:
        (after if killed else before).update(_actor_pids())
        if row == 40:
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
    from deramos.scale import pool_shape

    def shape(*args, **kwargs):
        found = pool_shape(*args, **kwargs)
        return found.gpus_per_actor, found.actors

    assert shape({"CPU": 2.0}) == (0.0, 2)
    assert shape({"CPU": 16.0, "GPU": 4.0}) == (1.0, 4)
    assert shape({"CPU": 16.0, "GPU": 1.0}, gpus_per_actor=0.5) == (0.5, 2)
    assert shape({"CPU": 16.0}, 3) == (0.0, 3)
    with pytest.raises(ValueError, match="^actors must be >= 1, got 0$"):
        pool_shape({"CPU": 2.0}, 0)


GIB = 2**30


def test_pool_shape_is_sized_by_memory_as_well_as_cpus():
    """A 64-core node with 20 GiB for tasks holds 6 actors of 3.3 GiB (the default model's
    Scorer), not 64; a GPU node as many as its memory allows, at most one per GPU."""
    from deramos.scale import pool_shape

    many_cores = pool_shape({"CPU": 64.0, "memory": 20 * GIB}, memory_per_actor=int(3.3 * GIB))
    assert (many_cores.actors, many_cores.memory_per_actor) == (6, int(3.3 * GIB))
    assert pool_shape({"CPU": 2.0, "memory": 64 * GIB}, memory_per_actor=int(3.3 * GIB)).actors == 2
    assert pool_shape({"CPU": 64.0, "GPU": 8.0, "memory": 10 * GIB}, memory_per_actor=3 * GIB).actors == 3
    with pytest.raises(ValueError, match=r"^one Scorer actor needs 3\.30 GiB of memory, more than any node of the "
                                         r"cluster offers \(2\.00 GiB\)$"):
        pool_shape({"CPU": 8.0, "memory": 8 * GIB}, memory_per_actor=int(3.3 * GIB), largest_node_memory=2 * GIB)


# --- every row a local run survives, on Ray: a small manifest of bad rows -------------------------


@pytest.fixture(scope="module")
def bad_rows(tmp_path_factory):
    """Six clips and a row of each kind that cannot be scored, with blank lines between (so a
    row's number, its line, is not its position). Bytes, not text: line 12 is not UTF-8."""
    root = tmp_path_factory.mktemp("bad_rows")
    good = [write_wav(root / f"g{i}.wav", music(2.0 + i % 3, seed=100 + i)) for i in range(6)]
    (root / "notes.wav").write_text("not audio")
    lines = [json.dumps({"path": str(good[0]), "prompt": PROMPTS[0], "id": 0}).encode(),
             b"",
             json.dumps({"path": "\ud800bad.wav", "prompt": "x"}).encode(),       # valid JSON, a lone surrogate
             json.dumps({"path": 42, "prompt": "x"}).encode(),
             json.dumps({"path": str(good[1]), "prompt": 42, "id": 1}).encode(),
             b"   ",
             json.dumps({"path": str(good[2]), "prompt": PROMPTS[1], "id": 2, "tags": [1, {"a": None}]}).encode(),
             b"{not json",
             json.dumps({"path": str(root / "missing.wav"), "prompt": "x"}).encode(),
             json.dumps({"path": str(root / "notes.wav"), "prompt": "y"}).encode(),
             json.dumps({"path": str(good[3]), "prompt": "caf\u00e9 \U0001f3b9 jazz"}, ensure_ascii=False).encode(),
             b'{"path": "a.wav", "prompt": "\xff\xfe"}',
             json.dumps({"path": str(good[4]), "prompt": "\ud800 x"}).encode(),
             json.dumps({"path": "g5.wav", "prompt": PROMPTS[2], "id": 5}).encode(),     # relative: the file's folder
             json.dumps({"path": str(good[5]), "prompt": PROMPTS[3], "id": 6}).encode()]
    path = root / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


BAD_ROW_LINES = [1, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15]       # lines 2 and 6 are blank


@pytest.fixture(scope="module")
def bad_rows_local(bad_rows, runtime_bundle):
    result = run_cli(["--jsonl", bad_rows, "--json", "--bundle", runtime_bundle, "--backend", "onnxruntime-cpu", "-q"])
    assert result.exit_code == 1, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_every_bad_row_is_a_row_error_as_in_a_local_run(ray_cluster, bad_rows, bad_rows_local, runtime_bundle,
                                                          tmp_path):
    """Issue: one row whose path holds a lone surrogate aborted the whole Ray run (exit 2, 0 rows
    written, a traceback). Now each bad row gets the local run's own error, and "row" is the
    manifest's line number (blank lines count)."""
    out = tmp_path / "bad.jsonl"
    result = _ray_cli(bad_rows, runtime_bundle, out)
    assert result.exit_code == 1, result.stderr
    rows = _read(out)
    assert [r.pop("row") for r in rows] == BAD_ROW_LINES
    assert rows == bad_rows_local
    errors = [r["error"] for r in rows]
    assert errors[1] == (f"{bad_rows.parent}/\ud800bad.wav: file name holds a lone surrogate (U+D800), "
                         f"which names no file")
    assert errors[2] == 'line 4: missing "path" (a string)'
    assert sum(e is None for e in errors) == 5
    assert error_lines(result.stderr) == [f"error: {e}".encode("utf-8", "backslashreplace").decode()
                                          for e in errors if e is not None]
    assert "Traceback" not in result.stderr and "\x1b[" not in result.stderr


def test_parquet_output_takes_any_row_and_resumes(ray_cluster, bad_rows, bad_rows_local, runtime_bundle, tmp_path):
    """Issue: a non-string "path" crashed the Parquet part (ArrowTypeError), and a rerun into an
    existing .parquet folder was refused by --out. The schema is fixed; a rerun resumes."""
    import pyarrow.parquet as pq

    from deramos.scale.batch import parquet_schema

    out = tmp_path / "scores.parquet"
    first = _ray_cli(bad_rows, runtime_bundle, out)
    assert first.exit_code == 1, first.stderr
    table = pq.read_table(out)
    assert table.schema.equals(parquet_schema())
    rows = table.to_pylist()
    assert [r["row"] for r in rows] == BAD_ROW_LINES
    assert [(r["mi"], r["ta"], r["error"]) for r in rows] == [
        (r["mi"], r["ta"], None if r["error"] is None else r["error"].replace("\ud800", "\\ud800"))
        for r in bad_rows_local]
    by_line = {r["row"]: r for r in rows}
    assert by_line[3]["path"] == "\\ud800bad.wav" and json.loads(by_line[3]["record"])["path"] == "\ud800bad.wav"
    assert by_line[4]["path"] is None and json.loads(by_line[4]["record"]) == {"path": 42, "prompt": "x"}
    assert by_line[5]["prompt"] is None and json.loads(by_line[5]["record"])["prompt"] == 42
    assert json.loads(by_line[7]["record"])["tags"] == [1, {"a": None}]
    assert [json.loads(r["record"]) for r in rows] == [
        {k: v for k, v in r.items() if k not in ("mi", "ta", "error")} for r in bad_rows_local]

    again = _ray_cli(bad_rows, runtime_bundle, out)            # completed: nothing to do
    assert again.exit_code == 0, again.stderr
    assert f"ray: 0 scored (0 failed), {len(BAD_ROW_LINES)} already in {out}" in again.stderr
    assert pq.read_table(out).to_pylist() == rows

    from deramos.runtime.cli import _jsonl_jobs
    from deramos.scale.batch import ScoringOptions, score_rows
    from deramos.scale.cli import rows_of

    (out / "part-000000.parquet").unlink()                      # as if stopped before its only part
    (out / "part-000000.tmp").write_bytes(b"torn")              # and while writing the next
    summary = score_rows(rows_of(_jsonl_jobs(str(bad_rows))[0]), out, ScoringOptions(str(runtime_bundle),
                                                                                     "onnxruntime-cpu"))
    assert (summary.skipped, summary.scored, summary.failed) == (0, len(BAD_ROW_LINES), 8)
    assert pq.read_table(out).to_pylist() == rows
    assert sorted(p.name for p in out.iterdir()) == ["part-000000.parquet"]


def test_a_directory_is_no_jsonl_output_and_local_runs_refuse_it(ray_cluster, bad_rows, runtime_bundle, tmp_path):
    result = _ray_cli(bad_rows, runtime_bundle, tmp_path)
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"error: {tmp_path}: is a directory; JSONL output is a file (a folder of "
                                     f"Parquet parts needs a name ending in .parquet)")
    local = run_cli(["--jsonl", bad_rows, "--bundle", runtime_bundle, "-o", tmp_path])
    assert local.exit_code == 2
    assert f"Invalid value for '-o' / '--out': File '{tmp_path}' is a directory." in local.stderr


def test_each_actor_requests_its_measured_memory(ray_cluster, bad_rows, runtime_bundle, tmp_path, monkeypatch):
    """The pool's actors request the memory one Scorer worker was measured to need, and the
    cluster's free memory resource shows it while they run; the figure is measured once per
    bundle and settings, then taken from the cache."""
    from deramos.runtime.cli import _jsonl_jobs
    from deramos.scale import ScoringOptions, measure_actor_memory, score_rows
    from deramos.scale.cli import rows_of

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    options = ScoringOptions(str(runtime_bundle), "onnxruntime-cpu")
    measured = measure_actor_memory(options)
    assert 64 * 2**20 <= measured <= 4 * GIB          # the tiny test bundle: a Ray worker and a small Scorer
    assert measured % (64 * 2**20) == 0
    total = ray.cluster_resources()["memory"]
    held, said, done = [], [], threading.Event()

    def watch():   # the whole run, not only when a result arrives: the pool may be gone by then
        while not done.is_set():
            held.append(total - ray.available_resources().get("memory", 0))
            done.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        summary = score_rows(rows_of(_jsonl_jobs(str(bad_rows))[0]), tmp_path / "m.jsonl", options, say=said.append)
    finally:
        done.set()
        watcher.join()
    assert summary.pool.memory_per_actor >= measured // 2 and summary.pool.actors == 2
    assert max(held) >= summary.pool.memory_per_actor      # at least one actor holds its request
    assert "measuring one Scorer actor's memory on the cluster ..." in said
    cached = json.loads((tmp_path / "cache" / "deramos" / "ray-actor-memory.json").read_text())
    assert list(cached.values()) == [summary.pool.memory_per_actor]
    said.clear()
    again = score_rows(rows_of(_jsonl_jobs(str(bad_rows))[0]), tmp_path / "again.jsonl", options, say=said.append)
    assert again.pool.memory_per_actor == summary.pool.memory_per_actor
    assert (f"actor memory: {summary.pool.memory_per_actor / GIB:.2f} GiB, as measured before "
            f"({tmp_path / 'cache' / 'deramos' / 'ray-actor-memory.json'})") in said
    with pytest.raises(ValueError, match="^one Scorer actor needs 1024.00 GiB of memory, more than any node"):
        score_rows(rows_of(_jsonl_jobs(str(bad_rows))[0]), tmp_path / "n.jsonl",
                   ScoringOptions(str(runtime_bundle), "onnxruntime-cpu", actor_memory=1024 * GIB))


LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def cluster_processes() -> set[int]:
    """This process, the local node's Ray processes (GCS, raylet, agents) and their children."""
    from ray._private import worker

    pids = {os.getpid()}
    for infos in worker._global_node.all_processes.values():
        for info in infos:
            pids.add(info.process.pid)
    for pid in list(pids):
        try:
            pids.update(child.pid for child in psutil.Process(pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return pids


def test_a_local_cluster_listens_on_loopback_only(ray_cluster, bad_rows, runtime_bundle, tmp_path):
    """Issue: --ray local started its node on the machine's network address (eth0)."""
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert _ray_cli(bad_rows, runtime_bundle, tmp_path / "l.jsonl").exit_code == 1    # actors are running now
    pids = cluster_processes()
    listening = [(c.pid, c.laddr.ip, c.laddr.port) for c in psutil.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert len(listening) >= 4                       # GCS, raylet, this driver's worker, the agents
    assert [entry for entry in listening if entry[1] not in LOOPBACK] == []

"""The scale-out bench (deramos.bench.scale_overhead) on two raylets on loopback: it runs, the
Ray runs score exactly as the local one, and its cluster leaves no address file where other Ray
users of the machine would find it. Its timings are for the README, not asserted here."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="needs deramos[ray] (make test installs it)")

ADDRESS_FILE = Path("/tmp/ray/ray_current_cluster")


def _address_file() -> tuple | None:
    return (ADDRESS_FILE.stat().st_mtime_ns, ADDRESS_FILE.read_text()) if ADDRESS_FILE.exists() else None


@pytest.mark.slow
def test_the_bench_runs_two_raylets_on_loopback_with_identical_scores(runtime_bundle, tmp_path):
    before = _address_file()
    report = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "deramos.bench.scale_overhead", "--bundle", str(runtime_bundle),
                           "--clips", "12", "--clip-seconds", "2", "--nodes", "2", "--noop-rows", "100",
                           "--json", str(report)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    measures = json.loads(report.read_text())
    assert (measures["clips"], measures["cpus"]) == (12, 2)
    (ray,) = measures["ray"]
    assert (ray["nodes"], ray["actors"], ray["identical"]) == (2, 2, True)
    assert len(ray["actor_startup_s"]) == 2 and ray["actor_memory_gib"] > 0
    assert "| raylets | actors | rows/s (x local) |" in done.stdout
    assert done.stdout.rstrip().endswith("| identical |")
    assert _address_file() == before


LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


@pytest.mark.slow
def test_a_loopback_cluster_of_two_raylets(runtime_bundle, runtime_scorer, tmp_path):
    """What the bench measures on: two nodes, every process listening on 127.0.0.1 only, rows
    scored as the Scorer scores them."""
    import psutil
    import ray
    from runtime_helpers import music, write_wav

    from deramos.scale import LoopbackCluster, Row, ScoringOptions, score_rows

    clips = [write_wav(tmp_path / f"{i}.wav", music(2.0, seed=300 + i)) for i in range(8)]
    before = _address_file()
    with LoopbackCluster(nodes=2, cpus_per_node=1) as cluster:
        nodes = [node for node in ray.nodes() if node["Alive"]]
        assert sorted(node["NodeManagerAddress"] for node in nodes) == ["127.0.0.1", "127.0.0.1"]
        assert ray.cluster_resources()["CPU"] == 2
        summary = score_rows([Row(i + 1, {"path": str(p), "prompt": "calm piano"}, str(p), "calm piano")
                              for i, p in enumerate(clips)], tmp_path / "out.jsonl",
                             ScoringOptions(str(runtime_bundle), "onnxruntime-cpu"))
        pids = set(cluster.processes())
        for pid in list(pids):
            pids.update(child.pid for child in psutil.Process(pid).children(recursive=True))
        listening = [(c.pid, c.laddr.ip) for c in psutil.net_connections("inet")
                     if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert not ray.is_initialized()
    assert (summary.scored, summary.failed, summary.pool.actors) == (8, 0, 2)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    expected = runtime_scorer.score_batch([str(p) for p in clips], "calm piano")
    assert [(r["row"], r["mi"], r["ta"]) for r in rows] == [(i + 1, round(s.mi, 4), round(s.ta, 4))
                                                            for i, s in enumerate(expected)]
    assert len(listening) >= 4 and [entry for entry in listening if entry[1] not in LOOPBACK] == []
    assert _address_file() == before

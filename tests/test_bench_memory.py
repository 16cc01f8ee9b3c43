"""The memory benchmark (deramos.bench.memory): its peak is what the kernel says a process used,
its growth figure finds a leak and calls a flat run flat, and it runs end to end on a small bundle.
Its numbers for the default model are the README's, not asserted here."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from deramos.bench.memory import growth_per_1000, run_measured

pytest.importorskip("psutil")

ALLOCATE = "import time; block = b'x' * {size}; time.sleep(0.6)"   # every page written


def test_the_peak_is_the_child_s_resident_size():
    ours = b"y" * 300_000_000   # this process is big: a child forked from it must not inherit its peak
    small = run_measured([sys.executable, "-c", ALLOCATE.format(size=10_000_000)])
    assert small[1] < 0.1 < len(ours) / 1e9
    large = run_measured([sys.executable, "-c", ALLOCATE.format(size=400_000_000)])
    assert small[0] == large[0] == 0
    assert 0.35 <= large[1] - small[1] <= 0.45                          # 400 MB written, in GB
    assert large[3] and max(rss for _, rss in large[3]) > 0.4            # the sampler saw it too


def test_growth_finds_a_leak_and_calls_a_flat_run_flat():
    rows = 10_000
    flat = [(n, 0.50 + (0.02 if n < 500 else 0.0)) for n in range(0, rows + 1, 100)]   # start-up, then flat
    leak = [(n, 0.50 + n * 20e-6) for n in range(0, rows + 1, 100)]                     # 20 MB per 1000 rows
    assert growth_per_1000(flat, rows) == pytest.approx(0.0, abs=0.5)
    assert growth_per_1000(leak, rows) == pytest.approx(20.0, rel=0.1)
    assert growth_per_1000([(0, 0.5)], rows) is None


def test_the_bench_runs_on_a_small_bundle(runtime_bundle, tmp_path):
    report = tmp_path / "memory.json"
    done = subprocess.run([sys.executable, "-m", "deramos.bench.memory", "--bundle", str(runtime_bundle),
                           "--long-minutes", "1", "--rows", "40", "--distinct-clips", "4", "--batch-clips", "9", "--no-export",
                           "--json", str(report)], capture_output=True, text=True, timeout=600)
    measures = {m["case"]: m for m in json.loads(report.read_text())}
    assert set(measures) == {"long", "rows", "batch"}
    assert all(m["exit_status"] == 0 and 0.05 < m["peak_rss_gb"] < m["target_gb"] for m in measures.values())
    counts = [n for n, _ in measures["rows"]["samples"]]
    assert counts == sorted(counts) and counts[-1] <= 40
    assert "| long | 1 min, 44.1 kHz stereo WAV |" in done.stdout
    assert "| batch | 9 clips of 10 s, --batch-size 8 |" in done.stdout and measures["batch"]["target_gb"] == pytest.approx(0.8)
    assert done.returncode == (0 if all(m["met"] for m in measures.values()) else 1), done.stderr[-2000:]

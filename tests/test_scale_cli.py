"""deramos-run --ray as a user runs it: a process of its own, its own cluster (or none).

Addresses that do not answer fail at once with one line; a `--ray local` run shows progress,
prints no Ray warnings, listens on loopback only and stops within seconds on SIGTERM, and a
rerun resumes; a cluster started with `ray start --head` (on 127.0.0.1) is reached through its
GCS address and through Ray Client (ray://), the documented forms."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

import pytest
import tomllib
from runtime_helpers import music, write_wav

ray = pytest.importorskip("ray", reason="needs deramos[ray] (make test installs it)")
psutil = pytest.importorskip("psutil")

REPO = Path(__file__).resolve().parents[1]
RUN = [sys.executable, "-m", "deramos.runtime.cli"]
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
ROWS = 3000          # long enough on the tiny bundle for a SIGTERM to land mid-run
COLOUR = "\x1b[3"    # Ray's coloured prefixes: \x1b[33m(raylet)\x1b[0m, \x1b[36mray::...\x1b[39m


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale_cli")
    return [write_wav(root / f"c{i}.wav", music(1.5 + i % 3, seed=200 + i)) for i in range(20)]


@pytest.fixture(scope="module")
def long_manifest(clips):
    path = clips[0].parent / "long.jsonl"
    path.write_text("".join(json.dumps({"path": str(clips[i % 20]), "prompt": f"calm piano {i % 9}", "id": i}) + "\n"
                            for i in range(ROWS)))
    return path


@pytest.fixture(scope="module")
def small_manifest(clips):
    """Good rows and bad ones (a lone surrogate, a number for a path), with a blank line."""
    lines = [json.dumps({"path": str(clips[i]), "prompt": "a sad violin melody", "id": i}) for i in range(6)]
    lines[2:2] = [json.dumps({"path": "\ud800bad.wav", "prompt": "x"}), "", json.dumps({"path": 42, "prompt": "x"})]
    path = clips[0].parent / "small.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def small_local(small_manifest, runtime_bundle):
    done = subprocess.run([*RUN, "--jsonl", small_manifest, "--json", "--bundle", runtime_bundle, "--backend",
                           "onnxruntime-cpu", "-q"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def _rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- 5. addresses that do not answer ---------------------------------------------------------------


@pytest.fixture(scope="module")
def not_ray():
    """A TCP port that accepts connections and closes them: a server, but not Ray's."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = server.accept()
                connection.close()
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


@pytest.mark.parametrize("address, message", [
    ("127.0.0.1:1", "cannot reach the Ray cluster at 127.0.0.1:1: nothing listens on that port (connection refused)"),
    ("not-a-host:6379", "cannot reach the Ray cluster at not-a-host:6379: unknown host 'not-a-host' "
                        "(Name or service not known)"),
    ("NOT_RAY", "127.0.0.1:NOT_RAY answers, but not as a Ray cluster's GCS (UNAVAILABLE); `ray start --head` "
                "prints the address to use"),
    ("ray://NOT_RAY", "ray://127.0.0.1:NOT_RAY answers, but not as a Ray Client server (UNAVAILABLE); "
                      "`ray start --head` starts one on port 10001"),
    ("head", "--ray head: expected local, auto, HOST:PORT (a cluster's GCS, e.g. head:6379) or ray://HOST:PORT "
             "(Ray Client, e.g. ray://head:10001)"),
])
def test_an_address_that_does_not_answer_fails_at_once_with_one_line(small_manifest, runtime_bundle, tmp_path,
                                                                     not_ray, address, message):
    """Issue: --ray 127.0.0.1:1 or --ray not-a-host:6379 hung for more than 5 minutes printing
    GCS warnings. (The timeout below only keeps a hang from stalling the suite.)"""
    address = address.replace("NOT_RAY", f"127.0.0.1:{not_ray}")
    message = message.replace("NOT_RAY", str(not_ray))
    out = tmp_path / "out.jsonl"
    done = subprocess.run([*RUN, "--jsonl", small_manifest, "--bundle", runtime_bundle, "--ray", address, "-o", out],
                          capture_output=True, text=True, timeout=120, env=_env())
    assert done.returncode == 2
    assert done.stderr == f"ray: connecting to Ray ({address}) ...\nerror: {message}\n"
    assert not out.exists()


def test_auto_takes_ray_address_and_says_where_the_address_came_from(small_manifest, runtime_bundle, tmp_path):
    done = subprocess.run([*RUN, "--jsonl", small_manifest, "--bundle", runtime_bundle, "--ray", "-o",
                           tmp_path / "out.jsonl"], capture_output=True, text=True, timeout=120,
                          env=_env() | {"RAY_ADDRESS": "127.0.0.1:1"})
    assert done.returncode == 2
    assert done.stderr == ("ray: connecting to Ray (auto) ...\nerror: cannot reach the Ray cluster at 127.0.0.1:1 "
                           "(from $RAY_ADDRESS): nothing listens on that port (connection refused)\n")


# --- 5, 6, 7. a local cluster: progress, loopback, SIGTERM, resume ---------------------------------


def _tree(pid: int) -> set[int]:
    try:
        return {pid} | {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.slow
def test_a_local_run_shows_progress_listens_on_loopback_stops_on_sigterm_and_resumes(long_manifest, runtime_bundle,
                                                                                     tmp_path):
    """Issues: no progress for 40 s (even on a terminal) under ~34 lines of Ray warnings; the
    local node on the machine's network address; SIGTERM ignored for 20-30 s."""
    out = tmp_path / "scores.jsonl"
    master, terminal = pty.openpty()          # stderr is a terminal: a progress bar is expected
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))     # 120 columns
    process = subprocess.Popen([*RUN, "--jsonl", long_manifest, "--bundle", runtime_bundle, "--backend",
                                "onnxruntime-cpu", "--ray", "local", "-o", out],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=terminal, env=_env())
    os.close(terminal)
    shown = []
    reader = threading.Thread(target=_drain, args=(master, shown), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not (out.exists() and out.stat().st_size) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process.poll() is None, b"".join(shown).decode(errors="replace")
        pids = _tree(process.pid)
        listening = [(c.pid, c.laddr.ip, c.laddr.port) for c in psutil.net_connections("inet")
                     if c.status == psutil.CONN_LISTEN and c.pid in pids]
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=20)      # Ray alone would take up to 30 s (its node drain)
    finally:
        if process.poll() is None:
            process.kill()
        reader.join(timeout=10)
        os.close(master)
    text = b"".join(shown).decode("utf-8", errors="replace")
    assert code == 143, text
    assert len(listening) >= 4 and [entry for entry in listening if entry[1] not in LOOPBACK] == []
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[0] == "ray: starting a local Ray cluster on 127.0.0.1 ..."
    assert lines[1].startswith("ray: new local cluster at 127.0.0.1:")
    assert f"ray: {ROWS} rows to score, 0 already in {out}" in lines
    assert any(line.startswith("ray: pool: up to ") for line in lines)
    assert any("row/s" in line for line in lines), text          # tqdm's bar
    assert COLOUR not in text and "Traceback" not in text and "WARNING" not in text
    written = _rows_of(out)
    assert lines[-1] == (f"error: terminated: {len(written)} new rows written to {out}; "
                         f"rerun the same command to resume")
    assert 0 < len(written) < ROWS and [r["row"] for r in written] == list(range(1, len(written) + 1))
    deadline = time.monotonic() + 15                             # orphans would be reparented, not gone
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _alive(pids) == set()

    rerun = subprocess.run([*RUN, "--jsonl", long_manifest, "--bundle", runtime_bundle, "--backend",
                            "onnxruntime-cpu", "--ray", "local", "-o", out],
                           capture_output=True, text=True, timeout=600, env=_env())
    assert rerun.returncode == 0, rerun.stderr
    said = rerun.stderr.splitlines()
    assert all(line.startswith("ray: ") for line in said), rerun.stderr     # not a line of Ray's own
    assert said[-1] == f"ray: {ROWS - len(written)} scored (0 failed), {len(written)} already in {out}"
    rows = _rows_of(out)
    assert [r["row"] for r in rows] == list(range(1, ROWS + 1))
    assert [r["id"] for r in rows] == list(range(ROWS))
    assert all(r["error"] is None for r in rows)


def _drain(fd: int, into: list) -> None:
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:      # the terminal's other end closed
            return
        if not data:
            return
        into.append(data)


# --- 4. the documented forms: HOST:PORT and ray://HOST:10001 -------------------------------------


def test_the_ray_extra_installs_ray_client():
    """Issue: --ray ray://HEAD:10001 needs ray[client], which deramos[ray] did not install."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert any(requirement.startswith("ray[client,data]") for requirement in project["optional-dependencies"]["ray"])
    import grpc  # noqa: F401  (what ray[client] adds)
    from ray.util.client import ray as client  # noqa: F401


@pytest.fixture(scope="module")
def head_node():
    """`ray start --head --block` on 127.0.0.1 with a Ray Client server, in a temporary folder of
    its own (so its address file is not /tmp/ray's, where other Ray users would find it)."""
    temp = Path(tempfile.mkdtemp(prefix="dr-"))        # short: Ray's socket paths must stay under 108 bytes
    gcs, client, agent = _free_port(), _free_port(), _free_port()
    env = _env() | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    log = open(temp / "head.log", "w")
    process = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                                "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--ray-client-server-port",
                                str(client), "--dashboard-agent-listen-port", str(agent), "--num-cpus", "2",
                                "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", str(temp)],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 180
    while not (temp / "ray_current_cluster").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"ray start did not come up:\n{(temp / 'head.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield gcs, client
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.parametrize("form", ["gcs", "client"])
def test_a_ray_start_cluster_through_its_gcs_and_through_ray_client(head_node, small_manifest, small_local,
                                                                    runtime_bundle, tmp_path, form):
    gcs, client = head_node
    address = f"127.0.0.1:{gcs}" if form == "gcs" else f"ray://127.0.0.1:{client}"
    out = tmp_path / "scores.jsonl"
    done = subprocess.run([*RUN, "--jsonl", small_manifest, "--bundle", runtime_bundle, "--backend",
                           "onnxruntime-cpu", "--ray", address, "-o", out],
                          capture_output=True, text=True, timeout=600, env=_env())
    assert done.returncode == 1, done.stderr
    said = done.stderr.splitlines()
    assert said[0] == f"ray: connecting to Ray ({address}) ..."
    assert said[1].startswith(f"ray: cluster at {address}: 2 CPUs, ")
    assert said[-1] == f"ray: 8 scored (2 failed), 0 already in {out}"
    rows = _rows_of(out)
    assert [r.pop("row") for r in rows] == [1, 2, 3, 5, 6, 7, 8, 9]
    assert rows == small_local

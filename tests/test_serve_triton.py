"""deramos-serve: a real Triton Inference Server (PyTriton) on localhost, driven with tritonclient.

The server runs from .venv-serve (nvidia-pytriton pins numpy<2; `make test` builds it), or from
$DERAMOS_SERVE_BIN. One server for the module; the last test stops it with SIGTERM."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from runtime_helpers import RATE, music, write_wav

httpclient = pytest.importorskip("tritonclient.http", reason="needs deramos[triton-client]")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs deramos[triton-client]")

SERVE_BIN = Path(os.environ.get("DERAMOS_SERVE_BIN", Path(__file__).resolve().parents[1] / ".venv-serve/bin/deramos-serve"))
PROMPT = "calm solo piano"
START_TIMEOUT_S = 180


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class Server:
    def __init__(self, process: subprocess.Popen, log: Path, http: int, grpc: int, metrics: int, rows: int):
        self.process, self.log = process, log
        self.http, self.grpc, self.metrics = f"127.0.0.1:{http}", f"127.0.0.1:{grpc}", f"127.0.0.1:{metrics}"
        self.rows = f"127.0.0.1:{rows}"
        self.first_reply = None         # what the model answered when /v2/health/ready first said 200


@pytest.fixture(scope="module")
def server(runtime_bundle, tmp_path_factory):
    """The server, started here; /v2/health/ready is polled every 20 ms from the start, and the
    moment it says 200 one clip is sent (HTTP), its answer kept in `first_reply`."""
    if not SERVE_BIN.exists():
        pytest.skip(f"{SERVE_BIN} missing: run `make .venv-serve/.installed` (deramos[serve] in its own venv)")
    http, grpc, metrics, rows = _free_ports(4)
    folder = tmp_path_factory.mktemp("serve")
    log = folder / "server.log"
    clip = write_wav(folder / "first.wav", music(2.0, seed=1)).read_bytes()
    with open(log, "w") as handle:
        process = subprocess.Popen([str(SERVE_BIN), "--bundle", str(runtime_bundle), "--backend", "onnxruntime-cpu",
                                    "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
                                    "--row-metrics-port", str(rows)],
                                   stdout=handle, stderr=subprocess.STDOUT)
    running = Server(process, log, http, grpc, metrics, rows)
    deadline = time.monotonic() + START_TIMEOUT_S
    while _status(f"http://{running.http}/v2/health/ready") != 200:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"deramos-serve did not become ready:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)
    client = httpclient.InferenceServerClient(running.http)
    try:
        running.first_reply = _outputs(client.infer("deramos", _inputs(httpclient, audio=[clip])))
    except Exception as error:      # a model that cannot answer yet: the test below says so
        running.first_reply = error
    finally:
        client.close()
    yield running
    if process.poll() is None:
        process.kill()
        process.wait()


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:     # not listening yet
        return None


def _inputs(module, audio=None, samples=None, rate=None, prompts=(PROMPT,)):
    inputs = []

    def add(name, array, dtype):
        tensor = module.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)

    if audio is not None:
        add("audio", np.array([[a] for a in audio], dtype=np.object_), "BYTES")
    if samples is not None:
        add("samples", np.asarray(samples, np.float32), "FP32")
    if rate is not None:
        add("sample_rate", np.full((len(prompts), 1), rate, np.int32), "INT32")
    add("prompt", np.array([[p.encode()] for p in prompts], dtype=np.object_), "BYTES")
    return inputs


def _outputs(reply) -> list[tuple]:
    return [(float(mi), float(ta), error.decode()) for mi, ta, error in
            zip(reply.as_numpy("mi")[:, 0], reply.as_numpy("ta")[:, 0], reply.as_numpy("error")[:, 0])]


def _expected(scores) -> list[tuple]:
    """The Scorer's values as the server sends them (FP32), equal up to rounding: the server
    batches rows its own way, and batch mates may round a last bit differently (a fresh clone
    on an AVX-512 machine saw 3.2697215 vs 3.2697213)."""
    return [(pytest.approx(float(np.float32(s.mi)), abs=1e-5), pytest.approx(float(np.float32(s.ta)), abs=1e-5), "")
            for s in scores]


def test_ready_means_the_model_answers(server, runtime_scorer, tmp_path):
    """The first request sent the moment /v2/health/ready said 200 was scored (PyTriton's
    default order made the server ready ~2.5 s before the model loaded: 400s meanwhile)."""
    clip = write_wav(tmp_path / "first.wav", music(2.0, seed=1))
    assert server.first_reply == _expected(runtime_scorer.score_batch([clip], PROMPT))
    assert _status(f"http://{server.http}/v2/models/deramos/ready") == 200
    assert "deramos-serve: model 'deramos' (onnxruntime-cpu, fp32) ready on http://" in server.log.read_text()


def test_health_ready_and_model_metadata(server):
    with urllib.request.urlopen(f"http://{server.http}/v2/health/live") as reply:
        assert reply.status == 200
    with urllib.request.urlopen(f"http://{server.http}/v2/health/ready") as reply:
        assert reply.status == 200
    metadata = httpclient.InferenceServerClient(server.http).get_model_metadata("deramos")
    assert {(t["name"], t["datatype"]) for t in metadata["inputs"]} == {
        ("audio", "BYTES"), ("samples", "FP32"), ("sample_rate", "INT32"), ("prompt", "BYTES")}
    assert [(t["name"], t["datatype"]) for t in metadata["outputs"]] == [("mi", "FP32"), ("ta", "FP32"), ("error", "BYTES")]
    config = grpcclient.InferenceServerClient(server.grpc).get_model_config("deramos").config
    assert config.max_batch_size == 64 and config.HasField("dynamic_batching")


def test_encoded_files_score_as_the_scorer_over_http_and_grpc(server, runtime_scorer, tmp_path):
    paths = [write_wav(tmp_path / f"{i}.wav", music(seconds, seed=i)) for i, seconds in enumerate((2.0, 8.5, 13.0))]
    expected = _expected(runtime_scorer.score_batch(paths, PROMPT))
    files = [p.read_bytes() for p in paths]
    http = httpclient.InferenceServerClient(server.http)
    grpc = grpcclient.InferenceServerClient(server.grpc)
    assert [_outputs(http.infer("deramos", _inputs(httpclient, audio=[f])))[0] for f in files] == expected
    assert [_outputs(grpc.infer("deramos", _inputs(grpcclient, audio=[f])))[0] for f in files] == expected
    several = _inputs(grpcclient, audio=files, prompts=[PROMPT] * 3)          # three rows in one request
    assert _outputs(grpc.infer("deramos", several)) == expected


def test_samples_at_any_rate_score_as_the_scorer(server, runtime_scorer):
    grpc = grpcclient.InferenceServerClient(server.grpc)
    waves = np.stack([music(4.0, seed=10 + i, rate=22050) for i in range(2)])
    prompts = ["fast drums", "a sad violin melody"]
    expected = _expected(runtime_scorer.score_batch(list(waves), prompts, sample_rate=22050))
    assert _outputs(grpc.infer("deramos", _inputs(grpcclient, samples=waves, rate=22050, prompts=prompts))) == expected


def test_a_bad_request_gets_its_error_and_the_server_keeps_serving(server, runtime_scorer):
    grpc = grpcclient.InferenceServerClient(server.grpc)
    bad = _outputs(grpc.infer("deramos", _inputs(grpcclient, audio=[b"not audio"])))
    assert bad[0][2] == "item 0: cannot decode audio (Format not recognised)"
    assert np.isnan(bad[0][0]) and np.isnan(bad[0][1])
    no_rate = _outputs(grpc.infer("deramos", _inputs(grpcclient, samples=np.zeros((1, RATE)))))
    assert no_rate[0][2] == "item 0: give audio (encoded file bytes) or samples with sample_rate"
    short = _outputs(grpc.infer("deramos", _inputs(grpcclient, samples=np.zeros((1, 100)), rate=RATE)))
    assert short[0][2] == "item 0: too short (0.006 s < 0.100 s minimum)"
    with pytest.raises(Exception, match="unexpected datatype|expected|INT64"):       # rejected by Triton itself
        tensor = grpcclient.InferInput("samples", [1, 4], "INT64")
        tensor.set_data_from_numpy(np.zeros((1, 4), np.int64))
        grpc.infer("deramos", [tensor] + _inputs(grpcclient))
    wave = music(3.0, seed=5)
    mixed = _outputs(grpc.infer("deramos", _inputs(grpcclient, samples=np.stack([wave, np.full_like(wave, np.nan)]),
                                                   rate=RATE, prompts=[PROMPT, PROMPT])))
    assert mixed[0] == _expected(runtime_scorer.score_batch([wave], PROMPT, sample_rate=RATE))[0]
    assert mixed[1][2] == "item 1: contains NaN or infinite samples"


def _prompt_input(module, raw: list[bytes]):
    tensor = module.InferInput("prompt", [len(raw), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[p] for p in raw], dtype=np.object_))
    return tensor


def test_prompts_are_strict_utf8_and_a_missing_prompt_says_so(server, runtime_scorer, tmp_path):
    """A prompt that is not UTF-8 fails its row (deramos-run refuses such a line too), instead
    of being scored with U+FFFD in it; a request without a prompt gets a reason, not a type."""
    grpc = grpcclient.InferenceServerClient(server.grpc)
    clip = write_wav(tmp_path / "p.wav", music(2.0, seed=2)).read_bytes()
    audio = _inputs(grpcclient, audio=[clip, clip], prompts=[PROMPT, PROMPT])[0]
    reply = _outputs(grpc.infer("deramos", [audio, _prompt_input(grpcclient, [PROMPT.encode(), b"calm \xff piano"])]))
    assert reply[0] == _expected(runtime_scorer.score_batch([tmp_path / "p.wav"], PROMPT))[0]
    assert reply[1][2] == "item 1: prompt is not UTF-8 text (byte 0xff at byte 5)"
    assert np.isnan(reply[1][0]) and np.isnan(reply[1][1])
    accented = _outputs(grpc.infer("deramos", [_inputs(grpcclient, audio=[clip])[0],
                                               _prompt_input(grpcclient, ["café jazz, piano".encode()])]))
    assert accented == _expected(runtime_scorer.score_batch([tmp_path / "p.wav"], "café jazz, piano"))
    missing = _outputs(grpc.infer("deramos", [_inputs(grpcclient, audio=[clip])[0]]))
    assert missing[0][2] == "item 0: missing prompt (give prompt: BYTES, UTF-8 text)"


def _rows_metric(server) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{server.rows}/metrics") as reply:
        text = reply.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith('deramos_rows_total{model="deramos",outcome="'):
            outcome = line.split('outcome="')[1].split('"')[0]
            values[outcome] = float(line.rsplit(" ", 1)[1])
    assert set(values) == {"scored", "failed"}, text
    return values


def test_failed_rows_are_counted_in_a_metric_of_their_own(server, tmp_path):
    """Triton counts a request whose rows failed as a success; deramos_rows_total counts rows."""
    grpc = grpcclient.InferenceServerClient(server.grpc)
    rows_before = _rows_metric(server)
    requests_before = _metric(server, "nv_inference_request_success")
    clip = write_wav(tmp_path / "m.wav", music(2.0, seed=3)).read_bytes()
    reply = _outputs(grpc.infer("deramos", _inputs(grpcclient, audio=[clip, b"not audio", clip],
                                                   prompts=[PROMPT, PROMPT, " "])))
    assert [error for _, _, error in reply] == ["", "item 1: cannot decode audio (Format not recognised)",
                                                "item 2: empty prompt"]
    assert _metric(server, "nv_inference_request_success") == requests_before + 1
    assert _rows_metric(server) == {"scored": rows_before["scored"] + 1, "failed": rows_before["failed"] + 2}


def test_load_levels_lose_no_request_and_metrics_count_them(server):
    from deramos.bench.serve_load import clip_payloads, run_level

    before = _metric(server, "nv_inference_request_success")
    payloads = clip_payloads(4, 2.0, RATE)
    results = [run_level(server.grpc, payloads, level, 12) for level in (1, 4)]
    assert [(r.concurrency, r.requests, r.ok, r.lost) for r in results] == [(1, 12, 12, 0), (4, 12, 12, 0)]
    assert all(r.p50_ms <= r.p99_ms for r in results)
    assert _metric(server, "nv_inference_request_success") == before + 24


def _metric(server, name: str) -> float:
    with urllib.request.urlopen(f"http://{server.metrics}/metrics") as reply:
        text = reply.read().decode()
    lines = [line for line in text.splitlines() if line.startswith(name + "{") and 'model="deramos"' in line]
    assert len(lines) == 1, text[:2000]
    return float(lines[0].rsplit(" ", 1)[1])


def test_sigterm_stops_the_server_cleanly(server):
    """Runs last in this module: the shared server is stopped here."""
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=90) == 0
    assert server.log.read_text().rstrip().endswith("deramos-serve: stopped")
    with pytest.raises(Exception):
        httpclient.InferenceServerClient(server.http).is_server_live()


def test_a_missing_bundle_is_one_line():
    if not SERVE_BIN.exists():
        pytest.skip(f"{SERVE_BIN} missing: run `make .venv-serve/.installed`")
    result = subprocess.run([str(SERVE_BIN), "--bundle", "/nonexistent/bundle"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: /nonexistent/bundle: bundle directory not found"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))

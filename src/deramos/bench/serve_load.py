"""A bounded load test of a running `deramos-serve`: throughput and latency at fixed concurrency.

    python -m deramos.bench.serve_load --url 127.0.0.1:8001 --concurrency 1,4,16 --requests 200

Each level sends exactly --requests requests (one clip each: encoded WAV bytes plus a prompt)
from --concurrency client threads over gRPC, then reports requests/s, p50/p99 latency, and how
many requests came back without a score (lost: an error in the response, an exception, or a
missing reply). Requires deramos[triton-client].
"""
from __future__ import annotations

import io
import json
import threading
import time
from dataclasses import asdict, dataclass

import click
import numpy as np

from ..runtime.cli_common import Command

MODEL = "deramos"


@dataclass
class LevelResult:
    concurrency: int
    requests: int
    ok: int
    lost: int
    seconds: float
    throughput: float       # requests per second
    p50_ms: float
    p99_ms: float


def wav_bytes(wave: np.ndarray, rate: int) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def request_inputs(audio: bytes, prompt: str) -> list:
    import tritonclient.grpc as grpcclient

    audio_in = grpcclient.InferInput("audio", [1, 1], "BYTES")
    audio_in.set_data_from_numpy(np.array([[audio]], dtype=np.object_))
    prompt_in = grpcclient.InferInput("prompt", [1, 1], "BYTES")
    prompt_in.set_data_from_numpy(np.array([[prompt.encode("utf-8")]], dtype=np.object_))
    return [audio_in, prompt_in]


def run_level(url: str, payloads: list[tuple[bytes, str]], concurrency: int, requests: int,
              timeout_s: float = 60.0) -> LevelResult:
    """Exactly `requests` requests, `concurrency` at a time; every one is accounted for."""
    import tritonclient.grpc as grpcclient

    latencies: list[float] = []
    failures: list[str] = []
    next_index = iter(range(requests))
    lock = threading.Lock()

    def worker() -> None:
        client = grpcclient.InferenceServerClient(url)
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                return
            audio, prompt = payloads[index % len(payloads)]
            start = time.perf_counter()
            try:
                reply = client.infer(MODEL, request_inputs(audio, prompt), client_timeout=timeout_s)
                error = reply.as_numpy("error")[0][0].decode()
                ok = not error and np.isfinite(reply.as_numpy("mi")[0][0])
            except Exception as exc:   # a load test counts failures, whatever they are
                ok, error = False, f"{type(exc).__name__}: {exc}"
            with lock:
                (latencies.append(time.perf_counter() - start) if ok else failures.append(error or "no score"))

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return LevelResult(concurrency, requests, len(latencies), requests - len(latencies), seconds,
                       len(latencies) / seconds, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)))


def clip_payloads(count: int, seconds: float, rate: int, seed: int = 0) -> list[tuple[bytes, str]]:
    """`count` rendered music clips as WAV bytes, each with its prompt."""
    from ..data.synth.music import SAMPLE_RATE, prompt_for, random_attributes, render_clip
    from ..runtime.audio import resample

    rng = np.random.default_rng(seed)
    payloads = []
    for _ in range(count):
        attrs = random_attributes(rng)
        wave = resample(render_clip(attrs, rng, SAMPLE_RATE, seconds), SAMPLE_RATE, rate)
        payloads.append((wav_bytes(wave, rate), prompt_for(attrs, rng)))
    return payloads


@click.command(cls=Command, help=__doc__, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--url", default="127.0.0.1:8001", show_default=True, help="The server's gRPC address.")
@click.option("--concurrency", default="1,4,16", show_default=True, help="Comma-separated client thread counts.")
@click.option("--requests", "requests", type=click.IntRange(min=1), default=200, show_default=True,
              help="Requests per concurrency level.")
@click.option("--clips", type=click.IntRange(min=1), default=16, show_default=True, help="Distinct clips sent.")
@click.option("--clip-seconds", type=click.FloatRange(min=0.5), default=10.0, show_default=True)
@click.option("--rate", type=int, default=16000, show_default=True, help="Sample rate of the WAV files sent.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the results here.")
def main(url, concurrency, requests, clips, clip_seconds, rate, json_out):
    levels = [int(c) for c in concurrency.split(",")]
    payloads = clip_payloads(clips, clip_seconds, rate)
    run_level(url, payloads, 1, min(4, requests))      # warm-up: sessions, prompt cache
    results = [run_level(url, payloads, level, requests) for level in levels]
    click.echo(f"{'concurrency':>11} {'requests':>8} {'lost':>4} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8}")
    for r in results:
        click.echo(f"{r.concurrency:>11} {r.requests:>8} {r.lost:>4} {r.throughput:>7.1f} {r.p50_ms:>8.1f} {r.p99_ms:>8.1f}")
    if json_out:
        with open(json_out, "w") as handle:
            json.dump({"url": url, "clip_seconds": clip_seconds, "levels": [asdict(r) for r in results]}, handle, indent=1)


if __name__ == "__main__":
    main()

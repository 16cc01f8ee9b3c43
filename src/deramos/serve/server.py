"""deramos-serve: the Scorer served by Triton Inference Server through PyTriton.

One model, `deramos`, with dynamic batching. Each row of a request is one clip:

    inputs   audio        BYTES  [1]    an encoded audio file (WAV, FLAC, Ogg, ...), or
             samples      FP32   [-1]   mono samples, with
             sample_rate  INT32  [1]    their rate in Hz
             prompt       BYTES  [1]    the text prompt (UTF-8)
    outputs  mi, ta       FP32   [1]    the scores (NaN when the row failed)
             error        BYTES  [1]    "" or a one-line reason naming the row

A bad row gets its reason in `error`; the other rows, and the server, go on. Triton's own
endpoints do the rest: /v2/health/live, /v2/health/ready, /v2/models/deramos/ready, and
Prometheus metrics on the metrics port (/metrics). /v2/health/ready turns 200 only once Triton
has loaded the model (it is loaded while the server starts, not after). Triton counts a request
whose rows failed as a success: rows are counted by outcome in `deramos_rows_total` on a port
of its own (--row-metrics-port, /metrics).
"""
from __future__ import annotations

import os
import signal
import sys
import sysconfig
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click
import numpy as np

from ..runtime.backends import BACKENDS
from ..runtime.cli_common import DEBUG_VARIABLE, Command, fail, stderr_line
from ..runtime.bundle import PRECISIONS

MODEL_NAME = "deramos"
MAX_BATCH = 64
QUEUE_DELAY_US = 2000      # how long Triton may hold a request to batch it with others


class RowCounter:
    """Rows answered, by outcome (thread-safe): what Triton's request counters cannot see."""

    def __init__(self):
        self._lock = threading.Lock()
        self.scored = self.failed = 0

    def add(self, scored: int, failed: int) -> None:
        with self._lock:
            self.scored += scored
            self.failed += failed

    def prometheus(self) -> str:
        with self._lock:
            scored, failed = self.scored, self.failed
        return (f"# HELP deramos_rows_total Rows (clips) the {MODEL_NAME} model answered, by outcome: scored, "
                f"or failed (the row's error output says why; Triton counts its request as a success).\n"
                f"# TYPE deramos_rows_total counter\n"
                f'deramos_rows_total{{model="{MODEL_NAME}",outcome="scored"}} {scored}\n'
                f'deramos_rows_total{{model="{MODEL_NAME}",outcome="failed"}} {failed}\n')


class ClipScorer:
    """The infer function: Triton's batched requests in, one score (or error) per row out."""

    def __init__(self, scorer, rows: RowCounter | None = None):
        self.scorer = scorer
        self.rows = rows or RowCounter()

    def __call__(self, requests: list) -> list[dict[str, np.ndarray]]:
        batches = [_rows(request) for request in requests]
        with tempfile.TemporaryDirectory(prefix="deramos-serve-") as scratch:
            # Encoded files go to the Scorer as files: decoded in its thread pool, checked and
            # named exactly as a local run would; the temporary name is swapped back below.
            # Rows are named within their own request ("item 0"): each client sees only its own.
            named = [(f"item {row}", fields, Path(scratch) / f"{number}-{row}")
                     for number, rows in enumerate(batches) for row, fields in enumerate(rows)]
            jobs = [_job(fields, name, path, self.scorer) for name, fields, path in named]
            scores = list(self.scorer.iter_scores(jobs, self.scorer.sample_rate))
        results = [(s.mi, s.ta, _renamed(s.error, item, name))
                   for s, (item, _), (name, _, _) in zip(scores, jobs, named)]
        failed = sum(error != "" for _, _, error in results)
        self.rows.add(len(results) - failed, failed)
        return _split(results, [len(rows) for rows in batches])


def _rows(request) -> list[dict]:
    """A request's inputs as one dict per row (inputs are [rows, ...] arrays)."""
    present = {name: request[name] for name in ("audio", "samples", "sample_rate", "prompt") if name in request}
    count = max(len(value) for value in present.values())
    return [{name: value[row] for name, value in present.items() if row < len(value)} for row in range(count)]


def _job(fields: dict, name: str, scratch: Path, scorer) -> tuple:
    """(item, prompt) for the Scorer: the row's prompt decoded strictly as UTF-8 (a prompt that
    is missing or not UTF-8 fails the row, as deramos-run refuses such a line), and its audio."""
    from ..runtime.scorer import Unscorable

    prompt = _text(fields.get("prompt"))
    if isinstance(prompt, Unscorable):
        return Unscorable(name, prompt.cause), None
    return _item(fields, name, scratch, scorer), prompt


def _item(fields: dict, name: str, scratch: Path, scorer):
    """What the Scorer scores for one row: a temporary file, a waveform at the model's rate, or
    the reason the row cannot be scored."""
    from ..runtime.audio import AudioError, prepare_waveform
    from ..runtime.scorer import Unscorable

    if "audio" in fields:
        scratch.write_bytes(bytes(fields["audio"][0]))
        return str(scratch)
    if "samples" not in fields or "sample_rate" not in fields:
        return Unscorable(name, "give audio (encoded file bytes) or samples with sample_rate")
    try:
        return prepare_waveform(fields["samples"], int(fields["sample_rate"][0]), scorer.sample_rate, name=name,
                                min_seconds=scorer.min_seconds)
    except AudioError as error:
        return Unscorable(name, error.cause)


def _text(value):
    """A row's prompt as text, or an Unscorable (with an empty name) saying why it is not."""
    from ..runtime.scorer import Unscorable

    if value is None or len(value) == 0:
        return Unscorable("", "missing prompt (give prompt: BYTES, UTF-8 text)")
    raw = value[0]
    if isinstance(raw, str):
        return raw
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as error:
        return Unscorable("", f"prompt is not UTF-8 text (byte 0x{bytes(raw)[error.start]:02x} at byte {error.start})")


def _renamed(error: str | None, item, name: str) -> str:
    if error is None:
        return ""
    return error.replace(item, name) if isinstance(item, str) else error


def _split(results: list[tuple], counts: list[int]) -> list[dict[str, np.ndarray]]:
    responses, start = [], 0
    for count in counts:
        chunk = results[start:start + count]
        start += count
        responses.append({
            "mi": np.array([[np.nan if mi is None else mi] for mi, _, _ in chunk], np.float32),
            "ta": np.array([[np.nan if ta is None else ta] for _, ta, _ in chunk], np.float32),
            "error": np.array([[error.encode("utf-8")] for _, _, error in chunk], dtype=np.object_),
        })
    return responses


def bind(triton, scorer, max_batch: int = MAX_BATCH, queue_delay_us: int = QUEUE_DELAY_US,
         rows: RowCounter | None = None) -> None:
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    triton.bind(
        model_name=MODEL_NAME,
        infer_func=ClipScorer(scorer, rows),
        inputs=[Tensor(name="audio", dtype=np.bytes_, shape=(1,), optional=True),
                Tensor(name="samples", dtype=np.float32, shape=(-1,), optional=True),
                Tensor(name="sample_rate", dtype=np.int32, shape=(1,), optional=True),
                Tensor(name="prompt", dtype=np.bytes_, shape=(1,))],
        outputs=[Tensor(name="mi", dtype=np.float32, shape=(1,)),
                 Tensor(name="ta", dtype=np.float32, shape=(1,)),
                 Tensor(name="error", dtype=np.bytes_, shape=(1,))],
        config=ModelConfig(max_batch_size=max_batch,
                           batcher=DynamicBatcher(max_queue_delay_microseconds=queue_delay_us)),
        strict=True,
    )


def use_own_libpython() -> None:
    """Triton's Python-backend stub links libpython3.X by name; put this interpreter's own
    library first, or a different system build of the same version is loaded and models fail
    to load ('_thread.RLock' object has no attribute '_recursion_count')."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        paths = [libdir] + [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p and p != libdir]
        os.environ["LD_LIBRARY_PATH"] = ":".join(paths)


def serve_row_metrics(rows: RowCounter, host: str, port: int) -> ThreadingHTTPServer:
    """deramos_rows_total in Prometheus' text format at http://HOST:PORT/metrics (a daemon thread)."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            body = rows.prometheus().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):     # no access log on stderr
            pass

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as error:
        raise RuntimeError(f"--row-metrics-port {port} on {host}: {error.strerror or error}") from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="deramos-row-metrics", daemon=True).start()
    return server


def _stop_on_sigterm() -> None:
    """SIGTERM (what service managers send) stops the server the way Ctrl-C does: in-flight
    requests are answered, then Triton and the model shut down."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


HELP = """Serve the DeRA-MOS scorer through Triton Inference Server (PyTriton; CPU or GPU).

\b
One model, "deramos" (dynamic batching). Inputs per row: audio (encoded file bytes)
or samples (FP32) + sample_rate (INT32), and prompt (BYTES, UTF-8). Outputs: mi, ta
(FP32) and error (BYTES, "" when the row was scored). Health: /v2/health/ready, 200
once the model is loaded; Triton's metrics: http://HOST:METRICS_PORT/metrics; rows
scored and failed (deramos_rows_total): http://HOST:ROW_METRICS_PORT/metrics.
Ctrl-C or SIGTERM stops it cleanly.
"""


@click.command(cls=Command, help=HELP, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--bundle", type=click.Path(), help="Exported bundle directory (default: $DERAMOS_BUNDLE, else the default model).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=8002, show_default=True)
@click.option("--row-metrics-port", type=click.IntRange(1, 65535), default=8003, show_default=True,
              help="Port of deramos_rows_total (rows scored / failed), Prometheus text at /metrics.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True, help="As deramos-run --backend.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Windows per inference batch.")
@click.option("--max-batch", type=click.IntRange(min=1), default=MAX_BATCH, show_default=True,
              help="Most rows Triton's dynamic batcher puts in one call.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads per ONNX Runtime session.")
def main(bundle, host, http_port, grpc_port, metrics_port, row_metrics_port, backend, precision, batch_size,
         max_batch, threads):
    try:
        code = _serve(bundle, host, http_port, grpc_port, metrics_port, row_metrics_port, backend, precision,
                      batch_size, max_batch, threads)
    except Exception as error:   # whatever keeps the server from running (a bundle, a port, PyTriton): one line
        if os.environ.get(DEBUG_VARIABLE):
            raise
        fail(error)
    sys.exit(code)


def _serve(bundle, host, http_port, grpc_port, metrics_port, row_metrics_port, backend, precision, batch_size,
           max_batch, threads) -> int:
    from ..runtime.scorer import Scorer

    scorer = Scorer.load(bundle, backend=backend, precision=precision, threads=threads, batch_size=batch_size,
                         say=stderr_line)
    use_own_libpython()
    try:
        from pytriton.triton import Triton, TritonConfig, TritonLifecyclePolicy
    except ImportError:
        raise RuntimeError("deramos-serve needs nvidia-pytriton: pip install 'deramos[serve]' "
                           "(in an environment of its own: it pins numpy<2)") from None

    config = TritonConfig(http_address=host, http_port=http_port, grpc_address=host, grpc_port=grpc_port,
                          metrics_address=host, metrics_port=metrics_port, allow_metrics=True,
                          allow_gpu_metrics=False, log_verbose=0, strict_readiness=True)
    rows = RowCounter()
    row_metrics = serve_row_metrics(rows, host, row_metrics_port)
    _stop_on_sigterm()
    # The model goes into Triton's model store before Triton starts, which loads it while it
    # starts: /v2/health/ready is 200 only once the model is loaded. (PyTriton's default starts
    # an empty Triton, ready at once, and loads the model afterwards: seconds of a ready server
    # whose model answers 400.)
    policy = TritonLifecyclePolicy(launch_triton_on_startup=False, local_model_store=True)
    try:
        with Triton(config=config, triton_lifecycle_policy=policy) as triton:
            bind(triton, scorer, max_batch, rows=rows)
            triton.run()
            stderr_line(f"deramos-serve: model {MODEL_NAME!r} ({scorer.backend.name}, {precision}) ready on "
                        f"http://{host}:{http_port} grpc {host}:{grpc_port} metrics http://{host}:{metrics_port}/metrics "
                        f"rows http://{host}:{row_metrics_port}/metrics")
            triton.serve()
    finally:
        row_metrics.shutdown()
        scorer.close()
    stderr_line("deramos-serve: stopped")
    return 0


if __name__ == "__main__":
    main()

"""How fast each precision of a bundle scores on the machine that builds it, against FP32.

INT8 is not faster everywhere: the default model's small matmuls cost as much in Q/DQ as they
save (0.79x FP32 at batch 1 on an AVX2-only CPU), while the paper preset runs 3x faster. So the
build stage measures, on the held-out windows it already has, the whole score (audio encoder,
text encoder, heads) through the runtime's ONNX Runtime CPU backend, and says where a precision
does not pay. Interleaved rounds, median: a load that comes and goes hits every precision alike.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from ..calibration.dataset import ClipSet
from ..runtime.audio import pad_waves
from ..runtime.backends import OrtBackend
from ..runtime.bundle import Bundle
from ..runtime.scorer import CPU_AUDIO_BATCH
from ..runtime.text import PromptTokenizer

BATCH = 8


@dataclass
class SpeedReport:
    batch: int
    seconds_per_batch: dict[str, float]       # precision -> median seconds for one batch
    audio_batch: int = CPU_AUDIO_BATCH        # windows per audio-encoder run, as the Scorer runs them on a CPU

    def ratio(self, precision: str) -> float:
        """How many times faster than FP32 (below 1: slower)."""
        return self.seconds_per_batch["fp32"] / self.seconds_per_batch[precision]

    def slower(self) -> list[str]:
        return [p for p in self.seconds_per_batch if p != "fp32" and self.ratio(p) < 1.0]

    def format(self) -> str:
        parts = [f"fp32 {self.seconds_per_batch['fp32'] * 1000:.0f} ms"]
        parts += [f"{p} {s * 1000:.0f} ms ({self.ratio(p):.2f}x)" for p, s in self.seconds_per_batch.items() if p != "fp32"]
        line = (f"speed here (onnxruntime-cpu, {self.batch} windows per batch, {self.audio_batch} per audio-encoder "
                f"run): " + ", ".join(parts))
        if self.slower():
            line += f"; {' and '.join(self.slower())} not faster than fp32 on this CPU: serve fp32 here"
        return line

    def to_dict(self) -> dict:
        return {"backend": "onnxruntime-cpu", "batch": self.batch, "audio_batch": self.audio_batch,
                "seconds_per_batch": self.seconds_per_batch,
                "vs_fp32": {p: self.ratio(p) for p in self.seconds_per_batch if p != "fp32"}}


def measure_speed(bundle: Bundle, precisions: list[str], clips: ClipSet, threads: int | None = None,
                  rounds: int = 5) -> SpeedReport:
    feeds = _feeds(bundle, clips)
    backends = {p: OrtBackend(bundle, p, threads=threads) for p in ["fp32", *precisions]}
    times: dict[str, list[float]] = {p: [] for p in backends}
    for _ in range(rounds + 1):                         # the first round warms every backend up
        for precision, backend in backends.items():
            start = time.perf_counter()
            _run_as_the_scorer_does(backend, feeds)
            times[precision].append(time.perf_counter() - start)
    for backend in backends.values():
        backend.close()
    return SpeedReport(len(feeds[0]), {p: statistics.median(t[1:]) for p, t in times.items()})


def _run_as_the_scorer_does(backend, feeds) -> None:
    """The batch CPU_AUDIO_BATCH rows at a time, as the Scorer runs a CPU's audio encoder: the
    same time per window as whole batches, and every backend timed side by side holds the
    activations of 2 windows, not 8 (the default model's first-use export peaked at 3.9 GB here)."""
    for start in range(0, len(feeds[0]), CPU_AUDIO_BATCH):
        backend.run_pipeline(*(feed[start:start + CPU_AUDIO_BATCH] for feed in feeds))


def _feeds(bundle: Bundle, clips: ClipSet):
    waves = [w[:bundle.window_samples] for w in clips.waves[:BATCH]]
    wave, lengths = pad_waves(waves)
    ids, mask = PromptTokenizer(bundle.tokenizer_file, bundle.max_tokens).encode(clips.prompts[:BATCH])
    return wave, lengths, ids, mask

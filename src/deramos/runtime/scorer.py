"""The Scorer: clips + prompts in, MI and TA on the 1-5 scale out.

    scorer = Scorer.load()                                      # default bundle, best backend
    scorer.score("clip.wav", "calm solo piano")                 # Score(mi=3.4, ta=2.9)
    scorer.score_batch(waves, "calm solo piano", sample_rate=32000)
    scorer.select(waves, "calm solo piano", sample_rate=32000, k=2)   # reward filter

It computes exactly what the PyTorch reference scorer (deramos.training.features.predict) computes:
clips longer than the window are cut by `split_windows` and their window scores averaged,
weighted by window length; each prompt is encoded alone and its tokens zero-padded per batch;
windows are sorted by length so a batch wastes little padding.

Bad input never raises out of score_batch: the item gets Score(error="<item>: <cause>") and
the rest of the batch is scored. Files are decoded and resampled in a thread pool while the
backend runs, and a Scorer may be shared between threads.
"""
from __future__ import annotations

import math
import os
import stat
import threading
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator

import numpy as np
import soundfile as sf

from .audio import AudioError, load_audio, prepare_waveform
from .backends import Backend, BackendReport, select_backend
from .bundle import Bundle, load_bundle
from .contract import AUDIO_ENCODER, HEADS, TEXT_ENCODER
from .cuda import DeviceArray, device_array_of, is_cuda_array
from .errors import NON_FINITE_SCORE
from .errors import one_line as _one_line
from .text import PromptError, PromptTokenizer
from .windows import split_windows, weighted_mean

MIN_SECONDS = 0.1           # shorter clips carry too little music to judge
PROMPT_CACHE_SIZE = 256
# Bytes of audio decoded ahead of the backend (the decoding buffers and the decoded clips
# waiting to be scored). One clip larger than this still runs, alone.
DECODE_BUDGET = 1 << 30
CPU_AUDIO_BATCH = 2         # windows per audio-encoder run on a host backend (Scorer.audio_batch)
# An item's error when the graphs return NaN or inf for it. Its input is not to blame: audio
# with non-finite samples never reaches the graphs (runtime/audio.py refuses it).


class SelfCheckFailed(RuntimeError):
    """The chosen backend/precision disagrees with the bundle's stored FP32 probe scores."""


class ScoringError(ValueError):
    """score() on a single item that cannot be scored; the message is one line."""


@dataclass
class Score:
    mi: float | None
    ta: float | None
    error: str | None = None
    name: str = ""
    seconds: float | None = None    # clip duration
    windows: int = 0                # windows the clip was scored in

    @property
    def ok(self) -> bool:
        return self.error is None

    def weighted(self, weights: tuple[float, float] = (0.5, 0.5)) -> float | None:
        """weights[0]*MI + weights[1]*TA (None for a failed item)."""
        return None if not self.ok else weights[0] * self.mi + weights[1] * self.ta

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Selection:
    """The k best items by weighted score, best first."""

    indices: list[int]
    scores: list[Score]
    values: list[float]                     # the weighted score of each selected item
    all_scores: list[Score] = field(repr=False, default_factory=list)


@dataclass(frozen=True)
class Unscorable:
    """An input already known to be bad (e.g. a malformed JSONL line): scored as that error,
    in its place, so outputs stay in input order."""

    name: str
    cause: str


@dataclass
class _Prepared:
    """One decoded input: float32 mono at the model's rate (host or GPU memory), or an error."""

    name: str
    prompt: str | None = None
    wave: np.ndarray | DeviceArray | None = None
    error: str | None = None

    @property
    def samples(self) -> int:
        return self.wave.shape[0]


class PromptCache:
    """Bounded LRU of encoded prompts (tokens [L, Dt]); thread-safe."""

    def __init__(self, capacity: int = PROMPT_CACHE_SIZE):
        self.capacity = capacity
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, prompt: str) -> np.ndarray | None:
        with self._lock:
            tokens = self._items.get(prompt)
            if tokens is not None:
                self._items.move_to_end(prompt)
            return tokens

    def put(self, prompt: str, tokens: np.ndarray) -> None:
        tokens.setflags(write=False)   # shared by every batch that uses the prompt
        with self._lock:
            self._items[prompt] = tokens
            self._items.move_to_end(prompt)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class Scorer:
    def __init__(self, bundle: Bundle, backend: Backend, batch_size: int = 8,
                 prompt_cache_size: int = PROMPT_CACHE_SIZE, decode_workers: int | None = None,
                 decode_budget: int = DECODE_BUDGET, tokenizer: PromptTokenizer | None = None,
                 audio_batch: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if audio_batch is not None and audio_batch < 1:
            raise ValueError(f"audio_batch must be >= 1, got {audio_batch}")
        self.decode_budget = decode_budget
        self.bundle, self.backend = bundle, backend
        self.batch_size = min(batch_size, backend.max_batch or batch_size)
        # Windows per audio-encoder run: on a CPU its activations grow with the batch and its speed
        # does not (default model, batch 8: 1.68 GB peak for the encoder, batch 2: 0.48 GB, same
        # time per clip), so host backends run it CPU_AUDIO_BATCH windows at a time.
        self.audio_batch = min(audio_batch or (CPU_AUDIO_BATCH if backend.device == "cpu" else self.batch_size),
                               self.batch_size)
        self.tokenizer = tokenizer or PromptTokenizer(bundle.tokenizer_file, bundle.max_tokens)
        self.sample_rate = bundle.sample_rate
        # A clip must give the encoder at least one frame, and 0.1 s in any case.
        self.min_seconds = max(MIN_SECONDS, bundle.samples_per_frame / bundle.sample_rate)
        self.prompts = PromptCache(prompt_cache_size)
        self._decode_workers = decode_workers or min(4, os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.self_check_report = None

    @classmethod
    def load(cls, bundle: str | os.PathLike | None = None, backend: str = "auto", precision: str = "fp32",
             threads: int | None = None, batch_size: int = 8, *, verify: bool = True, build: bool = False,
             self_check: bool = False, say=None, decode_budget: int = DECODE_BUDGET,
             audio_batch: int | None = None) -> "Scorer":
        """bundle None -> $DERAMOS_BUNDLE -> the default bundle (exported on first use).
        verify: check every file's sha256. self_check: score the bundle's probe clips with the
        chosen backend and precision and compare with their stored FP32 scores (the report is
        `scorer.self_check_report`); raises SelfCheckFailed when they disagree.
        Raises BundleError / BackendUnavailable (one line) when it cannot load, and ValueError
        for threads outside 1 to the machine's core count."""
        from .default import resolve_bundle_dir
        from .targets import int8_mismatch
        from .threads import check_threads

        threads = check_threads(threads)
        loaded = load_bundle(resolve_bundle_dir(bundle, say=say), verify=verify)
        with ThreadPoolExecutor(max_workers=1) as pool:   # the tokenizer loads while sessions open
            tokenizer = pool.submit(PromptTokenizer, loaded.tokenizer_file, loaded.max_tokens)
            chosen = select_backend(loaded, backend, precision, threads, build)
            scorer = cls(loaded, chosen, batch_size, decode_budget=decode_budget, tokenizer=tokenizer.result(),
                         audio_batch=audio_batch)
        if precision == "int8" and say is not None:
            mismatch = int8_mismatch(loaded.manifest.int8_target, scorer.backend.device)
            if mismatch:
                say(f"note: {mismatch}")
        if self_check:
            scorer.run_self_check()
        return scorer

    def run_self_check(self):
        """The bundle's probe clips through this scorer vs their stored FP32 scores (runtime/probes.py)."""
        from .probes import self_check

        self.self_check_report = self_check(self)
        if not self.self_check_report.passed:
            raise SelfCheckFailed(f"{self.bundle.root}: self-check failed for {self.backend.describe()}: "
                                  + "; ".join(self.self_check_report.failures))
        return self.self_check_report

    @property
    def backend_report(self) -> BackendReport | None:
        return self.backend.report

    # -- public API -------------------------------------------------------------------------------
    def score(self, item, prompt: str, sample_rate: int | None = None) -> Score:
        """One clip. Raises ScoringError (a ValueError) whose one-line message names the item and
        the cause when it cannot be scored; score_batch never raises for a bad item."""
        (result,) = self.iter_scores([(item, prompt)], sample_rate)
        if not result.ok:
            raise ScoringError(result.error)
        return result

    def score_batch(self, items, prompts: str | list[str], sample_rate: int | None = None) -> list[Score]:
        """N clips (paths, arrays, tensors, or an [N, samples] array) against prompts: a str for
        all of them, or a list/tuple of str with one per item. A prompt of any other type fails
        its items (Score.error), like any bad input."""
        items = _as_item_list(items)
        prompts = _as_prompt_list(prompts, len(items))
        return list(self.iter_scores(zip(items, prompts), sample_rate))

    def select(self, items, prompt: str, sample_rate: int | None = None, k: int = 1,
               weights: tuple[float, float] = (0.5, 0.5)) -> Selection:
        """Reward filter: the k items with the highest weights[0]*MI + weights[1]*TA, best first
        (ties keep input order; items that failed are never selected). k larger than the number
        of items that scored returns all of them: fewer than k, never an error."""
        weights = _check_weights(weights)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        scores = self.score_batch(items, prompt, sample_rate)
        values = [s.weighted(weights) for s in scores]
        ranked = sorted((i for i, v in enumerate(values) if v is not None), key=lambda i: -values[i])[:k]
        return Selection(ranked, [scores[i] for i in ranked], [values[i] for i in ranked], scores)

    def iter_scores(self, pairs: Iterable[tuple[object, str]], sample_rate: int | None = None) -> Iterator[Score]:
        """Scores for (item, prompt) pairs, in input order, while later items are still decoding.
        Decoding runs ahead by at most 2 chunks of items and `decode_budget` bytes of audio."""
        chunk_size = max(4 * self.batch_size, 16)
        ahead = _DecodeAhead(self, enumerate(pairs), sample_rate, 2 * chunk_size)
        ahead.refill()
        while ahead.pending:
            chunk = ahead.take(chunk_size)
            ahead.refill()   # keep the decoders busy while this chunk runs on the backend
            yield from self._score_chunk([prepared for prepared, _ in chunk])
            ahead.release(chunk)
            ahead.refill()   # what the budget held back until now

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.backend.close()

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- decoding (thread pool) -------------------------------------------------------------------
    def _decoder_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._decode_workers, thread_name_prefix="deramos-decode")
            return self._pool

    def _prepare(self, index: int, item, prompt, sample_rate) -> _Prepared:
        name = _item_name(item, index)
        try:
            if isinstance(item, Unscorable):
                return _Prepared(name, error=_one_line(f"{item.name}: {item.cause}"))
            prompt = PromptTokenizer.check(prompt, name)
            return _Prepared(name, prompt, self._decode(item, name, sample_rate))
        except (AudioError, PromptError, ValueError) as error:
            return _Prepared(name, error=_one_line(error))
        except Exception as error:  # whatever an odd input raises, it fails only itself
            return _Prepared(name, error=_one_line(f"{name}: cannot read input ({type(error).__name__}: {error})"))

    def _decode(self, item, name: str, sample_rate) -> np.ndarray | DeviceArray:
        if isinstance(item, (str, bytes, os.PathLike)):
            return load_audio(item, self.sample_rate, min_seconds=self.min_seconds)
        if is_cuda_array(item):
            return self._device_wave(item, name, sample_rate)
        if sample_rate is None:
            raise AudioError(name, "sample_rate is required for in-memory audio")
        if hasattr(item, "__dlpack__") and not isinstance(item, np.ndarray):
            item = _host_array_from_dlpack(item, name)
        return prepare_waveform(np.asarray(item), sample_rate, self.sample_rate, name=name,
                                min_seconds=self.min_seconds)

    def _device_wave(self, item, name: str, sample_rate) -> DeviceArray:
        if self.backend.device != "cuda":
            raise AudioError(name, f"a CUDA tensor needs a GPU backend (this scorer runs {self.backend.name}); "
                                   f"pass a CPU array (tensor.cpu()) or load the Scorer with backend="
                                   f"'onnxruntime-cuda' or 'tensorrt'")
        if sample_rate != self.sample_rate:
            raise AudioError(name, f"CUDA audio must already be at the model's {self.sample_rate} Hz "
                                   f"(got sample_rate={sample_rate}); resample on the GPU or pass a CPU array")
        try:
            wave = device_array_of(item)
        except ValueError as error:
            raise AudioError(name, str(error)) from None
        seconds = wave.shape[0] / self.sample_rate
        if seconds < self.min_seconds:
            raise AudioError(name, f"too short ({seconds:.3f} s < {self.min_seconds:.3f} s minimum)")
        return wave

    # -- inference --------------------------------------------------------------------------------
    def _score_chunk(self, chunk: list[_Prepared]) -> list[Score]:
        pieces = []   # (position in chunk, start, end): one window of one clip
        for position, prepared in enumerate(chunk):
            if prepared.error is None:
                spans = split_windows(prepared.samples, self.bundle.window_samples, self.bundle.min_tail_samples)
                pieces += [(position, start, end) for start, end in spans]
        pieces.sort(key=lambda piece: piece[2] - piece[1])
        parts: dict[int, list[tuple[float, float, int]]] = {}
        failures: dict[int, str] = {}
        for start in range(0, len(pieces), self.batch_size):
            batch = pieces[start:start + self.batch_size]
            for piece, outcome in zip(batch, self._run_isolated(chunk, batch)):
                if isinstance(outcome, str):
                    failures.setdefault(piece[0], outcome)
                else:
                    parts.setdefault(piece[0], []).append((*outcome, piece[2] - piece[1]))
        return [self._combine(prepared, parts.get(position, []), failures.get(position))
                for position, prepared in enumerate(chunk)]

    def _run_isolated(self, chunk: list[_Prepared], batch: list[tuple[int, int, int]]) -> list:
        """(mi, ta) per piece; if the batch fails, each piece runs alone so that only the
        piece that breaks the backend fails (as an error string)."""
        try:
            return list(zip(*self._run_batch(chunk, batch)))
        except Exception as error:
            if len(batch) == 1:
                return [_one_line(f"{chunk[batch[0][0]].name}: inference failed ({error})")]
        return [self._run_isolated(chunk, [piece])[0] for piece in batch]

    def _run_batch(self, chunk: list[_Prepared], batch: list[tuple[int, int, int]]) -> tuple[list, list]:
        tokens, token_mask = self._prompt_batch([chunk[position].prompt for position, _, _ in batch])
        windows = [(chunk[position].wave, start, end) for position, start, end in batch]
        frames, frame_mask = self._encode_audio(windows)
        out = self.backend.run(HEADS.name, HEADS.feeds(frames, frame_mask, tokens, token_mask))
        mi, ta = HEADS.outputs_of(out)[:2]
        return [float(v) for v in mi], [float(v) for v in ta]

    def _encode_audio(self, windows: list) -> tuple:
        """frames, frame_mask of the windows, `audio_batch` windows per run; the groups' frames are
        padded to one count (masked, as a shorter clip's are in one batch)."""
        outputs = []
        for start in range(0, len(windows), self.audio_batch):
            with self._audio_feeds(windows[start:start + self.audio_batch]) as feeds:
                outputs.append(AUDIO_ENCODER.outputs_of(self.backend.run(AUDIO_ENCODER.name, feeds)))
        if len(outputs) == 1:
            return outputs[0]
        width = max(frames.shape[1] for frames, _ in outputs)
        pad = lambda x: np.pad(x, [(0, 0), (0, width - x.shape[1])] + [(0, 0)] * (x.ndim - 2))  # noqa: E731
        return (np.concatenate([pad(frames) for frames, _ in outputs]),
                np.concatenate([pad(frame_mask) for _, frame_mask in outputs]))

    def _combine(self, prepared: _Prepared, parts: list, failure: str | None) -> Score:
        if prepared.error is not None or failure is not None:
            return Score(None, None, prepared.error or failure, name=prepared.name)
        mi = weighted_mean([p[0] for p in parts], [p[2] for p in parts])
        ta = weighted_mean([p[1] for p in parts], [p[2] for p in parts])
        seconds = prepared.samples / self.sample_rate
        if not (math.isfinite(mi) and math.isfinite(ta)):
            return Score(None, None, f"{prepared.name}: {NON_FINITE_SCORE}", prepared.name, seconds, len(parts))
        return Score(mi, ta, None, prepared.name, seconds, len(parts))

    # -- text: each prompt encoded alone, once, then zero-padded per batch ------------------------
    def _prompt_tokens(self, prompt: str) -> np.ndarray:
        tokens = self.prompts.get(prompt)
        if tokens is None:
            (tokens,) = TEXT_ENCODER.outputs_of(self.backend.run(TEXT_ENCODER.name,
                                                                 TEXT_ENCODER.feeds(*self.tokenizer.encode([prompt]))))
            tokens = np.array(tokens[0], dtype=np.float32)
            self.prompts.put(prompt, tokens)
        return tokens

    def _prompt_batch(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encoded = [self._prompt_tokens(p) for p in prompts]
        width = max(t.shape[0] for t in encoded)
        tokens = np.zeros((len(encoded), width, encoded[0].shape[1]), np.float32)
        mask = np.zeros((len(encoded), width), np.int64)
        for row, item in enumerate(encoded):
            tokens[row, :item.shape[0]] = item
            mask[row, :item.shape[0]] = 1
        return tokens, mask

    # -- audio: windows zero-padded into one [B, N] batch, on the host or on the GPU ---------------
    @contextmanager
    def _audio_feeds(self, windows: list[tuple[np.ndarray | DeviceArray, int, int]]):
        lengths = np.array([end - start for _, start, end in windows], np.int64)
        width = max(int(lengths.max()), self.backend.min_samples)
        with self.backend.waveform_batch(windows, width) as batch:   # the backend owns device memory
            yield AUDIO_ENCODER.feeds(batch, lengths)


class _DecodeAhead:
    """Decoding submitted in input order while both the item count and the bytes held stay
    under their bounds. Sizes come from the file header (or the array), before decoding."""

    def __init__(self, scorer: "Scorer", numbered, sample_rate, max_items: int):
        self.scorer, self.numbered, self.sample_rate, self.max_items = scorer, numbered, sample_rate, max_items
        self.pool = scorer._decoder_pool()
        self.pending: deque = deque()       # (future, bytes charged)
        self.held = 0                        # bytes charged to submitted, unreleased items
        self._next = None

    def refill(self) -> None:
        while len(self.pending) < self.max_items:
            if self._next is None:
                self._next = next(self.numbered, None)
                if self._next is None:
                    return
            index, (item, prompt) = self._next
            cost = _decode_bytes(item, self.sample_rate, self.scorer.sample_rate)
            if self.held and self.held + cost > self.scorer.decode_budget:
                return
            self._next = None
            self.held += cost
            future = self.pool.submit(self.scorer._prepare, index, item, prompt, self.sample_rate)
            self.pending.append((future, cost))

    def take(self, count: int) -> list[tuple[_Prepared, int]]:
        taken = []
        while self.pending and len(taken) < count:
            future, cost = self.pending.popleft()
            taken.append((future.result(), cost))
        return taken

    def release(self, chunk: list[tuple[_Prepared, int]]) -> None:
        for prepared, cost in chunk:
            prepared.wave = None
            self.held -= cost


def _decode_bytes(item, sample_rate, target_rate: int) -> int:
    """What decoding `item` holds at its peak: the mono clip at its own rate plus the resampled
    copy (float32). 0 when unknown: the decoder then reports the problem."""
    frames, rate = 0, target_rate
    if isinstance(item, (str, bytes, os.PathLike)):
        try:
            native = item if os.name == "nt" else os.fsencode(item)
            if not stat.S_ISREG(os.stat(native).st_mode):
                return 0      # opening a FIFO would block here; the decoder refuses it
            info = sf.info(native)
            frames, rate = info.frames, info.samplerate
        except Exception:   # unreadable, missing, odd name: _prepare says why
            return 0
    elif hasattr(item, "shape") and getattr(item, "ndim", 0) in (1, 2):
        frames, rate = max(item.shape) if item.ndim == 2 else item.shape[0], sample_rate or target_rate
    if frames <= 0 or not isinstance(rate, (int, float)) or rate <= 0:
        return 0
    return 4 * (frames + int(frames * target_rate / rate))


# --- input normalisation -----------------------------------------------------------------------------


def _as_item_list(items) -> list:
    """One path -> [path]; an [N, ...] array or tensor -> its N rows; a list stays a list."""
    if isinstance(items, (str, bytes, os.PathLike, Unscorable)):
        return [items]
    if isinstance(items, (list, tuple)):
        return list(items)
    if hasattr(items, "shape") and len(items.shape) >= 1:
        if len(items.shape) == 1:
            return [items]        # one mono clip
        return [items[i] for i in range(items.shape[0])]
    return list(items)


def _as_prompt_list(prompts, count: int) -> list:
    """A str is the prompt of every item; a list or tuple gives one per item (or one for all).
    Anything else (bytes, a dict, a number, None) is passed on as every item's prompt, for
    each item to fail with the reason."""
    if not isinstance(prompts, (list, tuple)):
        return [prompts] * count
    prompts = list(prompts)
    if len(prompts) == 1:
        return prompts * count
    if len(prompts) != count:
        raise ValueError(f"got {len(prompts)} prompts for {count} items (give 1 prompt or one per item)")
    return prompts


def _check_weights(weights) -> tuple[float, float]:
    try:
        w_mi, w_ta = (float(w) for w in weights)
    except (TypeError, ValueError):
        raise ValueError(f"weights must be two numbers (MI, TA), got {weights!r}") from None
    if not (math.isfinite(w_mi) and math.isfinite(w_ta)) or w_mi < 0 or w_ta < 0 or w_mi + w_ta == 0:
        raise ValueError(f"weights must be non-negative and not both zero, got {weights!r}")
    return w_mi, w_ta


def _item_name(item, index: int) -> str:
    if isinstance(item, (str, bytes, os.PathLike)):
        return os.fsdecode(item)
    if isinstance(item, Unscorable):
        return item.name
    return f"item {index}"


def _host_array_from_dlpack(tensor, name: str) -> np.ndarray:
    """A CPU tensor (torch, JAX, ...) viewed as numpy without copying and without importing it."""
    try:
        return np.from_dlpack(tensor)
    except Exception as error:  # e.g. torch refuses tensors that require grad
        raise AudioError(name, f"cannot read the tensor ({error}); pass tensor.detach() or a numpy array") from None



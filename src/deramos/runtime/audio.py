"""Audio loading for the runtime: any libsndfile format in, float32 mono at the model's rate out.

Only numpy, soundfile and soxr are used here so that an edge device can score clips without
torch installed. Every problem with an input clip is raised as an ``AudioError`` whose message is
a single line of the form ``<item>: <cause>``, ready to be printed next to the item in a batch log.
"""

from __future__ import annotations

import errno
import numbers
import os
import stat

import numpy as np
import soundfile as sf
import soxr

from .errors import one_line as _one_line

__all__ = ["AudioError", "load_audio", "prepare_waveform", "to_mono", "resample", "pad_waves"]

# A 2-D array whose first axis is this short (or shorter) and shorter than the second axis is
# read as (channels, samples); no real recording has more channels than this and fewer samples.
MAX_CHANNELS_FIRST = 16


class AudioError(ValueError):
    """One-line, human-readable error naming the item and the cause."""

    def __init__(self, name: str, cause: str) -> None:
        self.name = name
        self.cause = cause
        super().__init__(_one_line(f"{name}: {cause}"))


def load_audio(
    path: str | bytes | os.PathLike,
    target_rate: int,
    *,
    max_seconds: float = 3600.0,
    min_seconds: float = 0.1,
) -> np.ndarray:
    """Read an audio file and return it as float32 mono samples at ``target_rate``."""
    _check_target_rate(target_rate)
    name = os.fsdecode(path)   # a name that is not UTF-8 keeps its bytes as surrogate escapes
    native = _native_name(path, name)
    _check_file(native, name)
    _check_header(native, name, max_seconds)
    try:
        mono, rate = _read_mono(native)
    except (sf.SoundFileError, RuntimeError) as error:
        raise AudioError(name, f"cannot decode audio ({_libsndfile_reason(error)})") from error
    return prepare_waveform(
        mono,
        rate,
        target_rate,
        name=name,
        max_seconds=max_seconds,
        min_seconds=min_seconds,
    )


def prepare_waveform(
    wave: np.ndarray,
    sample_rate: int,
    target_rate: int,
    *,
    name: str = "<array>",
    max_seconds: float = 3600.0,
    min_seconds: float = 0.1,
) -> np.ndarray:
    """Validate an in-memory waveform and return it as float32 mono at ``target_rate``.

    ``wave`` is 1-D (samples) or 2-D: (channels, samples) when the first axis is the shorter
    one and at most 16 long, otherwise (samples, channels). Integer samples are scaled to
    [-1, 1) the way WAV files store them.
    """
    _check_target_rate(target_rate)
    sample_rate = _check_sample_rate(sample_rate, name)
    samples = _to_float32(np.asarray(wave), name)
    if samples.ndim not in (1, 2):
        raise AudioError(name, f"expected a 1-D or 2-D array, got {samples.ndim}-D")
    if samples.size == 0:
        raise AudioError(name, "no samples")
    if not np.all(np.isfinite(samples)):
        raise AudioError(name, "contains NaN or infinite samples")
    mono = to_mono(samples)
    _check_duration(len(mono) / sample_rate, name, min_seconds, max_seconds)
    return resample(mono, sample_rate, target_rate)


def pad_waves(waves, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Clips -> zero-padded batch [B, width or longest] float32 and their lengths [B] int64."""
    width = width or max(len(w) for w in waves)
    batch = np.zeros((len(waves), width), np.float32)
    for row, wave in enumerate(waves):
        batch[row, :len(wave)] = wave
    return batch, np.array([len(w) for w in waves], np.int64)


def to_mono(wave: np.ndarray) -> np.ndarray:
    """Average the channels of a 1-D or 2-D waveform into float32 mono (layout as in prepare_waveform)."""
    wave = np.asarray(wave)
    if wave.ndim == 1:
        return np.ascontiguousarray(wave, dtype=np.float32)
    if wave.ndim != 2:
        raise ValueError(f"expected a 1-D or 2-D array, got {wave.ndim}-D")
    channel_axis = 0 if _is_channels_first(wave.shape) else 1
    # Accumulate in float64: the mean of many float32 channels then rounds only once.
    return np.ascontiguousarray(wave.mean(axis=channel_axis, dtype=np.float64), dtype=np.float32)


def resample(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample float mono (or (samples, channels)) audio with soxr 'HQ'; float32 out."""
    if rate_in <= 0 or rate_out <= 0:
        raise ValueError(f"sample rates must be positive, got {rate_in} -> {rate_out}")
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if rate_in == rate_out:
        return wave
    return np.asarray(soxr.resample(wave, rate_in, rate_out, quality="HQ"), dtype=np.float32)


# --- checks -------------------------------------------------------------------------------------


def _native_name(path, name: str) -> str | bytes:
    """The name as the OS takes it: bytes on POSIX, so that a name that is not UTF-8 (decoded by
    Python with surrogate escapes) reaches libsndfile unchanged."""
    if os.name == "nt":
        return name
    try:
        return os.fsencode(path)
    except UnicodeEncodeError as error:   # a lone surrogate that no file system name decodes to
        char = error.object[error.start]
        raise AudioError(name, f"file name holds a lone surrogate (U+{ord(char):04X}), "
                               f"which names no file") from None


def _read_mono(native: str | bytes, block_frames: int = 1 << 18) -> tuple[np.ndarray, int]:
    """Decode block by block and mix down as it goes, so that a long multi-channel file never
    sits in memory interleaved: the peak is the mono result, not channels x float64 copies.
    The (samples, channels) layout is known here for certain, unlike in prepare_waveform."""
    with sf.SoundFile(native) as handle:
        mono = np.empty(handle.frames, np.float32)
        filled = 0
        for block in handle.blocks(blocksize=block_frames, dtype="float32", always_2d=True):
            mono[filled:filled + len(block)] = block.mean(axis=1, dtype=np.float64)
            filled += len(block)
        return mono[:filled], handle.samplerate


def _check_file(native: str | bytes, name: str) -> None:
    """Catch the common file-system problems before libsndfile turns them into vaguer errors."""
    try:
        status = os.stat(native)
    except FileNotFoundError:
        raise AudioError(name, "file not found") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise AudioError(name, "symlink loop (the link points back to itself)") from None
        raise AudioError(name, f"cannot open ({error.strerror or error})") from None
    if stat.S_ISDIR(status.st_mode):
        raise AudioError(name, "is a directory")
    if not stat.S_ISREG(status.st_mode):
        raise AudioError(name, f"not a regular file (a {_file_kind(status.st_mode)})")
    if status.st_size == 0:
        raise AudioError(name, "empty file (0 bytes)")


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "FIFO / named pipe"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"))
    return next((kind for test, kind in kinds if test(mode)), "special file")


def _check_header(native: str | bytes, name: str, max_seconds: float) -> int:
    """Read the header only, so a huge file is rejected before it is decoded into memory."""
    try:
        info = sf.info(native)
    except (sf.SoundFileError, RuntimeError) as error:
        raise AudioError(name, f"cannot decode audio ({_libsndfile_reason(error)})") from error
    if info.frames <= 0:
        raise AudioError(name, "no samples")
    if info.samplerate <= 0:
        raise AudioError(name, f"invalid sample rate {info.samplerate} in header")
    _check_duration(info.frames / info.samplerate, name, 0.0, max_seconds)
    return int(info.samplerate)


def _check_duration(seconds: float, name: str, min_seconds: float, max_seconds: float) -> None:
    if seconds < min_seconds:
        raise AudioError(name, f"too short ({seconds:.3f} s < {min_seconds:.3f} s minimum)")
    if seconds > max_seconds:
        raise AudioError(name, f"too long ({seconds:.1f} s > {max_seconds:.1f} s maximum)")


def _check_sample_rate(sample_rate: object, name: str) -> int:
    # bool is an Integral in Python, but True is never a sample rate.
    is_number = isinstance(sample_rate, numbers.Real) and not isinstance(sample_rate, bool)
    if not is_number or not float(sample_rate).is_integer() or sample_rate <= 0:
        raise AudioError(name, f"invalid sample rate {sample_rate!r} (must be a positive integer)")
    return int(sample_rate)


def _check_target_rate(target_rate: object) -> None:
    # A bad target rate is the caller's mistake, not the item's: plain ValueError.
    if isinstance(target_rate, bool) or not isinstance(target_rate, numbers.Integral) or target_rate <= 0:
        raise ValueError(f"target_rate must be a positive integer, got {target_rate!r}")


# --- conversions --------------------------------------------------------------------------------


def _to_float32(wave: np.ndarray, name: str) -> np.ndarray:
    """Scale integer PCM to [-1, 1) and cast floats to float32."""
    kind = wave.dtype.kind
    if kind == "f":
        # A float64 beyond float32's range becomes inf here and is caught as non-finite.
        with np.errstate(over="ignore"):
            return wave.astype(np.float32, copy=False)
    if kind in ("i", "u"):
        half_range = float(2 ** (wave.dtype.itemsize * 8 - 1))
        # Unsigned PCM (WAV's 8-bit) is offset binary: the midpoint is silence.
        offset = half_range if kind == "u" else 0.0
        return ((wave.astype(np.float64) - offset) / half_range).astype(np.float32)
    raise AudioError(name, f"unsupported sample type {wave.dtype}")


def _is_channels_first(shape: tuple[int, ...]) -> bool:
    rows, cols = shape
    return rows < cols and rows <= MAX_CHANNELS_FIRST


def _libsndfile_reason(error: Exception) -> str:
    """libsndfile's short reason ('Format not recognised.') rather than the full 'Error opening ...'."""
    reason = getattr(error, "error_string", "") or str(error)
    return _one_line(reason).rstrip(".") or type(error).__name__



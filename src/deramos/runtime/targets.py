"""INT8 targets: which quantisation scheme fits which processor, and what this one is.

ONNX Runtime's INT8 kernels differ by CPU. On x86 without VNNI, MLAS multiplies u8 x s8 with
VPMADDUBSW, which adds two products into an int16 and saturates when both weights of a pair
are large; S8 activations are shifted to u8 first, so the symmetric S8S8 scheme hits it too.
Weights limited to 7 bits (`reduce_range`) keep every pair below 2^15, at the price of half a
bit of weight precision. VNNI/AMX (x86) and SDOT/UDOT (arm64) accumulate in int32 directly,
and TensorRT wants symmetric full-range INT8, so those targets keep all 8 bits.

Measured on the export tests' model (AVX2-only EPYC, 64 held-out clips): S8S8 full range,
MI MAE 0.00145 / SRCC vs FP32 0.82; the same with 7-bit weights, MAE 0.00020 / SRCC 0.994.
"""
from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path


@dataclass(frozen=True)
class Int8Scheme:
    """How the QDQ graphs are quantised (recorded in the manifest next to the target)."""

    activations: str = "int8-symmetric"
    weights: str = "int8-symmetric-per-channel"
    weight_bits: int = 8             # 7: `reduce_range`, for CPUs whose kernels can saturate
    # Frequency-max convolutions as integer GEMMs (calibration/conv_gemm.py) run on ONNX
    # Runtime's CPU kernels (7-bit for `weight_bits` 7 too). TensorRT has no MatMulInteger:
    # its convolutions are QDQ. On a CPU the other convolutions stay FP32 unless asked
    # (--int8-ops conv): ONNX Runtime's QDQ convolutions ran slower than its FP32 ones (the
    # default model quantised whole: 0.46x), and musicnn's mid-end convolutions are the
    # layers whose INT8 drifts most (MI drift std 0.38 of the spread with them, 0.06 without).
    conv_gemm: bool = True
    default_ops: tuple[str, ...] = ("matmul", "conv-gemm")     # calibration/quantize.py's INT8_OPS

    def to_dict(self) -> dict:
        return asdict(self)


FULL_RANGE = Int8Scheme()
REDUCED_RANGE = Int8Scheme(weight_bits=7)

# target -> (scheme, what it is for)
INT8_TARGETS: dict[str, tuple[Int8Scheme, str]] = {
    "x86-avx2": (REDUCED_RANGE, "any x86-64 CPU (AVX2; also right, slightly less exact, with VNNI)"),
    "x86-vnni": (FULL_RANGE, "x86-64 CPUs with AVX-512 VNNI, AVX-VNNI or AMX"),
    "arm64": (FULL_RANGE, "arm64 CPUs (Jetson CPU, Graviton): SDOT/UDOT accumulate in int32"),
    "tensorrt": (Int8Scheme(conv_gemm=False, default_ops=("matmul", "conv")), "NVIDIA GPUs through TensorRT (symmetric, full range)"),
}
VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


@lru_cache(maxsize=1)
def cpu_kind() -> str:
    """This processor as an INT8 target name: arm64, x86-vnni, x86-avx2 (or the machine name)."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return "arm64"
    if machine not in ("x86_64", "amd64", "i686", "x86"):
        return machine or "unknown"
    return "x86-vnni" if cpu_flags() & VNNI_FLAGS else "x86-avx2"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def default_int8_target() -> str:
    """The target an INT8 build takes when none is asked for: this CPU's, but never x86-vnni
    (a bundle built on a VNNI machine must still be right on every x86 CPU)."""
    kind = cpu_kind()
    return kind if kind in ("arm64",) else "x86-avx2"


def int8_scheme(target: str) -> Int8Scheme:
    if target not in INT8_TARGETS:
        raise ValueError(f"unknown INT8 target {target!r}; choose from {', '.join(INT8_TARGETS)}")
    return INT8_TARGETS[target][0]


def _saturates_on(target: str, cpu: str) -> bool:
    """Full-range INT8 graphs on x86 without VNNI: int16 pairs of products can saturate."""
    return target in ("x86-vnni", "tensorrt") and cpu == "x86-avx2"


def build_target_note(target: str, cpu: str | None = None) -> str | None:
    """One line when an INT8 build for `target` on this CPU checks its drift on the wrong kernels:
    the drift check runs here, and a full-range build on x86 without VNNI saturates (it fails
    here although it may be right on a VNNI machine)."""
    if _saturates_on(target, cpu or cpu_kind()):
        return (f"this CPU has no VNNI: its INT8 kernels saturate the full-range {target} graphs, so the drift "
                f"check here measures that, not the target; build on the serving machine, or for x86-avx2")
    return None


def int8_mismatch(target: str | None, backend_device: str, cpu: str | None = None) -> str | None:
    """One line when INT8 graphs made for `target` are the wrong kind for where they will run."""
    if target is None:
        return None
    if backend_device != "cpu":
        return None if target == "tensorrt" else (
            f"INT8 graphs were made for {target}, not TensorRT: they run, but a --int8-target tensorrt "
            "build keeps the full 8-bit weight range")
    cpu = cpu or cpu_kind()
    if target == cpu or (target == "x86-avx2" and cpu.startswith("x86")):
        return None
    if _saturates_on(target, cpu):
        return (f"INT8 graphs were made for {target}; this CPU has no VNNI, so their full-range weights can "
                "saturate its INT8 kernels (scores drift): rebuild with --int8-target x86-avx2")
    return f"INT8 graphs were made for {target}; this CPU is {cpu}: rebuild with --int8-target {cpu} for its kernels"

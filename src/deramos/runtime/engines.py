"""Which TensorRT engines in a bundle can run on this device.

An engine is built for one GPU model, compute capability and TensorRT version
(`deramos-build BUNDLE --trt` writes `bundle/trt/<device-tag>/<graph>.<precision>.engine` beside a
`build.json`). Loading a foreign engine fails or, worse, runs slowly, so engines that do not
match are skipped, each with a one-line reason the backend report shows. Pure functions over
files and a DeviceDescription: testable without a GPU.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .bundle import GRAPHS
from .errors import one_line as _one_line

TRT_DIR = "trt"
BUILD_FILE = "build.json"


@dataclass(frozen=True)
class DeviceDescription:
    gpu_name: str
    compute_capability: str     # "8.7"
    tensorrt_version: str       # "10.3.0" (trt.__version__)

    def __str__(self) -> str:
        return f"{self.gpu_name} (compute {self.compute_capability}, TensorRT {self.tensorrt_version})"


@dataclass(frozen=True)
class EngineSet:
    directory: Path
    precision: str
    build: dict

    def engine_path(self, graph: str) -> Path:
        return self.directory / engine_file_name(graph, self.precision)


def engine_file_name(graph: str, precision: str) -> str:
    return f"{graph}.{precision}.engine"


def normalise_capability(value) -> str | None:
    """"8.7", 8.7, [8, 7], "sm_87", "87" -> "8.7"; None when unreadable."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{int(value[0])}.{int(value[1])}"
    text = str(value).strip().lower().removeprefix("sm_").removeprefix("sm")
    if match := re.fullmatch(r"(\d+)\.(\d+)", text):
        return f"{int(match[1])}.{int(match[2])}"
    if match := re.fullmatch(r"(\d+)(\d)", text):   # "87", "120"
        return f"{int(match[1])}.{int(match[2])}"
    return None


def same_tensorrt_version(built: str, running: str) -> bool:
    """Engines are portable only within one TensorRT release: compare major.minor.patch."""
    return str(built).split(".")[:3] == str(running).split(".")[:3]


def build_precisions(build: dict) -> list[str]:
    value = build.get("precision", build.get("precisions", []))
    return [value] if isinstance(value, str) else [str(p) for p in value]


def mismatch_reason(build: dict, precision: str, device: DeviceDescription) -> str | None:
    """Why the engines described by `build` cannot serve `precision` on `device` (None: they can)."""
    built_for = (f"{build.get('gpu_name', '?')} (compute {build.get('compute_capability', '?')}, "
                 f"TensorRT {build.get('tensorrt_version', '?')})")
    if precision not in build_precisions(build):
        return f"built for {'/'.join(build_precisions(build)) or 'no precision'}, not {precision}"
    if str(build.get("gpu_name", "")).strip().lower() != device.gpu_name.strip().lower():
        return f"built for {built_for}, this device is {device}"
    if normalise_capability(build.get("compute_capability")) != normalise_capability(device.compute_capability):
        return f"built for {built_for}, this device is {device}"
    if not same_tensorrt_version(build.get("tensorrt_version", ""), device.tensorrt_version):
        return f"built with TensorRT {build.get('tensorrt_version', '?')}, this is TensorRT {device.tensorrt_version}"
    return None


def find_engine_set(bundle_root: Path, precision: str, device: DeviceDescription,
                    listed: Mapping[str, str] | None = None) -> tuple[EngineSet | None, list[str]]:
    """The first engine directory under bundle/trt/ that matches; plus a reason per skipped one.
    With `listed` (the manifest's files{}), build.json and the engines must be listed there, so
    that they were hashed like every other file the runtime opens."""
    skipped: list[str] = []
    for build_file in sorted(Path(bundle_root, TRT_DIR).glob(f"*/{BUILD_FILE}")):
        where = f"{TRT_DIR}/{build_file.parent.name}"
        unlisted = _unlisted(where, precision, listed)
        if unlisted:
            skipped.append(f"{where}: {', '.join(unlisted)} not listed in manifest.json "
                           f"(not hashed; rebuild with deramos-build BUNDLE --trt)")
            continue
        try:
            build = json.loads(build_file.read_text())
            if not isinstance(build, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as error:
            skipped.append(f"{where}: unreadable {BUILD_FILE} ({_one_line(error)})")
            continue
        reason = mismatch_reason(build, precision, device)
        if reason is None:
            missing = [engine_file_name(g, precision) for g in GRAPHS
                       if not (build_file.parent / engine_file_name(g, precision)).is_file()]
            reason = f"{', '.join(missing)} missing" if missing else None
        if reason is None:
            return EngineSet(build_file.parent, precision, build), skipped
        skipped.append(f"{where}: {reason}")
    return None, skipped


def _unlisted(where: str, precision: str, listed: Mapping[str, str] | None) -> list[str]:
    if listed is None:
        return []
    names = [BUILD_FILE] + [engine_file_name(g, precision) for g in GRAPHS]
    return [name for name in names if f"{where}/{name}" not in listed]



"""Writing ONNX graphs (shared by the torch export and the torch-free build stage)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ..runtime.contract import EXTERNAL_DATA_MIN_BYTES, external_data_file_name


def save_onnx(proto, path: Path, external_min_bytes: int | None = None) -> list[Path]:
    """Save; a graph with more than `external_min_bytes` of weights keeps them in one side file
    (runtime/contract.py says why). Returns the files written, the graph first."""
    import onnx

    for stale in path.parent.glob(path.name + "*.data"):
        stale.unlink()
    size = sum(t.ByteSize() for t in proto.graph.initializer)
    if size < (EXTERNAL_DATA_MIN_BYTES if external_min_bytes is None else external_min_bytes):
        onnx.save_model(proto, str(path))
        return [path]
    data_name = external_data_file_name(path.name)
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    # onnx creates the side file 0600; a bundle served by another user (a Triton container)
    # must be able to read all of it, so it gets the graph file's permissions.
    os.chmod(path.parent / data_name, stat.S_IMODE(path.stat().st_mode))
    return [path, path.parent / data_name]

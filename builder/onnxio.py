"""Writing ONNX graphs (shared by the torch export and the torch-free build stage)."""
from __future__ import annotations

from pathlib import Path

# ONNX protobufs are capped at 2 GB: bigger graphs keep their weights in a side file.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def save_onnx(proto, path: Path) -> list[Path]:
    """Save, moving weights to `<name>.data` when the graph is too big for one protobuf."""
    import onnx

    for stale in path.parent.glob(path.name + "*.data"):
        stale.unlink()
    size = sum(t.ByteSize() for t in proto.graph.initializer)
    if size < EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(proto, str(path))
        return [path]
    data_name = path.name + ".data"
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    return [path, path.parent / data_name]

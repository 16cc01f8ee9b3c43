"""Where a graph's external weights lie in its side file, read from the graph's own bytes.

A graph over 16 MB keeps its weights in `<graph>.onnx.data` (runtime/contract.py). The runtime
hands ONNX Runtime verified bytes, never a path (runtime/backends.py), and the cheapest way to
give it the weights is as tensors viewing the verified side-file buffer
(SessionOptions.add_external_initializers): ORT then uses them where they are, where handing it
the whole file in memory makes it copy every tensor (0.07 s more for 90 MB on this 2-core box:
0.23 vs 0.16 s, reading the file included). That needs
each external initializer's name, type, shape, offset and length, which this module reads from
the ModelProto's protobuf wire format: the runtime has no `onnx` package (numpy + ORT only).

The reader is deliberately narrow: top-level graph initializers with data_location EXTERNAL and
a fixed-size numeric type. A graph with subgraphs, sparse initializers, an unknown type or
anything else unexpected returns None, and the caller falls back to handing ORT whole files.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

# TensorProto.DataType -> little-endian numpy type (types numpy lacks, e.g. bfloat16, are left out)
DTYPES = {1: "<f4", 2: "u1", 3: "i1", 4: "<u2", 5: "<i2", 6: "<i4", 7: "<i8", 9: "?", 10: "<f2", 11: "<f8",
          12: "<u4", 13: "<u8"}
_MODEL_GRAPH = 7                               # ModelProto.graph
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE = 1, 5, 15
_NODE_ATTRIBUTE = 5
_ATTRIBUTE_TENSOR, _ATTRIBUTE_GRAPH, _ATTRIBUTE_TENSORS, _ATTRIBUTE_GRAPHS = 5, 6, 10, 11
_TENSOR_DIMS, _TENSOR_TYPE, _TENSOR_NAME, _TENSOR_EXTERNAL, _TENSOR_LOCATION = 1, 2, 8, 13, 14
_EXTERNAL = 1                                  # TensorProto.DataLocation.EXTERNAL


class _Malformed(ValueError):
    pass


@dataclass(frozen=True)
class ExternalTensor:
    name: str
    dtype: np.dtype
    dims: tuple[int, ...]
    location: str          # the side file, as the graph names it
    offset: int
    length: int

    def view(self, data: bytes) -> np.ndarray:
        """The tensor inside `data` (the side file's bytes), without a copy."""
        return np.frombuffer(data, np.uint8, count=self.length, offset=self.offset).view(self.dtype).reshape(self.dims)


def external_tensors(model: bytes) -> list[ExternalTensor] | None:
    """The graph's external initializers, or None when it is not the simple case (see above)."""
    if sys.byteorder != "little":
        return None
    try:
        return _read_model(memoryview(model))
    except (_Malformed, IndexError, UnicodeDecodeError):
        return None


def _read_model(buf: memoryview) -> list[ExternalTensor] | None:
    graphs = [value for field, value in _fields(buf, 0, len(buf)) if field == _MODEL_GRAPH]
    if len(graphs) != 1:
        return None
    tensors = []
    for field, value in _fields(buf, *_span(graphs[0])):
        if field == _GRAPH_SPARSE or (field == _GRAPH_NODE and not _simple_node(buf, value)):
            return None
        if field == _GRAPH_INITIALIZER:
            tensor = _tensor(buf, value)
            if tensor is False:
                return None
            if tensor is not None:
                tensors.append(tensor)
    return tensors


def _simple_node(buf: memoryview, node) -> bool:
    """No subgraph among its attributes, and no tensor attribute stored outside the graph."""
    for field, attribute in _fields(buf, *_span(node)):
        if field != _NODE_ATTRIBUTE:
            continue
        for inner, value in _fields(buf, *_span(attribute)):
            if inner in (_ATTRIBUTE_GRAPH, _ATTRIBUTE_GRAPHS):
                return False
            if inner in (_ATTRIBUTE_TENSOR, _ATTRIBUTE_TENSORS) and _tensor(buf, value) is not None:
                return False
    return True


def _tensor(buf: memoryview, value):
    """An ExternalTensor; None for a tensor stored in the graph; False for one this reader cannot take."""
    dims, dtype, name, external, location = [], None, None, {}, 0
    for field, item in _fields(buf, *_span(value)):
        if field == _TENSOR_DIMS:
            if isinstance(item, tuple):          # packed
                dims += [_signed(v) for v in _packed_varints(buf, *item)]
            else:
                dims.append(_signed(item))
        elif field == _TENSOR_TYPE:
            dtype = item
        elif field == _TENSOR_NAME:
            name = _text(buf, item)
        elif field == _TENSOR_EXTERNAL:
            entry = dict((key, _text(buf, text)) for key, text in _fields(buf, *_span(item)))
            external[entry.get(1, "")] = entry.get(2, "")
        elif field == _TENSOR_LOCATION:
            location = item
    if location != _EXTERNAL:
        return None
    if dtype not in DTYPES or not name or any(d < 0 for d in dims) or "location" not in external:
        return False
    try:
        offset, length = int(external.get("offset", "0")), int(external["length"])
    except (KeyError, ValueError):
        return False
    itemsize = np.dtype(DTYPES[dtype]).itemsize
    if length != itemsize * int(np.prod(dims, dtype=np.int64)) or offset < 0 or offset % itemsize:
        return False
    return ExternalTensor(name, np.dtype(DTYPES[dtype]), tuple(dims), external["location"], offset, length)


# --- protobuf wire format -------------------------------------------------------------------------


def _fields(buf: memoryview, start: int, end: int):
    """(field number, value) of each field in buf[start:end]: an int for a varint, (start, end)
    for a length-delimited field; fixed-width fields are skipped."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield field, value
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise _Malformed("field runs past its message")
            yield field, (pos, pos + length)
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise _Malformed(f"wire type {wire}")
    if pos != end:
        raise _Malformed("message ends inside a field")


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise _Malformed("varint too long")


def _packed_varints(buf: memoryview, start: int, end: int):
    pos = start
    while pos < end:
        value, pos = _varint(buf, pos)
        yield value


def _span(value) -> tuple[int, int]:
    if not isinstance(value, tuple):
        raise _Malformed("expected a length-delimited field")
    return value


def _text(buf: memoryview, value) -> str:
    start, end = _span(value)
    return bytes(buf[start:end]).decode("utf-8")


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value

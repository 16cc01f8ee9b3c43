"""FP32 -> FP16 graphs, with the numerically sensitive parts kept in FP32.

Kept in FP32 (the "fp32 region"):
- the whole mel front-end: power spectra span ~20 orders of magnitude before the log; FP16
  would flush quiet bins to zero (log -> -inf) and overflow loud ones;
- normalisations and reductions whose FP16 accumulation drifts: LayerNormalization,
  ReduceMean/ReduceSum, Pow/Sqrt, Softmax (the score-bin softmax decides MI and TA), Log/Exp;
- ops whose float inputs must stay FP32 by definition (Range and friends).
Inputs and outputs stay FP32, so the runtime feeds every precision alike.

Why not onnxruntime.transformers.float16: it wraps each blocked node in its own casts, so a
tensor between two blocked nodes still makes a round trip through FP16 — the front-end's
clamp(1e-10) -> log then becomes log(0). Here a tensor is cast only where it crosses from
the FP32 region into the FP16 one or back.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from ..runtime.contract import fp32_kept_prefixes
from .onnxio import save_onnx

FP32_OPS = {"LayerNormalization", "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Softmax", "Log", "Exp",
            "Range", "CumSum", "TopK", "Resize", "RandomUniformLike", "RandomNormalLike"}


def convert_to_fp16(src: Path, dst: Path) -> list[Path]:
    import onnx

    model = onnx.load(str(src), load_external_data=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # numpy_helper's deprecation chatter on float16 arrays
        converted = to_fp16(model)
    return save_onnx(converted, dst)


def _in_fp32_region(node) -> bool:
    return node.op_type in FP32_OPS or node.name.startswith(fp32_kept_prefixes())


def to_fp16(model):
    """The graph in FP16 outside the FP32 region (FP32_OPS, the contract's fp32_kept_prefixes), with
    Casts where the two meet; graph inputs and outputs keep their FP32 type."""
    import onnx

    rewrite = _Fp16Rewrite(model)
    rewrite.weights()
    for node in list(model.graph.node):
        rewrite.node(node)
    rewrite.outputs_back_to_fp32()
    rewrite.install()
    if model.ByteSize() < 1_900_000_000:
        onnx.checker.check_model(model)
    return model


class _Fp16Rewrite:
    """What one conversion shares: the precision each float tensor is produced in (`home`), each
    tensor's consumers, and the Casts made so far (one per tensor and direction)."""

    def __init__(self, model):
        from onnx import TensorProto

        self.graph = model.graph
        self.float_tensors = _float_tensors(model)
        self.outputs = {o.name for o in self.graph.output}
        self.consumers: dict[str, list] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.home = {v.name: TensorProto.FLOAT for v in self.graph.input
                     if v.type.tensor_type.elem_type == TensorProto.FLOAT}
        self.new_nodes: list = []
        self.casts: dict[tuple[str, int], str] = {}

    def only_fp16_consumers(self, name: str) -> bool:
        users = self.consumers.get(name, [])
        return bool(users) and not any(_in_fp32_region(n) for n in users) and name not in self.outputs

    def weights(self) -> None:
        """FP32 initializers read only by FP16 nodes become FP16."""
        import numpy as np
        from onnx import TensorProto, numpy_helper

        for init in self.graph.initializer:
            if init.data_type != TensorProto.FLOAT:
                continue
            if self.only_fp16_consumers(init.name):
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
                self.home[init.name] = TensorProto.FLOAT16
            else:
                self.home[init.name] = TensorProto.FLOAT

    def cast_to(self, name: str, dtype: int) -> str:
        from onnx import TensorProto, helper

        key = (name, dtype)
        if key not in self.casts:
            self.casts[key] = f"{name}_as_{'fp16' if dtype == TensorProto.FLOAT16 else 'fp32'}"
            self.new_nodes.append(helper.make_node("Cast", [name], [self.casts[key]], to=dtype,
                                                   name=self.casts[key] + "_cast"))
        return self.casts[key]

    def node(self, node) -> None:
        """Cast the node's inputs to its precision and record the precision of its outputs."""
        from onnx import TensorProto

        fp16_node = not _in_fp32_region(node)
        if node.op_type == "Constant" and fp16_node and all(self.only_fp16_consumers(o) for o in node.output):
            _constant_to_fp16(node)
        want = TensorProto.FLOAT16 if fp16_node else TensorProto.FLOAT
        for i, name in enumerate(node.input):
            if name in self.home and self.home[name] != want:
                node.input[i] = self.cast_to(name, want)
        if node.op_type == "Cast" and fp16_node and _attr(node, "to") == TensorProto.FLOAT:
            _set_attr(node, "to", TensorProto.FLOAT16)
        produced = TensorProto.FLOAT16 if fp16_node and node.op_type != "Constant" else TensorProto.FLOAT
        if node.op_type == "Constant":
            produced = TensorProto.FLOAT16 if _constant_is_fp16(node) else TensorProto.FLOAT
        for name in node.output:
            if name in self.float_tensors:
                self.home[name] = produced
        self.new_nodes.append(node)

    def outputs_back_to_fp32(self) -> None:
        """Graph outputs keep their FP32 type: rename the FP16 producer's tensor and cast back."""
        from onnx import TensorProto, helper

        for value in self.graph.output:
            if self.home.get(value.name) != TensorProto.FLOAT16:
                continue
            inner = value.name + "_fp16"
            for node in self.new_nodes:
                node.output[:] = [inner if o == value.name else o for o in node.output]
                node.input[:] = [inner if i == value.name else i for i in node.input]
            self.new_nodes.append(helper.make_node("Cast", [inner], [value.name], to=TensorProto.FLOAT,
                                                   name=value.name + "_out_cast"))

    def install(self) -> None:
        del self.graph.node[:]
        self.graph.node.extend(self.new_nodes)
        del self.graph.value_info[:]   # stale FP32 annotations; ONNX Runtime re-infers


def _float_tensors(model) -> set[str]:
    import onnx
    from onnx import TensorProto

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - >2 GB protobufs: fall back to what the graph declares
        inferred = model
    values = list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)
    names = {v.name for v in values if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    for node in model.graph.node:
        if node.op_type == "Constant" and _constant_is_float(node):
            names.update(node.output)
    return names


def _constant_is_float(node) -> bool:
    from onnx import TensorProto

    value = next((a for a in node.attribute if a.name == "value"), None)
    return value is not None and value.t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)


def _constant_is_fp16(node) -> bool:
    from onnx import TensorProto

    value = next((a for a in node.attribute if a.name == "value"), None)
    return value is not None and value.t.data_type == TensorProto.FLOAT16


def _constant_to_fp16(node) -> None:
    import numpy as np
    from onnx import TensorProto, numpy_helper

    for attr in node.attribute:
        if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
            attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16), attr.t.name))


def _attr(node, name):
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)


def _set_attr(node, name, value) -> None:
    for attr in node.attribute:
        if attr.name == name:
            attr.i = value

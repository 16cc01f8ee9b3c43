"""Frequency-max convolutions as integer GEMMs (calibration/conv_gemm.py), run by ONNX Runtime.

Two oracles: ONNX Runtime's own FP32 Conv + ReduceMax (the rewrite stays within the error of
8-bit rounding), and the integer arithmetic written out in numpy (the rewrite computes exactly
that: int32 accumulators, maximum before the scale)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from deramos.calibration import conv_gemm as cg
from deramos.calibration import quantize as q
from deramos.runtime import targets

F = 24            # frequency bins of the test input


def _skip_full_range_without_vnni(int16_pairs: bool) -> None:
    """Full-range codes (int16_pairs False: the x86-vnni and arm64 targets) are only right on CPUs
    whose INT8 kernels accumulate in int32: on x86 without VNNI, MLAS adds two u8 x s8 products
    in an int16 first and saturates (on an AVX2-only EPYC 7-8 % of these tests' outputs came out
    wrong). There the runtime warns about an x86-vnni bundle (targets.int8_mismatch); this
    arithmetic is checked where it runs, the 7-bit layouts (int16_pairs True) on every x86 CPU."""
    if not int16_pairs and targets.cpu_kind() == "x86-avx2":
        pytest.skip("full-range INT8 codes saturate int16 pairs on this x86 CPU without VNNI (x86-avx2)")


def _graph(weight, bias=None, *, pads=(0, 0, 0, 0), reduce_axes=(3,), keepdims=0, extra_reader=False,
           channels_in=1):
    """x [N, channels_in, T, F] -> Conv -> ReduceMax: the pattern musicnn's timbral filters export to."""
    inputs = ["x", "w"] + (["b"] if bias is not None else [])
    nodes = [helper.make_node("Conv", inputs, ["c"], name="/encoder/Conv", kernel_shape=list(weight.shape[2:]),
                              pads=list(pads), strides=[1, 1], dilations=[1, 1], group=1),
             helper.make_node("ReduceMax", ["c"], ["y"], name="/encoder/ReduceMax", axes=list(reduce_axes),
                              keepdims=keepdims)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["c"], ["r"], name="/encoder/Relu"))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    inits = [numpy_helper.from_array(weight.astype(np.float32), "w")]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.astype(np.float32), "b"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                          ["n", channels_in, "t", F])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def _case(seed=0, channels=12, kt=3, kf=5, n=2, t=40):
    """weight [C, 1, KT, KF], bias [C], x [N, 1, T + KT - 1, F]: T outputs per clip."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((channels, 1, kt, kf)) * 0.3
    bias = rng.standard_normal(channels) * 0.5
    x = rng.standard_normal((n, 1, t + kt - 1, F)).astype(np.float32)
    return weight, bias, x


def _integer_reference(weight, bias, x, scale, int16_pairs=False):
    """The rewrite's arithmetic in numpy: symmetric per-tensor codes for x, per-channel for the
    weights — 8 bits each, or for int16 pairs 7 bits for the weights (short kernels) or for x
    (long one-bin kernels) — exact integer dot products, the maximum over frequency, then the
    scales and bias."""
    c, _, kt, kf = weight.shape
    short = kt <= cg.MAX_SHORT_KERNEL
    low, high = (-64, 63) if int16_pairs and not short else (-128, 127)
    codes = np.clip(np.round(x[:, 0] / np.float32(scale)), low, high).astype(np.int64)   # half to even, as ONNX
    codes_w, w_scale = cg.weight_codes(weight, 7 if int16_pairs and short else 8)        # [C, KT*KF]
    n, t_in, f = codes.shape
    t, fo = t_in - kt + 1, f - kf + 1
    taps = np.stack([np.stack([codes[:, dt:dt + t, fi:fi + kf] for dt in range(kt)], axis=2) for fi in range(fo)], axis=1)
    acc = np.einsum("ck,nftk->ncft", codes_w, taps.reshape(n, fo, t, kt * kf))        # [N, C, FO, T]
    return acc.max(axis=2) * (scale * w_scale)[None, :, None] + bias[None, :, None]


def _assert_cannot_saturate_an_int16(model, int16_pairs):
    """On x86 without VNNI, MLAS adds pairs of u8 x s8 products in an int16: for such a CPU the
    unsigned operand keeps 7 bits, so that no pair exceeds 2^15 - 1."""
    from onnx import numpy_helper

    (gemm,) = [n for n in model.graph.node if n.op_type == cg.GEMM_OP]
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    if gemm.input[0] in init:           # unsigned weights x signed activations (-128..127)
        worst = 2 * int(init[gemm.input[0]].max()) * 128
    else:                               # unsigned activations, clipped or not, x signed weights
        clip = [n for n in model.graph.node if n.op_type == "Clip"]
        highest = int(init[clip[0].input[2]]) if clip else 255
        worst = 2 * highest * int(np.abs(init[gemm.input[1]].astype(np.int64)).max())
    assert (worst <= 2 ** 15 - 1) == int16_pairs


def _assert_same_arithmetic(got, expected, weight, scale):
    """Equal up to float32 rounding — except where an input sat within rounding of a code
    boundary, which a CPU's quantise kernel (x * 1/scale, vectorised) may put in the other
    code: at most one code step times the largest weight, and rarely."""
    close = np.isclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert close.mean() > 0.99, f"{(~close).sum()} of {close.size} outputs differ"
    step = scale * np.abs(weight).reshape(weight.shape[0], -1).max(axis=1)[None, :, None]
    assert np.all(np.abs(got - expected) <= 1.01 * step * weight.shape[2] * weight.shape[3] / 8 + 1e-6)


def test_the_pattern_is_found_and_only_it():
    weight, bias, _ = _case()
    assert [m.name for m in cg.find_frequency_max_convs(_graph(weight, bias))] == ["/encoder/Conv"]
    assert cg.find_frequency_max_convs(_graph(weight, bias), names={"/other"}) == []
    refused = {
        "padded": _graph(weight, bias, pads=(1, 0, 1, 0)),
        "max over time": _graph(weight, bias, reduce_axes=(2,)),
        "keepdims": _graph(weight, bias, keepdims=1),
        "a second reader": _graph(weight, bias, extra_reader=True),
        "two input channels": _graph(np.ones((4, 2, 3, 5)), channels_in=2),
        "a long kernel over several bins": _graph(np.ones((4, 1, cg.MAX_SHORT_KERNEL + 1, 2))),
    }
    for why, model in refused.items():
        assert cg.find_frequency_max_convs(model) == [], why


SHORT, LONG = dict(kt=3, kf=5), dict(kt=cg.MAX_SHORT_KERNEL + 4, kf=1)     # im2col / Toeplitz layouts


@pytest.mark.parametrize("int16_pairs", [False, True])
@pytest.mark.parametrize("kernel", [SHORT, LONG, dict(kt=7, kf=F), dict(kt=33, kf=1, t=5)], ids=["short", "long", "all-bins",
                                                                                              "long-few-frames"])
def test_rewrite_computes_the_integer_arithmetic(int16_pairs, kernel):
    weight, bias, x = _case(seed=int(int16_pairs), **kernel)
    model = _graph(weight, bias)
    bound = float(np.abs(x).max())
    assert cg.rewrite_frequency_max_convs(model, {"x": [[-bound], [bound]]}, int16_pairs) == ["/encoder/Conv"]
    ops = [n.op_type for n in model.graph.node]
    assert "Conv" not in ops and ops.count(cg.GEMM_OP) == 1
    assert {t.name for t in model.graph.initializer}.isdisjoint({"w", "b"})      # FP32 weights gone
    _assert_cannot_saturate_an_int16(model, int16_pairs)
    _skip_full_range_without_vnni(int16_pairs)
    got = _run(model, x)
    scale = bound / (63 if int16_pairs and kernel["kt"] > cg.MAX_SHORT_KERNEL else 127)
    expected = _integer_reference(weight, bias, x, scale, int16_pairs)
    assert got.shape == (2, 12, kernel.get("t", 40)) == expected.shape
    _assert_same_arithmetic(got, expected, weight, scale)


@pytest.mark.parametrize("int16_pairs, worst", [(False, 0.03), (True, 0.06)])
@pytest.mark.parametrize("kernel", [dict(kt=7, kf=9), dict(kt=40, kf=1)], ids=["short", "long"])
def test_rewrite_stays_close_to_the_fp32_convolution(int16_pairs, worst, kernel):
    _skip_full_range_without_vnni(int16_pairs)
    weight, bias, x = _case(seed=3, channels=16, t=60, **kernel)
    fp32 = _run(_graph(weight, bias), x)
    model = _graph(weight, bias)
    bound = float(np.abs(x).max())
    cg.rewrite_frequency_max_convs(model, {"x": [[-bound], [bound]]}, int16_pairs)
    error = np.abs(_run(model, x) - fp32).max() / np.abs(fp32).max()
    assert error < worst
    assert error > 1e-4           # it is INT8, not the FP32 graph again


def test_a_negative_weight_channel_and_no_bias():
    weight, _, x = _case(seed=5)
    weight[0] = -np.abs(weight[0])            # a filter whose response is negative everywhere
    model = _graph(weight)
    cg.rewrite_frequency_max_convs(model, {"x": [[-4.0], [4.0]]})
    _assert_same_arithmetic(_run(model, x), _integer_reference(weight, np.zeros(12), x, 4.0 / 127), weight, 4.0 / 127)


def test_no_range_no_rewrite():
    weight, bias, _ = _case()
    model = _graph(weight, bias)
    assert cg.rewrite_frequency_max_convs(model, {}) == []
    assert [n.op_type for n in model.graph.node] == ["Conv", "ReduceMax"]


def test_quantized_share_counts_integer_gemms(tmp_path):
    import onnx

    weight, bias, x = _case()
    model = _graph(weight, bias)
    cg.rewrite_frequency_max_convs(model, {"x": [[-3.0], [3.0]]})
    onnx.save(model, tmp_path / "g.onnx")
    share = q.quantized_share(tmp_path / "g.onnx", {"/encoder/Conv": 1.0e6})
    assert share["integer_gemms"] == share["quantized_ops"] == share["quantizable_ops"] == 1
    assert share["qdq_nodes"] == 1                          # the input's QuantizeLinear
    assert share["quantized_flop_share"] == pytest.approx(1.0)
    assert share["quantized_weight_share"] == pytest.approx(1.0)


@pytest.mark.parametrize("target, gemm", [("x86-vnni", True), ("x86-avx2", True), ("tensorrt", False)])
def test_quantize_rewrites_for_cpu_targets_only(tmp_path, target, gemm):
    import onnx

    weight, bias, x = _case()
    onnx.save(_graph(weight, bias), tmp_path / "g.onnx")
    ranges = {"x": [[-3.0], [3.0]], "c": [[-20.0], [20.0]], "y": [[-20.0], [20.0]]}
    ops = [n.op_type for n in q.quantize(tmp_path / "g.onnx", ranges, "minmax", target).graph.node]
    assert (cg.GEMM_OP in ops) == gemm and ("Conv" in ops) == (not gemm)
    assert ("DequantizeLinear" in ops) == (not gemm)        # TensorRT's convolution is QDQ


def test_ops_choose_what_is_quantised(tmp_path):
    import onnx

    weight, bias, _ = _case()
    onnx.save(_graph(weight, bias), tmp_path / "g.onnx")
    ranges = {"x": [[-3.0], [3.0]], "c": [[-20.0], [20.0]], "y": [[-20.0], [20.0]]}
    as_qdq = [n.op_type for n in q.quantize(tmp_path / "g.onnx", ranges, "minmax", "x86-vnni", ops=("conv",)).graph.node]
    assert "Conv" in as_qdq and cg.GEMM_OP not in as_qdq
    with pytest.raises(ValueError, match=r"g.onnx: nothing to quantise for tensorrt with --int8-ops conv-gemm"):
        q.quantize(tmp_path / "g.onnx", ranges, "minmax", "tensorrt", ops=("conv-gemm",))     # no MatMulInteger in TensorRT
    assert q.int8_ops("x86-avx2") == ("matmul", "conv-gemm") and q.int8_ops("tensorrt") == ("matmul", "conv")


def test_unknown_int8_ops_are_refused():
    from deramos.build.stage import BuildOptions

    with pytest.raises(ValueError, match=r"--int8-ops matmul,convs: choose one or more of matmul, conv, conv-gemm"):
        q.check_int8_options(BuildOptions(int8=True, int8_ops=("matmul", "convs")))


def test_a_convolution_with_little_of_the_work_stays_fp32(tmp_path):
    """Under MIN_GEMM_FLOP_SHARE of the graph's FLOPs an integer GEMM's extra nodes cost more than
    its arithmetic saves: the convolution is not rewritten (and is no QDQ node either)."""
    import onnx

    weight, bias, _ = _case()
    onnx.save(_graph(weight, bias), tmp_path / "g.onnx")
    model = _graph(weight, bias)
    ranges = {"x": [[-3.0], [3.0]], "c": [[-20.0], [20.0]], "y": [[-20.0], [20.0]]}
    small = {"/encoder/Conv": 0.9 * q.MIN_GEMM_FLOP_SHARE, "/encoder/dense/MatMul": 1.0}
    large = {"/encoder/Conv": 1.1 * q.MIN_GEMM_FLOP_SHARE, "/encoder/dense/MatMul": 1.0}
    assert q.int8_candidates(model, "x86-avx2", flops=small) == ([], [])
    assert q.int8_candidates(model, "x86-avx2", flops=large) == (["/encoder/Conv"], [])
    assert q.int8_candidates(model, "x86-avx2") == (["/encoder/Conv"], [])          # no FLOPs given: every one
    with pytest.raises(ValueError, match="nothing to quantise"):
        q.quantize(tmp_path / "g.onnx", ranges, "minmax", "x86-avx2", flops=small)
    ops = [n.op_type for n in q.quantize(tmp_path / "g.onnx", ranges, "minmax", "x86-avx2", flops=large).graph.node]
    assert cg.GEMM_OP in ops and "Conv" not in ops

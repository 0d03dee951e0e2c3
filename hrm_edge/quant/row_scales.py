"""Per-row dynamic activation scales for the cpu and tensorrt INT8 flavours (issue 21).

ONNX Runtime's dynamic quantization (`DynamicQuantizeLinear`) gives each activation one uint8 range
per call, over the whole tensor. Where the rows of an activation differ widely in size, that one range
rounds the small rows away: on the TRM maze demo the token MLP's down_proj input rows span about 160x
in rms, and the all-int8 graph solves 0.8% of the validation puzzles the fp32 model solves; with one
scale per row, all 66 sites in int8, it solves 100% of them and passes every INT8 gate
(bench/latest/session13-row-scales/). Another ONNX Runtime build computes these graphs with other
rounding (1.20.1 against 1.32: 3.5% of 256 mazes halt elsewhere); `hrm-edge verify` re-runs the INT8
gate on such a device.

`per_row_activations(model)` rewrites, in place, every `DynamicQuantizeLinear -> MatMulInteger` site
of a dynamically quantized graph into symmetric int8 with one scale per row (the last axis is the
reduced one; a row is one token of one puzzle, or one hidden channel in a token MLP):

    s = max(max |x| over the last axis, 1e-12) / 127          float [..., rows, 1]
    q = QuantizeLinear(x / s, scale 1, zero point uint8 128)   = round(x / s) + 128, levels 1..255
    y = float(MatMulInteger(q, W_q, a_zero_point=128)) * s * w_scale

The integers are the symmetric int8 ones (`q - 128`); they are stored as uint8 with zero point 128
because ONNX Runtime on x86 runs u8 x s8 integer matmuls about 10x faster than s8 x s8. Measured here
per site at the maze demo's shapes (batch 16, one thread, ORT 1.32): s8 x s8 18-26 ms, this form
1.2-1.9 ms, per-tensor `DynamicQuantizeLinear` 0.8-1.5 ms, fp32 MatMul 2.3-4.7 ms. (`QuantizeLinear`
with unit scale does round, shift and cast in one op: 1.2-1.9 ms against 1.6-2.0 ms with Round, Add, Cast.)
ONNX Runtime's optimizer fuses MatMulInteger -> Cast -> Mul(Mul(a_scale, b_scale)) into
MatMulIntegerToFloat, whose kernel (ORT 1.32) applies a non-scalar a_scale by broadcasting after the
integer GEMM: right for per-row scales. When an Add of a constant bias follows, it also folds the bias
into the GEMM, before the scales: then each row's bias is multiplied by that row's scale (measured on
the HRM demo's q_head: 26% relative error). `per_row_activations` therefore writes such an Add as
a Sub of the negated bias (bitwise the same sum), which the fusion does not match. Older ONNX Runtime
kernels refuse a non-scalar a_scale with an error (never a wrong result); the per-row graphs are
tested on the ONNX Runtime this project installs.

Every op is a standard ONNX op (opset 18: ReduceMax takes its axes as an input), so `check_graph`
holds and any ONNX runtime runs the graph. Rounding is half to even, the same as
`hrm_edge.quant.fakequant.dynamic_row`, which simulates it.

**The tensorrt flavour** (`per_row_qdq`). TensorRT's explicit quantization takes a Q/DQ pair with a
constant scale, so the scale per row and call cannot be the Q/DQ scale. It does not have to be: the
integers above are round(x / s), and s is one number per row of x, a row the matmul does not contract,
so it can be divided out in float before a Q/DQ pair of scale 1 and multiplied back after the matmul:

    s = max(max |x| over the last axis, 1e-12) / 127                     float [..., rows, 1]
    y = MatMul(DequantizeLinear(QuantizeLinear(x / s, 1, int8 0)), DQ(W_q)) * s

The Q/DQ pair is per-tensor, int8, zero point 0, its scale a constant: TensorRT's form, built into an
int8 GEMM; the reduction and the two elementwise ops run in float beside it. The integers are the cpu
graph's (stored as int8, not uint8 + 128), so the same simulation (`dynamic_row`) holds for both. A
static scale per row (calibrated |max| of each row; tried in session 19, `scripts/int8_static_channel.py`)
does not follow the carry from call to call: on the maze demo it kept 60 of 66 sites in float.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import onnx
from onnx import helper, numpy_helper

ACTIVATION_SCALES = ("tensor", "row")  # what `settings_for` takes; `export` also has "auto"
ROW_EPS = 1e-12  # floor of a row's |max|: an all-zero row quantizes to zeros instead of dividing by zero
ROW_LEVELS = 127  # symmetric levels per side
ROW_ZERO_POINT = 128  # uint8 storage of the symmetric int8 values

_CONSTANTS = {  # name -> value, shared by every rewritten site
    "row_scale_axes": np.array([-1], np.int64),
    "row_scale_eps": np.array(ROW_EPS, np.float32),
    "row_scale_inv_levels": np.array(1.0 / ROW_LEVELS, np.float32),
    "row_scale_unit": np.array(1.0, np.float32),
    "row_scale_zero_point": np.array(ROW_ZERO_POINT, np.uint8),
    "row_scale_zero_point_s8": np.array(0, np.int8),
}


def _row_scale(x: str, p: str, scale: str) -> list[onnx.NodeProto]:
    """The nodes computing `scale` = max(max |x| over the last axis, ROW_EPS) / ROW_LEVELS, names prefixed `p`."""
    return [
        helper.make_node("Abs", [x], [p + "_abs"], name=p + "_abs"),
        helper.make_node("ReduceMax", [p + "_abs", "row_scale_axes"], [p + "_absmax"], keepdims=1, name=p + "_absmax"),
        helper.make_node("Max", [p + "_absmax", "row_scale_eps"], [p + "_floor"], name=p + "_floor"),
        helper.make_node("Mul", [p + "_floor", "row_scale_inv_levels"], [scale], name=p + "_scale"),
    ]


def _readers(g: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def _add_constants(g: onnx.GraphProto, names: Collection[str]) -> None:
    have = {t.name for t in g.initializer}
    g.initializer.extend(numpy_helper.from_array(_CONSTANTS[n], n) for n in names if n not in have)


def per_row_activations(model: onnx.ModelProto, inputs: Collection[str] | None = None) -> int:
    """Replace every DynamicQuantizeLinear that feeds MatMulInteger (only those quantizing one of
    `inputs`, activation tensor names, when given) by per-row symmetric quantization (module
    docstring), in place. The quantized tensor and its scale keep their names, so the MatMulInteger and
    the rescaling Mul that read them are untouched; readers of the old zero point read the constant 128.
    Returns the number of DynamicQuantizeLinear nodes rewritten."""
    g = model.graph
    readers = _readers(g)
    nodes: list[onnx.NodeProto] = []
    rewritten = 0
    for k, node in enumerate(g.node):
        quantized = node.output[0] if node.op_type == "DynamicQuantizeLinear" else None
        if quantized is None or not readers.get(quantized) or \
                any(r.op_type != "MatMulInteger" for r in readers[quantized]) or \
                (inputs is not None and node.input[0] not in inputs):
            nodes.append(node)
            continue
        x, (q, scale, zero_point) = node.input[0], node.output
        p = f"{node.name or 'dql'}_{k}_row"
        nodes += [
            *_row_scale(x, p, scale),
            helper.make_node("Div", [x, scale], [p + "_scaled"], name=p + "_div"),
            helper.make_node("QuantizeLinear", [p + "_scaled", "row_scale_unit", "row_scale_zero_point"], [q],
                             name=p + "_quantize"),
        ]
        for reader in readers.get(zero_point, []):
            reader.input[:] = ["row_scale_zero_point" if i == zero_point else i for i in reader.input]
        rewritten += 1
    if rewritten:
        _bias_apart(g, {n.output[0] for n in nodes if n.name.endswith("_row_quantize")})
        del g.node[:]
        g.node.extend(nodes)
        _add_constants(g, ("row_scale_axes", "row_scale_eps", "row_scale_inv_levels", "row_scale_unit",
                           "row_scale_zero_point"))
    return rewritten


def _rows_commute(node: onnx.NodeProto, x: str) -> bool:
    """Whether a per-row scale of `x` can be taken out of `node`'s output: a MatMul reading x first, or a
    Gemm reading it untransposed whose bias (if any) is added once (beta 1)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "MatMul":
        return node.input[0] == x
    return (node.op_type == "Gemm" and node.input[0] == x and not attrs.get("transA", 0)
            and (len(node.input) < 3 or not node.input[2] or attrs.get("beta", 1.0) == 1.0))


def per_row_qdq(model: onnx.ModelProto) -> int:
    """Rewrite every activation Q/DQ pair of a static QDQ graph that feeds only matmuls as their first
    input (x -> QuantizeLinear -> DequantizeLinear -> MatMul(., W) or Gemm(., W[, bias])) into per-row
    scales in TensorRT's form (module docstring), in place: x / s is quantized with scale 1 and an int8
    zero point 0, each matmul's output is multiplied by s (a Gemm's bias is added after that); the output
    keeps its name, so `restore_float` and the per-site errors read the same tensors. Returns the number
    of Q/DQ pairs rewritten."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    readers = _readers(g)
    before: dict[int, list[onnx.NodeProto]] = {}  # id(node) -> nodes that go in front of it / after it
    after: dict[int, list[onnx.NodeProto]] = {}
    replaced: set[str] = set()  # the calibrated scales and zero points of the rewritten pairs
    for k, q in enumerate(g.node):
        x = q.input[0]
        dqs = readers.get(q.output[0], []) if q.op_type == "QuantizeLinear" else []
        if x in inits or len(dqs) != 1 or dqs[0].op_type != "DequantizeLinear":
            continue
        dq = dqs[0]
        mms = readers.get(dq.output[0], [])
        if not mms or not all(_rows_commute(m, dq.output[0]) for m in mms):
            continue
        p = f"{q.name or 'q'}_{k}_row"
        replaced.update(i for i in (*q.input[1:], *dq.input[1:]) if i in inits)
        before[id(q)] = [*_row_scale(x, p, p + "_s"), helper.make_node("Div", [x, p + "_s"], [p + "_scaled"],
                                                                       name=p + "_div")]
        q.input[:] = [p + "_scaled", "row_scale_unit", "row_scale_zero_point_s8"]
        dq.input[:] = [q.output[0], "row_scale_unit", "row_scale_zero_point_s8"]
        for j, mm in enumerate(mms):
            y, bias = mm.output[0], (mm.input[2] if len(mm.input) > 2 else "")
            del mm.input[2:]  # a Gemm's bias is added after the row scale, not scaled by it
            mm.output[0] = f"{y}_per_row"
            rescaled = f"{y}_rescaled" if bias else y
            after[id(mm)] = [helper.make_node("Mul", [mm.output[0], p + "_s"], [rescaled], name=f"{p}_rescale{j}")]
            if bias:
                after[id(mm)].append(helper.make_node("Add", [rescaled, bias], [y], name=f"{p}_bias{j}"))
    if before:
        nodes = [m for n in g.node for m in (*before.get(id(n), []), n, *after.get(id(n), []))]
        del g.node[:]
        g.node.extend(nodes)
        _add_constants(g, ("row_scale_axes", "row_scale_eps", "row_scale_inv_levels", "row_scale_unit",
                           "row_scale_zero_point_s8"))
        used = {i for n in g.node for i in n.input}
        for t in [t for t in g.initializer if t.name in replaced and t.name not in used]:
            g.initializer.remove(t)
    return len(before)


def _bias_apart(g: onnx.GraphProto, quantized: set[str]) -> None:
    """Rewrite every Add of a constant bias after a per-row site (MatMulInteger -> Cast -> Mul -> Add) as
    Sub of the negated bias (the same float result), in place, so that ORT's MatMulIntegerToFloat fusion
    leaves the bias out (module docstring)."""
    constants = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    for add in g.node:
        if add.op_type != "Add":
            continue
        bias = next((i for i in add.input if i in constants), None)
        mul = producer.get(next((i for i in add.input if i != bias), ""))
        if bias is None or mul is None or mul.op_type != "Mul":
            continue
        for name in mul.input:
            cast = producer.get(name)
            mm = producer.get(cast.input[0]) if cast is not None and cast.op_type == "Cast" else None
            if mm is not None and mm.op_type == "MatMulInteger" and mm.input[0] in quantized:
                negated = f"{bias}_negated"
                if negated not in constants:
                    constants[negated] = numpy_helper.from_array(-numpy_helper.to_array(constants[bias]), negated)
                    g.initializer.append(constants[negated])
                add.op_type = "Sub"
                add.input[:] = [mul.output[0], negated]
                break


__all__ = ["ACTIVATION_SCALES", "ROW_EPS", "ROW_LEVELS", "ROW_ZERO_POINT", "per_row_activations", "per_row_qdq"]

"""Per-row dynamic activation scales (`hrm_edge.quant.row_scales`): what the rewritten cpu INT8 graph
computes on ONNX Runtime, checked against a NumPy statement of symmetric int8 per row and against the
PyTorch simulation (`hrm_edge.quant.fakequant.dynamic_row`)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from hrm_edge.quant.fakequant import dynamic_row
from hrm_edge.quant.quantize import QuantSettings, quantize_graph, settings_for
from hrm_edge.quant.row_scales import per_row_activations, per_row_qdq
from hrm_edge.runtimes.ort.loader import make_session

D, N = 64, 48


BIAS = np.linspace(-5.0, 5.0, N, dtype=np.float32)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict[str, onnx.ModelProto]:
    """One MatMul x[rows, D] @ W[D, N], quantized dynamically (per-tensor), and the same rewritten per row;
    "row+bias": the same MatMul followed by Add(bias), as the halting head is, rewritten per row."""
    root = tmp_path_factory.mktemp("rows")
    w = np.random.default_rng(0).standard_normal((D, N)).astype(np.float32)
    out = {}
    for name, bias in (("row", False), ("row+bias", True)):
        nodes = [helper.make_node("MatMul", ["x", "w"], ["m" if bias else "y"], name="mm")]
        inits = [numpy_helper.from_array(w, "w")]
        if bias:
            nodes.append(helper.make_node("Add", ["m", "b"], ["y"], name="bias"))
            inits.append(numpy_helper.from_array(BIAS, "b"))
        graph = helper.make_graph(nodes, "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", D])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", N])], inits)
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(root / f"{name}.onnx"))
        out[name] = onnx.load(str(quantize_graph(root / f"{name}.onnx", root / f"{name}8.onnx", settings_for("cpu"))))
    out["tensor"] = onnx.load(str(root / "row8.onnx"))
    for name in ("row", "row+bias"):
        assert per_row_activations(out[name]) == 1
        onnx.checker.check_model(out[name])
    return out


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return make_session(model.SerializeToString(), threads=1).run(None, {"x": x})[0]


def _int8_weight(model: onnx.ModelProto) -> np.ndarray:
    """The dequantized per-channel int8 weight [D, N] the graph multiplies with."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    mm = next(n for n in model.graph.node if n.op_type == "MatMulInteger")
    scale = next(v for k, v in inits.items() if k.startswith("w_scale"))
    return inits[mm.input[1]].astype(np.float32) * scale.reshape(1, -1)


def _activations(seed: int = 1) -> np.ndarray:
    """8 rows whose sizes span 1000x, as the maze demo's token-MLP rows span ~160x in rms."""
    x = np.random.default_rng(seed).standard_normal((8, D)).astype(np.float32)
    return x * np.logspace(0, 3, 8, dtype=np.float32)[:, None]


def test_each_row_is_symmetric_int8_with_its_own_scale(graphs):
    x = _activations()
    scale = np.abs(x).max(axis=1, keepdims=True) * np.float32(1 / 127)
    expected = (np.round(x / scale) * scale) @ _int8_weight(graphs["row"])  # np.round: half to even
    got = _run(graphs["row"], x)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_a_bias_is_added_once_not_scaled_per_row(graphs):
    """ORT fuses a bias Add into MatMulIntegerToFloat ahead of the per-row scale; the rewrite keeps it out."""
    x = _activations()
    scale = np.abs(x).max(axis=1, keepdims=True) * np.float32(1 / 127)
    expected = (np.round(x / scale) * scale) @ _int8_weight(graphs["row+bias"]) + BIAS
    got = _run(graphs["row+bias"], x)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_a_large_row_leaves_the_other_rows_unchanged_only_per_row(graphs):
    x = _activations()
    louder = x.copy()
    louder[-1] *= 100.0
    row_before, row_after = _run(graphs["row"], x), _run(graphs["row"], louder)
    assert np.array_equal(row_before[:-1], row_after[:-1])
    tensor_before, tensor_after = _run(graphs["tensor"], x), _run(graphs["tensor"], louder)
    assert not np.array_equal(tensor_before[:-1], tensor_after[:-1])


def test_the_small_rows_keep_their_precision_per_row(graphs):
    """The 8 rows span 1000x: one range per tensor rounds the smallest row to (almost) nothing."""
    x = _activations()
    exact = x @ _int8_weight(graphs["row"])

    def small_row_error(name: str) -> float:
        return float(np.linalg.norm(_run(graphs[name], x)[0] - exact[0]) / np.linalg.norm(exact[0]))

    assert small_row_error("row") < 0.02
    assert small_row_error("tensor") > 0.5


def test_an_all_zero_row_gives_zeros(graphs):
    x = _activations()
    x[3] = 0.0
    got = _run(graphs["row"], x)
    assert np.isfinite(got).all() and not got[3].any()


def test_the_integers_go_through_the_u8_s8_kernel(graphs):
    """uint8 with zero point 128, not int8: ONNX Runtime's x86 s8 x s8 MatMulInteger is ~10x slower."""
    g = graphs["row"].graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    mm = next(n for n in g.node if n.op_type == "MatMulInteger")
    assert inits[mm.input[2]].dtype == np.uint8 and int(inits[mm.input[2]]) == 128
    assert inits[mm.input[1]].dtype == np.int8
    assert not any(n.op_type == "DynamicQuantizeLinear" for n in g.node)


def test_the_simulation_is_the_graph(graphs):
    x = _activations(seed=2)
    sim = dynamic_row(torch.from_numpy(x)).numpy() @ _int8_weight(graphs["row"])
    got = _run(graphs["row"], x)
    assert np.abs(got - sim).max() <= 1e-5 * np.abs(sim).max()


def test_row_scales_are_for_the_cpu_dynamic_and_the_tensorrt_graphs():
    with pytest.raises(ValueError, match="cpu target's dynamic mode and the tensorrt target"):
        settings_for("cpu", "static", activation_scale="row")
    assert settings_for("tensorrt", activation_scale="row").activation_scale == "row"


def test_the_settings_record_the_activation_scale():
    assert settings_for("cpu", activation_scale="row").to_dict()["activation_scale"] == "row"
    assert QuantSettings().activation_scale == "tensor"


def test_auto_builds_both_when_per_tensor_fails_and_keeps_the_better(demo, tmp_path):
    """The HRM 6x6 demo's all-int8 cpu graph (no search, 64 calibration puzzles) fails its gate per tensor, so
    "auto" also builds the per-row graph; neither passes and both keep 0 sites in float: the tie keeps
    per-tensor (ONNX Runtime's faster fused kernel), and the report names both candidates."""
    from hrm_edge.quant.quantize import choose_activation_scale

    pipe = demo["pipe"]
    built = choose_activation_scale(pipe, tmp_path / "int8.onnx", tmp_path, {"search": False}, "auto")
    choice = built.report["activation_scale_choice"]
    assert set(choice["candidates"]) == {"tensor", "row"}
    assert [c["calib_passed"] for c in choice["candidates"].values()] == [False, False]
    assert choice["chosen"] == "tensor" == built.entry["quantization"]["activation_scale"]
    assert built.path == tmp_path / "int8.onnx" and built.path.is_file()


def test_auto_covers_the_tensorrt_graph_with_per_row_scales_in_its_form(demo, tmp_path):
    """The same rule for the tensorrt target: its per-tensor graph fails (no search, 64 puzzles), so auto also
    builds the per-row graph, whose 50 activation Q/DQ pairs quantize x / s with the constant scale 1."""
    from hrm_edge.quant.quantize import choose_activation_scale

    built = choose_activation_scale(demo["pipe"], tmp_path / "int8.onnx", tmp_path, {"search": False}, "auto",
                                    target="tensorrt")
    choice = built.report["activation_scale_choice"]
    assert set(choice["candidates"]) == {"tensor", "row"} and built.target == "tensorrt"
    row = onnx.load(str(built.path if choice["chosen"] == "row" else tmp_path / "segment.int8-tensorrt.row.onnx"))
    producer = {o: n for n in row.graph.node for o in n.output}
    scaled = [n for n in row.graph.node if n.op_type == "QuantizeLinear" and producer[n.input[0]].op_type == "Div"]
    assert len(scaled) == 50 and {n.input[1] for n in scaled} == {"row_scale_unit"}


def _candidates(tensor: tuple[bool, int], row: tuple[bool, int]) -> dict:
    return {name: {"calib_passed": passed, "float_sites": floats, "export_seconds": 1.0}
            for name, (passed, floats) in (("tensor", tensor), ("row", row))}


def test_auto_keeps_per_row_where_it_alone_passes():
    """The maze demo's tensorrt export (session 19): per-tensor failed with 61 of 66 sites in float, per-row passed
    with 0."""
    from hrm_edge.quant.quantize import keep_activation_scale

    assert keep_activation_scale(_candidates(tensor=(False, 61), row=(True, 0))) == "row"


def test_auto_keeps_the_passing_graph_with_fewer_float_sites():
    from hrm_edge.quant.quantize import keep_activation_scale

    assert keep_activation_scale(_candidates(tensor=(True, 42), row=(True, 9))) == "row"
    assert keep_activation_scale(_candidates(tensor=(True, 18), row=(True, 38))) == "tensor"
    assert keep_activation_scale(_candidates(tensor=(True, 5), row=(True, 5))) == "tensor"


def test_auto_keeps_per_tensor_where_neither_passes():
    """The TRM 9x9 demo's tensorrt export (session 20): both failed their calibration gate, per-row with 32 of 122
    sites in float and per-tensor with all 122; the per-row graph then failed the validation gate. Fewer float
    sites do not make a failing graph the better bet."""
    from hrm_edge.quant.quantize import keep_activation_scale

    assert keep_activation_scale(_candidates(tensor=(False, 122), row=(False, 32))) == "tensor"
    assert keep_activation_scale(_candidates(tensor=(True, 122), row=(False, 0))) == "tensor"


def test_an_explicit_choice_builds_one_graph(demo, tmp_path):
    from hrm_edge.quant.quantize import choose_activation_scale

    built = choose_activation_scale(demo["pipe"], tmp_path / "int8.onnx", tmp_path, {"search": False}, "row")
    assert built.entry["quantization"]["activation_scale"] == "row"
    assert "activation_scale_choice" not in built.report
    assert not (tmp_path / "segment.int8-cpu.row.onnx").exists()


# ----------------------------------------------------------------------------------------------
# the tensorrt graph: `per_row_qdq`

ROWS = 8


def _qdq_site(per_row: bool, gemm: bool = False) -> onnx.ModelProto:
    """TensorRT's form of one site, x [batch, ROWS, D] -> Q/DQ (int8, zero point 0, a calibrated
    per-tensor scale) -> MatMul(., DQ(int8 W per channel)) -> y, rewritten per row when `per_row`;
    `gemm`: x [ROWS, D] -> Q/DQ -> Gemm(., W, BIAS), as the halting head is exported."""
    w = np.random.default_rng(0).standard_normal((D, N)).astype(np.float32)
    w_scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
    inits = [numpy_helper.from_array(np.float32(2 * 1000 * 4 / 255), "x_scale"),
             numpy_helper.from_array(np.int8(0), "x_zero_point"),
             numpy_helper.from_array(np.round(w / w_scale).astype(np.int8), "w_q"),
             numpy_helper.from_array(w_scale, "w_scale"),
             numpy_helper.from_array(np.zeros(N, np.int8), "w_zero_point")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero_point"], ["x_q"], name="q"),
             helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero_point"], ["x_dq"], name="dq"),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero_point"], ["w"], name="dq_w", axis=1),
             helper.make_node("Gemm", ["x_dq", "w", "b"], ["y"], name="mm") if gemm else
             helper.make_node("MatMul", ["x_dq", "w"], ["y"], name="mm")]
    inits.append(numpy_helper.from_array(BIAS, "b"))
    shape = [ROWS] if gemm else [2, ROWS]
    graph = helper.make_graph(nodes, "site", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [*shape, D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*shape, N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    if per_row:
        assert per_row_qdq(model) == 1
        onnx.checker.check_model(model)
    return model


def _dq_weight(model: onnx.ModelProto) -> np.ndarray:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return inits["w_q"].astype(np.float32) * inits["w_scale"].reshape(1, -1)


def _batch() -> np.ndarray:
    return np.stack([_activations(1), _activations(2)])  # [2, ROWS, D], rows spanning 1000x


def test_the_tensorrt_graph_quantizes_each_row_with_its_own_scale_per_call():
    model, x = _qdq_site(per_row=True), _batch()
    scale = np.abs(x).max(axis=-1, keepdims=True) * np.float32(1 / 127)
    expected = (np.round(x / scale) * scale) @ _dq_weight(model)  # the cpu graph's integers (np.round: half to even)
    got = _run(model, x)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
    sim = dynamic_row(torch.from_numpy(x)).numpy() @ _dq_weight(model)
    assert np.abs(got - sim).max() <= 1e-5 * np.abs(sim).max()


def test_the_tensorrt_graph_keeps_the_small_rows_one_calibrated_scale_rounds_away():
    x = _batch()

    def small_row_error(model: onnx.ModelProto) -> float:
        exact = x @ _dq_weight(model)
        return float(np.linalg.norm(_run(model, x)[0, 0] - exact[0, 0]) / np.linalg.norm(exact[0, 0]))

    assert small_row_error(_qdq_site(per_row=True)) < 0.02
    assert small_row_error(_qdq_site(per_row=False)) > 0.5


def test_the_tensorrt_graph_is_tensorrts_explicit_quantization_form(tmp_path):
    """Q/DQ of constant scale 1 and int8 zero point 0 on the MatMul input, the row scale in float ops beside
    it, the output's name kept; the static TensorRT 10.3 check finds nothing."""
    from hrm_edge.runtimes.trt.check import check_trt

    model = _qdq_site(per_row=True)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in (n for n in model.graph.node
                 if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.name != "dq_w"):
        assert float(inits[node.input[1]]) == 1.0 and inits[node.input[2]].dtype == np.int8
        assert int(inits[node.input[2]]) == 0
    assert model.graph.node[-1].op_type == "Mul" and model.graph.node[-1].output[0] == "y"
    assert "x_scale" not in inits  # the calibrated scale is gone
    onnx.save(model, str(tmp_path / "site.onnx"))
    assert check_trt(tmp_path / "site.onnx", "10.3") == []


def test_a_large_row_leaves_the_other_rows_unchanged_in_the_tensorrt_graph():
    model, x = _qdq_site(per_row=True), _batch()
    louder = x.copy()
    louder[0, -1] *= 100.0
    assert np.array_equal(_run(model, x)[0, :-1], _run(model, louder)[0, :-1])


def test_a_gemm_bias_is_added_once_after_the_row_scale():
    """The halting head is a Gemm with its bias inside: the rewrite takes the bias out and adds it after."""
    model, x = _qdq_site(per_row=True, gemm=True), _activations()
    scale = np.abs(x).max(axis=-1, keepdims=True) * np.float32(1 / 127)
    expected = (np.round(x / scale) * scale) @ _dq_weight(model) + BIAS
    got = _run(model, x)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
    assert [n.op_type for n in model.graph.node][-3:] == ["Gemm", "Mul", "Add"]

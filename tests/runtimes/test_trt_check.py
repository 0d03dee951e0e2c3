"""Static TensorRT checks (no TensorRT, no GPU): the operator tables, a real exported segment graph,
and one hand-built graph per rule that must fail with a message naming the node."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from hrm_edge.runtimes.trt.check import (
    TrtCheckError,
    available_versions,
    check_report,
    check_trt,
    load_rules,
    load_table,
    resolve_version,
    summarize,
)

VERSIONS = ("10.3", "10.13")
SEGMENT_INPUTS = ("tokens", "puzzle_ids", "z_H", "z_L")
SEGMENT_OUTPUTS = ("z_H_out", "z_L_out", "logits", "q_halt", "q_continue")


def _export_segment(path, opset: int = 18) -> None:
    """The tiny HRM's segment graph: the project's exporter if present, else torch.onnx.export of the same I/O."""
    torch = pytest.importorskip("torch", reason="exporting a real graph needs torch")
    from hrm_edge.model.config import preset_config
    from hrm_edge.model.hrm import HRM

    torch.manual_seed(0)
    model = HRM(preset_config("sudoku-tiny")).eval()
    try:
        from hrm_edge.export.graphs import export_segment
    except ImportError:
        export_segment = None
    if export_segment is not None:
        export_segment(model, path, opset=opset, dtype="float32")
        return
    cfg = model.config

    class Segment(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, tokens, puzzle_ids, z_H, z_L):
            return self.m.segment(z_H, z_L, tokens, puzzle_ids)

    b, p, d = 2, cfg.total_len, cfg.hidden_size
    args = (torch.zeros(b, cfg.seq_len, dtype=torch.int64), torch.zeros(b, dtype=torch.int64),
            torch.randn(b, p, d), torch.randn(b, p, d))
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(Segment(), args, str(path), input_names=list(SEGMENT_INPUTS),
                      output_names=list(SEGMENT_OUTPUTS), opset_version=opset, dynamo=True,
                      dynamic_shapes={n: {0: batch} for n in SEGMENT_INPUTS})


@pytest.fixture(scope="module")
def segment_graph(tmp_path_factory):
    path = tmp_path_factory.mktemp("seg") / "segment_fp32.onnx"
    _export_segment(path)
    return path


def _model(nodes, inputs, outputs, initializers=(), opset: int = 18) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 18 else 10
    return model


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _qdq_model(zero_point: np.ndarray | None, scale: float | np.ndarray = 0.05, axis=None) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.asarray(scale, np.float32), "scale")]
    q_inputs = ["x", "scale"]
    if zero_point is not None:
        inits.append(numpy_helper.from_array(zero_point, "zp"))
        q_inputs.append("zp")
    kw = {} if axis is None else {"axis": axis}
    nodes = [helper.make_node("QuantizeLinear", q_inputs, ["xq"], name="quant_x", **kw),
             helper.make_node("DequantizeLinear", ["xq", *q_inputs[1:]], ["y"], name="dequant_x", **kw)]
    return _model(nodes, [_vi("x", TensorProto.FLOAT, ["batch", 4])], [_vi("y", TensorProto.FLOAT, ["batch", 4])],
                  inits)


def _errors(findings):
    return [f for f in findings if f.severity == "error"]


# --- the tables ---------------------------------------------------------------------------------------


def test_op_tables_load_and_name_their_source():
    assert set(VERSIONS) <= set(available_versions())
    for version in VERSIONS:
        table = load_table(version)
        assert table["trt_version"] == version
        assert "github.com/onnx/onnx-tensorrt" in table["source"]["url"]
        assert f"{version}-GA" in table["source"]["url"] and table["source"]["retrieved"]
        assert table["source"]["read"] and table["derivation"] and table["opset"]["source"]
        ops = table["ops"]
        for op in ("MatMul", "Softmax", "Gather", "GatherND", "ScatterND", "Trilu", "Loop", "If",
                   "QuantizeLinear", "DequantizeLinear"):
            assert ops[op]["supported"], (version, op)
        assert "INT64" in ops["Gather"]["types"] and "INT64" not in ops["MatMul"]["types"]
        assert not ops["Det"]["supported"] and not ops.get("Attention", {}).get("supported")
    assert load_table("10.3")["opset"] == {**load_table("10.3")["opset"], "min": 9, "max": 20}
    assert load_table("10.13")["opset"]["max"] >= 20
    rules = load_rules()
    assert rules["sources"]["qdq_importer"].startswith("https://github.com/onnx/onnx-tensorrt")
    assert all(r["source"] for r in rules["constant_inputs"] + rules["attribute_values"])


def test_version_resolution():
    assert resolve_version("10.3") == ("10.3", None)
    assert resolve_version("10.3.0.26") == ("10.3", None)
    table, note = resolve_version("10.8")
    assert table == "10.3" and "10.8" in note
    assert resolve_version("10.16")[0] == "10.13"
    with pytest.raises(TrtCheckError, match=r">= 10\.0"):
        resolve_version("8.6")
    with pytest.raises(TrtCheckError, match=r"MAJOR\.MINOR"):
        resolve_version("ten")


# --- a real graph -------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_exported_segment_graph_passes(segment_graph, version):
    report = check_report(segment_graph, version)
    assert report.ok, "\n".join(map(str, report.findings))
    assert report.findings == []
    assert report.opset == 18 and report.nodes > 50
    assert "OK, 0 error(s), 0 warning(s)" in report.summary()


# --- one failing graph per rule -------------------------------------------------------------------------


def test_nonzero_zero_point_fails_naming_the_node():
    findings = check_trt(_qdq_model(np.int8(3)), "10.3")
    errors = _errors(findings)
    assert {f.node for f in errors} == {"quant_x", "dequant_x"}
    assert all("zero point" in f.message and "symmetric" in f.message for f in errors)
    assert "quant_x (QuantizeLinear)" in str(errors[0])


def test_zero_int8_zero_point_and_per_channel_scale_pass():
    assert check_trt(_qdq_model(np.int8(0)), "10.3") == []
    assert check_trt(_qdq_model(np.zeros(4, np.int8), np.full(4, 0.1, np.float32), axis=1), "10.3") == []


def test_uint8_quantize_fails():
    errors = _errors(check_trt(_qdq_model(np.uint8(0)), "10.3"))
    assert {"quant_x", "dequant_x"} <= {f.node for f in errors}
    assert any("UINT8" in f.message and "signed" in f.message for f in errors)


def test_quantize_without_zero_point_is_uint8_in_onnx():
    errors = _errors(check_trt(_qdq_model(None), "10.3"))
    assert any(f.node == "quant_x" and "UINT8" in f.message for f in errors)


def test_bad_scales_fail():
    assert any("positive" in f.message for f in _errors(check_trt(_qdq_model(np.int8(0), np.float32(-1.0)), "10.3")))
    wrong = _qdq_model(np.zeros(3, np.int8), np.full(3, 0.1, np.float32), axis=1)
    assert any("3 values" in f.message and "4" in f.message for f in _errors(check_trt(wrong, "10.3")))


def test_unsupported_op_fails_naming_node_and_op():
    model = _model([helper.make_node("Det", ["x"], ["y"], name="determinant")],
                   [_vi("x", TensorProto.FLOAT, ["batch", 3, 3])], [_vi("y", TensorProto.FLOAT, ["batch"])])
    for version in VERSIONS:
        errors = _errors(check_trt(model, version))
        assert len(errors) == 1
        assert errors[0].node == "determinant" and errors[0].op == "Det"
        assert f"not supported by TensorRT {version}" in errors[0].message


def test_non_batch_dynamic_dim_fails():
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")],
                   [_vi("x", TensorProto.FLOAT, ["batch", "seq"])], [_vi("y", TensorProto.FLOAT, ["batch", "seq"])])
    errors = _errors(check_trt(model, "10.3"))
    assert errors and errors[0].node == "x"
    assert "dimension 1 is dynamic ('seq')" in errors[0].message and "batch axis" in errors[0].message
    fixed = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")],
                   [_vi("x", TensorProto.FLOAT, ["batch", 8])], [_vi("y", TensorProto.FLOAT, ["batch", 8])])
    assert check_trt(fixed, "10.3") == []


@pytest.mark.parametrize("opset", [21, 22])
def test_opset_past_20_fails_for_10_3(opset):
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")],
                   [_vi("x", TensorProto.FLOAT, ["batch", 8])], [_vi("y", TensorProto.FLOAT, ["batch", 8])],
                   opset=opset)
    errors = _errors(check_trt(model, "10.3"))
    assert len(errors) == 1 and f"opset {opset} is outside 9..20" in errors[0].message
    assert check_trt(model, "10.13") == []


def test_int64_matmul_and_double_and_strict():
    mm = _model([helper.make_node("MatMul", ["a", "b"], ["c"], name="mm")],
                [_vi("a", TensorProto.INT64, ["batch", 4]), _vi("b", TensorProto.INT64, [4, 4])],
                [_vi("c", TensorProto.INT64, ["batch", 4])])
    errors = _errors(check_trt(mm, "10.3"))
    assert errors and errors[0].node == "mm" and "INT64" in errors[0].message
    dbl = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")],
                 [_vi("x", TensorProto.DOUBLE, ["batch", 4])], [_vi("y", TensorProto.DOUBLE, ["batch", 4])])
    findings = check_trt(dbl, "10.3")
    assert findings and not _errors(findings) and all("FP32" in f.message for f in findings)
    strict = check_trt(dbl, "10.3", strict=True)
    assert len(_errors(strict)) == len(findings)
    assert summarize(strict).startswith("FAIL")


def test_runtime_axes_and_attribute_rules():
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("ReduceSum", ["x", "s"], ["y"], name="reduce", keepdims=1)]
    model = _model(nodes, [_vi("x", TensorProto.FLOAT, ["batch", 4])], [_vi("y", TensorProto.FLOAT, None)])
    assert any(f.node == "reduce" and "`axes`" in f.message for f in _errors(check_trt(model, "10.3")))
    topk = _model([helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk", sorted=0)],
                  [_vi("x", TensorProto.FLOAT, ["batch", 8])],
                  [_vi("v", TensorProto.FLOAT, ["batch", 2]), _vi("i", TensorProto.INT64, ["batch", 2])],
                  [numpy_helper.from_array(np.array([2], np.int64), "k")])
    assert any(f.node == "topk" and "sorted=0" in f.message for f in _errors(check_trt(topk, "10.3")))


def test_cli_check_trt(tmp_path, segment_graph):
    from hrm_edge.cli.trt import check_trt as check_cmd

    runner = CliRunner()
    ok = runner.invoke(check_cmd, [str(segment_graph), "--trt", "10.3"])
    assert ok.exit_code == 0, ok.output
    assert "TensorRT 10.3: OK" in ok.output
    bad = tmp_path / "det.onnx"
    onnx.save(_model([helper.make_node("Det", ["x"], ["y"], name="determinant")],
                     [_vi("x", TensorProto.FLOAT, ["batch", 3, 3])], [_vi("y", TensorProto.FLOAT, ["batch"])]), bad)
    res = runner.invoke(check_cmd, [str(bad), "--trt", "10.13", "--json"])
    assert res.exit_code != 0
    record = json.loads(res.output.splitlines()[0])
    assert not record["ok"] and record["findings"][0]["node"] == "determinant"
    assert "1 error(s) in 1 of 1 graph(s)" in str(res.exception)


def test_weight_and_activation_qdq_pattern_passes():
    """INT8 weights as a Constant feeding DequantizeLinear (per-channel) and a Q/DQ pair on the
    activations, zero points as Constant nodes: the explicit-quantization pattern TensorRT takes."""
    const = [("wq", np.ones((4, 4), np.int8)), ("ws", np.full(4, 0.1, np.float32)), ("wz", np.zeros(4, np.int8)),
             ("xs", np.array(0.1, np.float32)), ("xz", np.array(0, np.int8))]
    nodes = [helper.make_node("Constant", [], [n], value=numpy_helper.from_array(v, n), name=f"{n}_const")
             for n, v in const]
    nodes += [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0, name="dq_w"),
              helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="q_x"),
              helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="dq_x"),
              helper.make_node("MatMul", ["xd", "w"], ["y"], name="mm")]
    model = _model(nodes, [_vi("x", TensorProto.FLOAT, ["batch", 4])], [_vi("y", TensorProto.FLOAT, ["batch", 4])])
    for version in VERSIONS:
        assert check_trt(model, version) == []


def test_stacked_batch_output_passes_and_loop_rules():
    model = _model([helper.make_node("Unsqueeze", ["x", "axes"], ["y"], name="stack")],
                   [_vi("x", TensorProto.FLOAT, ["batch", 4])], [_vi("y", TensorProto.FLOAT, [1, "batch", 4])],
                   [numpy_helper.from_array(np.array([0], np.int64), "axes")])
    assert check_trt(model, "10.3") == []
    # A Loop with a scan output and a run-time trip count: TensorRT needs a static scan length.
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Identity", ["v_in"], ["v_out"]),
         helper.make_node("Identity", ["v_in"], ["scan"])], "body",
        [_vi("i", TensorProto.INT64, []), _vi("c_in", TensorProto.BOOL, []), _vi("v_in", TensorProto.FLOAT, [4])],
        [_vi("c_out", TensorProto.BOOL, []), _vi("v_out", TensorProto.FLOAT, [4]), _vi("scan", TensorProto.FLOAT, [4])])
    loop = helper.make_node("Loop", ["n", "cond", "v0"], ["v_final", "scans"], body=body, name="the_loop")
    model = _model([loop], [_vi("n", TensorProto.INT64, []), _vi("cond", TensorProto.BOOL, []),
                            _vi("v0", TensorProto.FLOAT, [4])],
                   [_vi("v_final", TensorProto.FLOAT, [4]), _vi("scans", TensorProto.FLOAT, [None, 4])])
    errors = _errors(check_trt(model, "10.3"))
    assert any(f.node == "the_loop" and "scan output" in f.message for f in errors)

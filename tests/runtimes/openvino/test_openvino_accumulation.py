"""Blocked fp32 accumulation on OpenVINO (`hrm_edge.runtimes.openvino.accumulation`): long fp32
reductions are summed in blocks of at most BLOCK_K, so OpenVINO's f32 MatMuls are as exact as
PyTorch's; and the TRM maze demo, whose first segment failed the fp64 gate without it, passes.
Skipped only where the `[openvino]` extra is absent."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("openvino", reason="the [openvino] extra is not installed")

import openvino as ov

from hrm_edge.runtimes.openvino.accumulation import BLOCK_K, split_long_matmuls
from hrm_edge.runtimes.openvino.loader import compile_graph

MAZE = Path(__file__).resolve().parents[3] / "checkpoints" / "trm-maze11-demo" / "model.pt"


def linear_graph(weight: np.ndarray) -> bytes:
    """y = x @ Transpose(W): the exporter's Linear (W: [N, K])."""
    n, k = weight.shape
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]), helper.make_node("MatMul", ["x", "wt"], ["y"])],
        "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", n])], [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model.SerializeToString()


def rms_error(y: np.ndarray, exact: np.ndarray) -> float:
    return float(np.sqrt(((y.astype(np.float64) - exact) ** 2).mean()))


def test_a_reduction_of_1024_is_split_into_blocks_and_keeps_its_output_name():
    core = ov.Core()
    model = core.read_model(linear_graph(np.ones((128, 1024), np.float32)), ov.Tensor(np.empty(0, np.uint8)))
    assert split_long_matmuls(model) == 1
    matmuls = [op for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"]
    assert len(matmuls) == 1024 // BLOCK_K
    assert model.outputs[0].get_names() == {"y"}


def test_a_short_reduction_is_left_alone():
    core = ov.Core()
    model = core.read_model(linear_graph(np.ones((1024, BLOCK_K), np.float32)), ov.Tensor(np.empty(0, np.uint8)))
    assert split_long_matmuls(model) == 0


def test_f32_matmuls_on_openvino_are_as_exact_as_blocked_accumulation():
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((128, 1024)) / 32).astype(np.float32)
    x = rng.standard_normal((512, 1024)).astype(np.float32)
    exact = x.astype(np.float64) @ weight.T.astype(np.float64)
    blocked = compile_graph(linear_graph(weight), "f32", threads=1).create_infer_request().infer({"x": x})[0]
    core = ov.Core()  # the same graph compiled by OpenVINO as it is: one fp32 chain over K = 1024
    plain = core.compile_model(core.read_model(linear_graph(weight), ov.Tensor(np.empty(0, np.uint8))), "CPU",
                               {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
    single_chain = plain.create_infer_request().infer({"x": x})[0]
    # Measured: the single chain 1.9x the error of a 256-blocked sum (sqrt(1024 / 256)), blocks of 128 below it.
    assert rms_error(single_chain, exact) > 1.6 * rms_error(blocked, exact)
    assert np.abs(blocked - exact).max() < 1e-5 * np.abs(exact).max() * 10


def test_quantized_weights_are_not_split(tmp_path):
    """An int8 weight (DequantizeLinear of an int8 initializer) is no fp32 constant: untouched."""
    k, n = 1024, 64
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["wq", "scale"], ["w"]), helper.make_node("MatMul", ["x", "w"], ["y"])],
        "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", n])],
        [numpy_helper.from_array(np.ones((k, n), np.int8), "wq"), numpy_helper.from_array(np.float32(0.1), "scale")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = tmp_path / "q.onnx"
    onnx.save(model, str(path))
    assert split_long_matmuls(ov.Core().read_model(str(path))) == 0


@pytest.mark.usefixtures("one_torch_thread")
def test_the_maze_demo_first_segment_is_as_exact_as_pytorch_fp32(tmp_path):
    """TRM maze demo, 64 val puzzles, one segment from the initial carry: OpenVINO f32's largest logit
    error against the model run in fp64, over PyTorch fp32's (the fp32 gate's fp64 ratio). Measured:
    0.84 blocked, 1.57 with OpenVINO's single chains (which reached 2.39 by step 3 in closed loop)."""
    import torch

    from hrm_edge.bundle import open_bundle
    from hrm_edge.cli.main import main
    from hrm_edge.model.checkpoint import load_checkpoint
    from hrm_edge.puzzles.datasets import calib_data_dir, load_puzzle_set
    from hrm_edge.runtimes.openvino.loader import verified_graph_bytes
    from hrm_edge.runtimes.openvino.runner import OvSegmentRunner

    out = tmp_path / "maze"
    with pytest.raises(SystemExit) as exc:
        main(["export", str(MAZE), "-o", str(out), "--no-fp16", "--no-cpu-fused", "--golden", "1"])
    assert exc.value.code == 0
    b = open_bundle(out)
    pset = load_puzzle_set(calib_data_dir(b.task), split="val")
    tokens, ids = pset.inputs[:64], b.model_puzzle_ids(pset.puzzle_ids[:64])
    ck = load_checkpoint(MAZE, task=b.task)

    def first_logits(runner) -> np.ndarray:
        runner.start(tokens, ids)
        runner.step()
        return runner.logits(np.arange(len(tokens))).astype(np.float64)

    from hrm_edge.model.runner import TorchSegmentRunner

    torch32 = first_logits(TorchSegmentRunner(ck.model.set_compute_dtype("float32")))
    exact = first_logits(TorchSegmentRunner(copy.deepcopy(ck.model).double().set_compute_dtype(torch.float64)))
    h_init, l_init = b.carry_init()
    total = b.manifest.model.total_len
    compiled = compile_graph(verified_graph_bytes(b, "segment.fp32"), "f32", threads=1)
    ours = first_logits(OvSegmentRunner(compiled, h_init, l_init, total))
    floor = np.abs(torch32 - exact).max()
    assert np.abs(ours - exact).max() / floor < 1.2

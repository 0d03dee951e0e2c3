"""Issue 19: can one keep parts of a bf16 OpenVINO graph in f32 from Python? Compiles an ONNX segment graph
with INFERENCE_PRECISION_HINT bf16, with and without `disable_fp16_compression` run-time info on every
MatMul and Softmax (the key the CPU plugin's own passes set), with and without SNIPPETS_MODE=DISABLE,
and prints each variant's max |output - f32 output| on random inputs and the runtime precision of its
MatMul / FullyConnected / Softmax / Subgraph nodes.

    python scripts/openvino_bf16_marking.py BUNDLE/segment.fp16.onnx

Session 10 on the TRM sudoku6 attention demo: every variant gave the same outputs and every node
stayed bf16, i.e. the marks set from Python are not honoured (bench/latest/session10-openvino/).
"""
import sys
from collections import Counter

import numpy as np
import onnx
import openvino as ov

KEY = "disable_fp16_compression_0"
KINDS = ("MatMul", "FullyConnected", "Subgraph", "Softmax", "ScaledDotProductAttention")


def feeds_for(model: onnx.ModelProto, batch: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for i in model.graph.input:
        dims = [d.dim_value or batch for d in i.type.tensor_type.shape.dim]
        kind = i.type.tensor_type.elem_type
        if kind == onnx.TensorProto.INT64:
            out[i.name] = np.zeros(dims, np.int64) if i.name == "puzzle_ids" else rng.integers(1, 5, dims)
        else:
            dtype = np.float16 if kind == onnx.TensorProto.FLOAT16 else np.float32
            out[i.name] = rng.standard_normal(dims).astype(dtype)
    return out


def run(core: ov.Core, path: str, feeds: dict, hint: str, mark: bool, extra: dict) -> tuple[dict, Counter]:
    graph = core.read_model(path)
    if mark:
        for op in graph.get_ordered_ops():
            if op.get_type_name() in ("MatMul", "Softmax"):
                op.get_rt_info()[KEY] = ""
    compiled = core.compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": hint, **extra})
    result = compiled(feeds)
    precisions = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind in KINDS:
            precisions[(kind, info["runtimePrecision"].astype(str))] += 1
    return {o.get_any_name(): np.asarray(result[o], np.float32) for o in compiled.outputs}, precisions


def main() -> None:
    path = sys.argv[1]
    core = ov.Core()
    feeds = feeds_for(onnx.load(path))
    ref, _ = run(core, path, feeds, "f32", False, {})
    for extra in ({}, {"SNIPPETS_MODE": "DISABLE"}):
        for mark in (False, True):
            out, precisions = run(core, path, feeds, "bf16", mark, extra)
            diff = max(float(np.abs(out[k] - ref[k]).max()) for k in ref)
            print(f"bf16 {extra or ''} marked={mark}: max |diff| vs f32 {diff:.4f}; {dict(precisions)}")


if __name__ == "__main__":
    main()

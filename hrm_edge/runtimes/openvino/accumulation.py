"""Blocked fp32 accumulation for OpenVINO MatMuls: split long reductions into K blocks, add the partials.

Why. OpenVINO's CPU fp32 GEMM kernels (MLAS, oneDNN brgemm and 1x1 convolution alike) accumulate a dot
product over the whole reduction length K in one fp32 register chain, while PyTorch and ONNX Runtime
sum it in blocks of 256 and add the block sums. The rounding error of a chain grows like sqrt(K), so
for K > 256 OpenVINO's error against fp64 is sqrt(K / 256) times theirs: measured on random
[2048, K] x [K, 128] products, 1.00x at K <= 320, 1.41x at K = 512, 1.92x at K = 1024. A trained TRM
amplifies it: the maze demo's down projections (K = 512) took OpenVINO fp32 to 2.39x PyTorch's own
error against fp64 (the fp32 gate allows 2x; ONNX Runtime: 1.30x).

What. `split_long_matmuls(model)` rewrites, in place, every MatMul whose second input is an fp32
constant weight (a Constant, or the exporter's Transpose of one) and whose K exceeds `BLOCK_K` into
ceil(K / BLOCK_K) MatMuls over K slices of the activation and the weight, summed in order, so each
block's chain is at most `BLOCK_K` long. Used for f32 inference only (`loader.compile_graph`); bf16/f16
inference keeps its MatMuls, and quantized weights (int8 Constant -> Convert -> scale) never match, so
an INT8 graph's int8 MatMuls are untouched.

Block length: with 256 (the block of ORT's MLAS) the maze demo's step-1 ratio was 2.02 (ORT 1.68:
PyTorch fp32 is more exact still); with 128 it is 0.88 at step 1 and 1.58 at most over the gated steps,
for more time per segment, measured side by side at 1 thread: +2-6% on the maze demo (batch 8), +12% on
the 27M config (batch 1 and 16; blocks of 256 there: +0-2%). f32 is OpenVINO's gated reference path;
its fast paths (bf16, int8) are not split.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Longest fp32 accumulation chain OpenVINO is left to run (reduction elements).
BLOCK_K = 128


def _constant_weight(node: Any) -> np.ndarray | None:
    """The fp32 2-D array a weight input holds: a Constant, or a Transpose of a Constant by a constant
    permutation; else None."""
    if node.get_type_name() == "Transpose":
        source, perm = (node.input_value(i).get_node() for i in range(2))
        if source.get_type_name() != "Constant" or perm.get_type_name() != "Constant":
            return None
        data = _constant_weight(source)
        return None if data is None else data.transpose(perm.get_data())
    if node.get_type_name() != "Constant":
        return None
    data = node.get_data()
    return data if data.dtype == np.float32 and data.ndim == 2 else None


def split_long_matmuls(model: Any, block_k: int = BLOCK_K) -> int:
    """Split the fp32 constant-weight MatMuls of an `openvino.Model` with K > block_k (module
    docstring); returns how many were split."""
    import openvino.opset13 as ops

    split = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "MatMul":
            continue
        weight = _constant_weight(node.input_value(1).get_node())
        attrs = node.get_attributes()
        if weight is None or attrs["transpose_a"]:
            continue
        w = weight.T if attrs["transpose_b"] else weight  # [K, N]
        k = w.shape[0]
        if k <= block_k:
            continue
        bounds = [*range(0, k, block_k), k]
        lengths = np.diff(bounds).astype(np.int64)
        parts = ops.variadic_split(node.input_value(0), np.int64(-1), lengths).outputs()
        total = None
        for part, lo, hi in zip(parts, bounds[:-1], bounds[1:], strict=True):
            block = ops.matmul(part, ops.constant(np.ascontiguousarray(w[lo:hi])), False, False)
            total = block if total is None else ops.add(total, block)
        assert total is not None
        names = node.output(0).get_names()  # a graph output ("logits") keeps its name
        node.output(0).get_tensor().set_names(set())
        node.output(0).replace(total.output(0))
        total.output(0).get_tensor().set_names(names)
        total.set_friendly_name(node.get_friendly_name())
        split += 1
    if split:
        model.validate_nodes_and_infer_types()
    return split

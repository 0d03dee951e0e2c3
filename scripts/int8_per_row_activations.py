"""Issue 21 experiment: would per-row (per-token) dynamic activation scales bring more sites into int8 than
the cpu flavour's per-tensor DynamicQuantizeLinear? Rewrites every DynamicQuantizeLinear -> MatMulInteger
site into symmetric int8 with one scale per row (max |x| over the last axis / 127; zero point 0) and runs
the same search (ONNX Runtime, closed loop) as the per-tensor graph.

    python scripts/int8_per_row_activations.py sudoku6-demo 256 OUT perrow|tensor

Session 10, HRM 6x6 demo, 256 calibration puzzles: per-row kept 38 of 50 sites in float, per-tensor 18
(all sites int8: halting agreement 92.6% vs 91.4%, solved 99.2% both), so it is not shipped.
Session 12, TRM maze demo (it has a token MLP, the HRM demo has none): per-row passes every INT8 gate
on validation with 65 of 66 sites in int8, per-tensor solves 0.8% (`scripts/int8_per_row_val.py`,
bench/latest/session12-row-scales/).
Session 13: shipped as `hrm_edge.quant.row_scales` (`export --int8-activation-scale`), stored as uint8
with zero point 128 instead of the int8 used here, whose s8 x s8 MatMulInteger ran ~10x slower on ORT.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

import hrm_edge.quant.search as search
from hrm_edge.export.graphs import export_segment
from hrm_edge.model.checkpoint import load_checkpoint
from hrm_edge.puzzles.datasets import calib_data_dir, load_puzzle_set
from hrm_edge.quant.quantize import Int8Config, Int8Pipeline


def per_row(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with each DynamicQuantizeLinear(x) replaced by per-row symmetric int8 quantization."""
    g = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    g.initializer.extend([numpy_helper.from_array(np.array(0, np.int8), "perrow_zero"),
                          numpy_helper.from_array(np.array([-1], np.int64), "perrow_axes"),
                          numpy_helper.from_array(np.array(1 / 127, np.float32), "perrow_inv127"),
                          numpy_helper.from_array(np.array(1e-12, np.float32), "perrow_eps")])
    nodes = []
    for k, n in enumerate(g.node):
        if n.op_type != "DynamicQuantizeLinear":
            nodes.append(n)
            continue
        x, (q, scale, zero) = n.input[0], n.output
        p = f"perrow{k}_"
        nodes += [helper.make_node("Abs", [x], [p + "abs"]),
                  helper.make_node("ReduceMax", [p + "abs", "perrow_axes"], [p + "amax"], keepdims=1),
                  helper.make_node("Max", [p + "amax", "perrow_eps"], [p + "amax_eps"]),
                  helper.make_node("Mul", [p + "amax_eps", "perrow_inv127"], [scale]),
                  helper.make_node("Div", [x, scale], [p + "scaled"]),
                  helper.make_node("Round", [p + "scaled"], [p + "rounded"]),
                  helper.make_node("Cast", [p + "rounded"], [q], to=TensorProto.INT8)]
        for c in consumers.get(zero, []):
            c.input[:] = ["perrow_zero" if i == zero else i for i in c.input]
    del g.node[:]
    g.node.extend(nodes)
    return model


def main() -> None:
    demo, n, root, mode = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    root.mkdir(parents=True, exist_ok=True)
    if mode == "perrow":
        restore = search.restore_float
        search.restore_float = lambda q, fp, nodes, weights="int8": per_row(restore(q, fp, nodes, weights))
    torch.set_num_threads(2)
    ck = load_checkpoint(f"checkpoints/{demo}/model.pt")
    calib = load_puzzle_set(calib_data_dir(ck.task), split="calib")
    export_segment(ck.model.set_compute_dtype("float32").eval(), root / "segment.fp32.onnx")
    pipe = Int8Pipeline(root / "segment.fp32.onnx", ck, calib, root / f"work-{mode}",
                        Int8Config(calib_size=n, cache_dir=root / f"cache-{mode}", threads=2), progress=False,
                        log=print, targets=("cpu",))
    t = time.time()
    built = pipe.build("cpu", root / f"int8-{mode}.onnx")
    (root / f"report-{mode}.json").write_text(json.dumps(built.report, default=str, indent=1))
    print(mode, len(built.entry["quantization"]["float_sites"]), "float sites;", round(time.time() - t, 1), "s")


if __name__ == "__main__":
    main()

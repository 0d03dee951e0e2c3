"""Issue 21, session 20: an online block Hadamard at the down_proj inputs, through the real INT8 pipeline.

`scripts/int8_rotation.py` found that, in a plain simulation (no SmoothQuant, no GPTQ), a Hadamard rotation
of down_proj's input lifts the HRM 6x6 demo's all-int8 halting agreement from 93.4% to about 96%. This
script asks whether that survives the exporter: the same `Int8Pipeline` as `hrm-edge export --int8` (SmoothQuant
alpha 0.85, GPTQ, per-row activation scales, the closed-loop search through ONNX Runtime on 1024
calibration puzzles), with one change made after SmoothQuant: every down_proj MatMul(x, W) of the prepared
fp32 graph becomes MatMul(Reshape(MatMul(Reshape(x, [.., I/B, B]), H_B), [.., I]), H^T W), with H = blockdiag(H_B)
and H_B Sylvester's Hadamard matrix / sqrt(B) (the fp32 graph computes the same function). The Hadamard
MatMuls are left in float (`nodes_to_exclude`). The chosen graph and the all-int8 graph then run the closed
loop on 256 validation puzzles against the ORIGINAL checkpoint's PyTorch fp32 rollout, gated with the INT8 gates.

    python -m scripts.int8_hadamard_export BLOCK BUNDLE OUT [--target cpu] [--demo sudoku6-demo]

BLOCK 0 is the pipeline unchanged (the baseline); BUNDLE is an exported bundle of the demo (its
segment.fp32.onnx is quantized). Writes OUT/result.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

import hrm_edge.quant.quantize as qz
from hrm_edge.act import parse_policy, solve_in_batches
from hrm_edge.model.checkpoint import load_checkpoint
from hrm_edge.model.runner import TorchSegmentRunner
from hrm_edge.parity import DEFAULT_GATES
from hrm_edge.puzzles.datasets import calib_data_dir, load_puzzle_set
from hrm_edge.quant.search import ClosedLoop
from scripts.int8_rotation import signed_hadamard
from scripts.int8_row_scales import load_demo

METRICS = ("puzzles", "solved_agreement", "exact_agreement", "halting_agreement", "accuracy_drop")


def rotate_down_inputs(model: onnx.ModelProto, block: int) -> list[str]:
    """Insert the block Hadamard before every down_proj MatMul of a prepared fp32 graph, in place (module
    docstring); returns the names of the inserted Hadamard MatMul nodes."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    hb = signed_hadamard(block, None).numpy()  # H_B / sqrt(B), unsigned
    g.initializer.append(numpy_helper.from_array(hb.astype(np.float32), "hadamard_block"))
    nodes, inserted = [], []
    for node in g.node:
        w_name = node.input[1] if node.op_type == "MatMul" and len(node.input) > 1 else ""
        if ".mlp.down_proj.weight" in w_name and w_name in inits:
            w = numpy_helper.to_array(inits[w_name]).astype(np.float64)  # [I, D]
            inter = w.shape[0]
            rotated = f"{w_name}.hadamard{block}"
            if rotated not in inits:
                h = np.kron(np.eye(inter // block), hb)
                inits[rotated] = numpy_helper.from_array((h.T @ w).astype(np.float32), rotated)
                g.initializer.append(inits[rotated])
                for name, shape in ((f"hadamard_split_{inter}", [0, 0, inter // block, block]),
                                    (f"hadamard_join_{inter}", [0, 0, inter])):
                    if name not in inits:
                        inits[name] = numpy_helper.from_array(np.array(shape, np.int64), name)
                        g.initializer.append(inits[name])
            p, x = f"hadamard_{len(inserted)}", node.input[0]
            nodes += [
                helper.make_node("Reshape", [x, f"hadamard_split_{inter}"], [p + "_blocks"], name=p + "_split"),
                helper.make_node("MatMul", [p + "_blocks", "hadamard_block"], [p + "_rotated"], name=p + "_mm"),
                helper.make_node("Reshape", [p + "_rotated", f"hadamard_join_{inter}"], [p + "_x"], name=p + "_join"),
            ]
            inserted.append(p + "_mm")
            node.input[0], node.input[1] = p + "_x", rotated
        nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    return inserted


def patch_pipeline(block: int) -> list[str]:
    """Make `Int8Pipeline` rotate after SmoothQuant and leave the Hadamard MatMuls out of quantization.
    Returns the (filled later) list of inserted node names."""
    inserted: list[str] = []
    smooth, quantize_graph = qz.Int8Pipeline._smooth, qz.quantize_graph

    def smooth_then_rotate(self: Any, prepared: onnx.ModelProto) -> None:
        smooth(self, prepared)
        model = onnx.load(str(self.fp32_path))
        inserted.extend(rotate_down_inputs(model, block))
        self.fp32_path = self.work_dir / f"segment.fp32.smoothed.hadamard{block}.onnx"
        onnx.save(model, str(self.fp32_path))
        self.prep_info["hadamard"] = {"block": block, "sites": len(inserted)}

    def quantize_graph_keeping(fp32: Any, out: Any, settings: Any, ranges: Any = None, method: str = "minmax",
                               nodes_to_exclude: Any = None, **kw: Any) -> Any:
        return quantize_graph(fp32, out, settings, ranges, method, nodes_to_exclude=[*(nodes_to_exclude or []),
                                                                                       *inserted], **kw)

    qz.Int8Pipeline._smooth = smooth_then_rotate
    qz.quantize_graph = quantize_graph_keeping
    return inserted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("block", type=int)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--target", default="cpu")
    ap.add_argument("--demo", default="sudoku6-demo")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if args.block:
        patch_pipeline(args.block)
    ck = load_checkpoint(f"checkpoints/{args.demo}/model.pt")
    calib = load_puzzle_set(calib_data_dir(ck.task), split="calib")
    pipe = qz.Int8Pipeline(args.bundle / "segment.fp32.onnx", ck, calib, args.out / "work",
                           qz.Int8Config(search_engine="ort"), progress=False, log=lambda m: print(m, flush=True),
                           targets=(args.target,))
    build = pipe.build(args.target, args.out / f"segment.int8-{args.target}.onnx", activation_scale="row")
    excluded = [s["label"] for s in build.report["sites"] if s.get("excluded")]
    print(f"float sites: {len(excluded)} of {len(build.report['sites'])}: {', '.join(excluded)}", flush=True)

    model, _calib, val, steps = load_demo(args.demo)
    policy, n = parse_policy("q"), min(256, len(val.inputs))
    tokens = np.ascontiguousarray(val.inputs[:n], np.int64)
    ids = np.ascontiguousarray(val.puzzle_ids[:n], np.int64)
    ref = solve_in_batches(TorchSegmentRunner(model), tokens, ids, policy, steps, 64, record_steps=True,
                           record_logits=True)
    inner = model.inner
    loop = ClosedLoop(tokens, ids, val.labels[:n], ref, inner.H_init.detach().float().numpy(),
                      inner.L_init.detach().float().numpy(), model.config.total_len, policy, steps,
                      DEFAULT_GATES["int8"], 64, None, args.out / "work")
    rec: dict[str, Any] = {"block": args.block, "target": args.target, "float_sites": excluded,
                           "sites": len(build.report["sites"])}
    full = args.out / "work" / f"segment.int8-{args.target}.full.onnx"
    for name, path in (("chosen", build.path), ("all-int8", full)):
        ev = loop.evaluate(str(path))
        rec[f"val_{name}"] = {**{k: ev["metrics"].get(k) for k in METRICS}, "passed": ev["passed"]}
        print(f"validation, {name}:", json.dumps(rec[f"val_{name}"]), flush=True)
    rec["phase_seconds"], rec["seconds"] = pipe.phase_seconds, round(time.time() - t0, 1)
    (args.out / "result.json").write_text(json.dumps(rec, indent=1, default=str))


if __name__ == "__main__":
    main()

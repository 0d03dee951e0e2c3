"""Issue 21, session 21: how fast could a demo's INT8 segment be if every site were int8, and would two int8
terms per activation (int8 arithmetic at ~15-bit activation precision) be a cheaper float fallback?

1. **Speed ceiling.** The checkpoint's all-int8 cpu graph with per-row activation scales and no search (every
   site int8, whatever its gates say: they are printed), built by the real `Int8Pipeline` (SmoothQuant, GPTQ)
   and fused with `fuse_model`, timed against the bundle's `segment.fp32-cpufused` and its shipped
   `segment.int8-cpufused`: one ONNX Runtime session per graph and thread count, batch 16, random carries,
   interleaved rounds in rotating order.
2. **Two-term sites.** One site at each of the model's projection shapes (M = 16 x total_len rows), as
   - fp32: MatMul;
   - row: the shipped per-row form (`hrm_edge.quant.row_scales`): s = |max| / 127 per row, q1 = round(x / s);
   - two-term: the same plus the rounding residual r = x / s - q1 (in [-0.5, 0.5]) quantized with the constant
     scale 1 / 254, y = s * w_scale * (q1 @ Wq + (q2 @ Wq) / 254): two integer matmuls, the activation's error
     ~254x smaller (measured below against fp64 with the same int8 weights).
   Timed side by side, one session each, interleaved.

    python -m scripts.int8_speed_ceiling BUNDLE CKPT [--rounds 80] [--work DIR] [--out bench/latest/session21-ceiling]

Writes OUT/ceiling.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from hrm_edge.export.fuse import fuse_model
from hrm_edge.model.checkpoint import load_checkpoint
from hrm_edge.puzzles.datasets import calib_data_dir, load_puzzle_set
from hrm_edge.quant import quantize as qz
from hrm_edge.quant.row_scales import ROW_EPS, ROW_LEVELS, ROW_ZERO_POINT
from scripts.segment_timing import cpu_session, interleaved, random_feeds

BATCH = 16


def all_int8_graph(bundle: Path, ckpt: str, work: Path) -> tuple[Path, dict[str, Any]]:
    """The fused all-int8 per-row cpu graph (cached in `work`) and its calibration gate report."""
    fused_path, report_path = work / "int8-all-row-fused.onnx", work / "int8-all-row.report.json"
    if not fused_path.is_file():
        ck = load_checkpoint(ckpt)
        calib = load_puzzle_set(calib_data_dir(ck.task), split="calib")
        pipe = qz.Int8Pipeline(bundle / "segment.fp32.onnx", ck, calib, work / "pipe",
                               qz.Int8Config(search_engine="ort"), progress=False, log=print)
        build = pipe.build("cpu", work / "int8-all-row.onnx", search=False, activation_scale="row")
        fused, _ = fuse_model(onnx.load(str(build.path)))
        onnx.save(fused, str(fused_path))
        q = build.entry["quantization"]
        report_path.write_text(json.dumps({"sites": q["sites"], "float_sites": len(q["float_sites"]),
                                           "calib_parity": build.report["calib_parity"]}, default=float))
    return fused_path, json.loads(report_path.read_text())


def segment_speed(graphs: dict[str, Path], rounds: int) -> dict[str, Any]:
    """Median ms per batch-16 call and the ratio to fused fp32, per graph, at 1 and 2 threads."""
    out = {}
    for threads in (1, 2):
        sessions = {k: cpu_session(str(p), threads) for k, p in graphs.items()}
        rng = np.random.default_rng(0)
        feeds = {k: random_feeds(s, BATCH, rng) for k, s in sessions.items()}
        times = interleaved({k: (lambda s=s, f=feeds[k]: s.run(None, f)) for k, s in sessions.items()}, rounds)
        ms = {k: float(np.median(v)) for k, v in times.items()}
        for k, v in ms.items():
            out[f"{k}@{threads}t"] = {"p50_ms": round(v, 2), "ratio_to_fp32_fused": round(v / ms["fp32-cpufused"], 3)}
            print(f"segment {threads}t {k:16s} {v:8.2f} ms  x fused fp32 {v / ms['fp32-cpufused']:.3f}", flush=True)
    return out


def site_graph(kind: str, wq: np.ndarray, w_scale: np.ndarray, w: np.ndarray) -> onnx.ModelProto:
    """One site [M, K] x [K, N] as `kind` in {"fp32", "row", "two-term"} (module docstring)."""
    consts = {"W": w, "Wq": wq, "ws": w_scale, "axes": np.array([-1], np.int64),
              "eps": np.array(ROW_EPS, np.float32), "inv127": np.array(1 / ROW_LEVELS, np.float32),
              "one": np.array(1.0, np.float32), "zp": np.array(ROW_ZERO_POINT, np.uint8),
              "wzp": np.array(0, np.int8), "r_scale": np.array(1 / (2 * ROW_LEVELS), np.float32)}
    n = helper.make_node
    if kind == "fp32":
        nodes, used = [n("MatMul", ["x", "W"], ["y"])], ["W"]
    else:
        nodes = [n("Abs", ["x"], ["a"]), n("ReduceMax", ["a", "axes"], ["m"], keepdims=1),
                 n("Max", ["m", "eps"], ["m2"]), n("Mul", ["m2", "inv127"], ["s"]), n("Div", ["x", "s"], ["xs"]),
                 n("QuantizeLinear", ["xs", "one", "zp"], ["q1"]), n("Mul", ["s", "ws"], ["sw"]),
                 n("MatMulInteger", ["q1", "Wq", "zp", "wzp"], ["i1"]), n("Cast", ["i1"], ["f1"], to=TensorProto.FLOAT),
                 n("Mul", ["f1", "sw"], ["y1" if kind == "two-term" else "y"])]
        used = ["Wq", "ws", "axes", "eps", "inv127", "one", "zp", "wzp"]
        if kind == "two-term":
            nodes += [n("DequantizeLinear", ["q1", "one", "zp"], ["d1"]), n("Sub", ["xs", "d1"], ["r"]),
                      n("QuantizeLinear", ["r", "r_scale", "zp"], ["q2"]), n("Mul", ["sw", "r_scale"], ["sw2"]),
                      n("MatMulInteger", ["q2", "Wq", "zp", "wzp"], ["i2"]),
                      n("Cast", ["i2"], ["f2"], to=TensorProto.FLOAT), n("Mul", ["f2", "sw2"], ["y2"]),
                      n("Add", ["y1", "y2"], ["y"])]
            used.append("r_scale")
    m_rows, k = None, w.shape[0]
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m_rows, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m_rows, w.shape[1]])],
                              [numpy_helper.from_array(consts[c], c) for c in used])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def site_costs(shapes: dict[str, tuple[int, int]], rows: int, rounds: int) -> dict[str, Any]:
    """Per projection shape: median ms of fp32, row and two-term at 1 thread, and each int8 form's relative
    error against fp64 with the same int8 weights."""
    rng = np.random.default_rng(1)
    out = {}
    for name, (k, n_out) in shapes.items():
        w = (rng.standard_normal((k, n_out)) / np.sqrt(k)).astype(np.float32)
        w_scale = (np.abs(w).max(0) / 127).astype(np.float32)
        wq = np.round(w / w_scale).astype(np.int8)
        x = (rng.standard_normal((rows, k)) * rng.uniform(0.1, 3.0, (rows, 1))).astype(np.float32)
        sessions = {kind: cpu_session(site_graph(kind, wq, w_scale, w).SerializeToString(), 1)
                    for kind in ("fp32", "row", "two-term")}
        ref = x.astype(np.float64) @ (wq.astype(np.float64) * w_scale)
        err = {kind: float(np.linalg.norm(sessions[kind].run(None, {"x": x})[0] - ref) / np.linalg.norm(ref))
               for kind in ("row", "two-term")}
        times = interleaved({kind: (lambda s=s, x=x: s.run(None, {"x": x})) for kind, s in sessions.items()}, rounds)
        ms = {k: float(np.median(v)) for k, v in times.items()}
        out[name] = {"K": k, "N": n_out, "M": rows, "fp32_ms": round(ms["fp32"], 3),
                     "row_over_fp32": round(ms["row"] / ms["fp32"], 3),
                     "two_term_over_fp32": round(ms["two-term"] / ms["fp32"], 3),
                     "rel_error_row": err["row"], "rel_error_two_term": err["two-term"]}
        r = out[name]
        print(f"site {name:8s} [{rows}x{k}]x[{k}x{n_out}] fp32 {r['fp32_ms']:.3f} ms; row {r['row_over_fp32']:.2f}x, "
              f"two-term {r['two_term_over_fp32']:.2f}x; error row {err['row']:.1e}, two-term {err['two-term']:.1e}",
              flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("ckpt")
    ap.add_argument("--rounds", type=int, default=80)
    ap.add_argument("--work", type=Path, default=Path("/tmp/hrm-edge-speed-ceiling"))
    ap.add_argument("--out", type=Path, default=Path("bench/latest/session21-ceiling"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    all_int8, report = all_int8_graph(args.bundle, args.ckpt, args.work)
    graphs = {"fp32-cpufused": args.bundle / "segment.fp32-cpufused.onnx",
              "int8-shipped": args.bundle / "segment.int8-cpufused.onnx", "int8-all-row": all_int8}
    cfg = load_checkpoint(args.ckpt).model.config
    h, inter = cfg.hidden_size, cfg.mlp_inter
    shapes = {"qkv": (h, 3 * h), "o_proj": (h, h), "gate_up": (h, 2 * inter), "down": (inter, h)}
    record = {"bundle": str(args.bundle), "checkpoint": args.ckpt, "onnxruntime": ort.__version__,
              "rounds": args.rounds, "batch": BATCH,
              "all_int8_calibration_gate": report,
              "segment": segment_speed(graphs, args.rounds),
              "sites": site_costs(shapes, BATCH * cfg.total_len, args.rounds)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ceiling.json").write_text(json.dumps(record, indent=1, default=float))
    print(f"wrote {args.out / 'ceiling.json'}")


if __name__ == "__main__":
    main()

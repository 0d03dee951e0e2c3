"""Where the time of one segment goes on OpenVINO: per-layer-type profile (performance counters) of a
segment graph at given batch sizes, and the segment's share of the machine's GEMM peak measured with
the same runtime (a large int8 QDQ MatMul, and a large fp32 MatMul with the bf16 and f32 hints).

    python scripts/profile_openvino.py --graph G.onnx --checkpoint CKPT --hint bf16 --batch 1 --batch 16 \
        --threads 1 --out bench/latest/session8-openvino

Writes profile-openvino.json and profile-openvino.md under --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from hrm_edge.runtimes.openvino.loader import compile_graph


def _feeds(compiled: Any, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for port in compiled.inputs:
        shape = [batch if not d.is_static else d.get_length() for d in port.get_partial_shape()]
        dtype = np.dtype(port.get_element_type().to_dtype())
        feeds[port.get_any_name()] = (np.zeros(shape, dtype) if dtype.kind == "i"
                                      else rng.standard_normal(shape).astype(dtype))
    return feeds


def profile_graph(graph: str, hint: str, batch: int, threads: int, iters: int) -> dict[str, Any]:
    """Per (layer type, kernel) ms per segment and share, from OpenVINO's performance counters."""
    compiled = compile_graph(graph, hint, threads=threads, profile=True)
    request = compiled.create_infer_request()
    feeds = _feeds(compiled, batch, np.random.default_rng(0))
    for _ in range(3):
        request.infer(feeds)
    totals: dict[tuple[str, str], float] = defaultdict(float)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    wall = []
    for _ in range(iters):
        t = time.perf_counter()
        request.infer(feeds)
        wall.append(time.perf_counter() - t)
        for info in request.profiling_info:
            if info.status.name != "EXECUTED":
                continue
            key = (info.node_type, info.exec_type)
            totals[key] += info.real_time.total_seconds() * 1e3
            counts[key] += 1
    kernels = sum(totals.values())
    ops = sorted(totals.items(), key=lambda kv: -kv[1])
    return {"segment_ms_p50": round(1e3 * float(np.median(wall)), 3), "kernel_ms": round(kernels / iters, 3),
            "layers": {f"{t} [{e}]": {"ms": round(ms / iters, 4), "share": round(ms / kernels, 4),
                                      "nodes": counts[(t, e)] // iters} for (t, e), ms in ops}}


def _rate(fn: Any, flop: float, seconds: float) -> float:
    fn()
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return flop / best / 1e9


def gemm_peaks(n: int, threads: int, seconds: float) -> dict[str, float]:
    """GOP/s of an n x n x n MatMul on OpenVINO: int8 (QDQ: u8 activations, s8 weights), fp32 with the
    bf16 hint and with the f32 hint."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, n)).astype(np.float32)
    x = rng.standard_normal((n, n)).astype(np.float32)
    x_in = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])
    y_out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)

    def model(nodes: list[Any], inits: list[Any]) -> bytes:
        graph = helper.make_graph(nodes, "peak", [x_in], [y_out], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()

    fp32 = model([helper.make_node("MatMul", ["x", "w"], ["y"])], [numpy_helper.from_array(w, "w")])
    scale = np.float32(np.abs(w).max() / 127)
    int8 = model([helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
                  helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"]),
                  helper.make_node("MatMul", ["xd", "wd"], ["y"])],
                 [numpy_helper.from_array(np.float32(0.05), "xs"), numpy_helper.from_array(np.uint8(128), "xz"),
                  numpy_helper.from_array(np.round(w / scale).clip(-127, 127).astype(np.int8), "wq"),
                  numpy_helper.from_array(scale, "ws"), numpy_helper.from_array(np.int8(0), "wz")])
    out = {}
    flop = 2.0 * n ** 3
    for name, graph, hint in (("int8_gops", int8, "bf16"), ("bf16_gflops", fp32, "bf16"),
                              ("fp32_gflops", fp32, "f32")):
        request = compile_graph(graph, hint, threads=threads).create_infer_request()
        out[name] = round(_rate(lambda r=request: r.infer({"x": x}), flop, seconds), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graph", required=True, help="segment graph (.onnx)")
    ap.add_argument("--checkpoint", required=True, help="its checkpoint (for the segment's FLOPs)")
    ap.add_argument("--hint", default="bf16", choices=("f32", "bf16", "f16"))
    ap.add_argument("--label", default="openvino", help="name of the path in the report")
    ap.add_argument("--batch", type=int, action="append", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--gemm", type=int, default=1024, help="n of the peak GEMM")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    from hrm_edge.model.checkpoint import load_checkpoint

    config = load_checkpoint(args.checkpoint).config
    peaks = gemm_peaks(args.gemm, args.threads, 2.0)
    report: dict[str, Any] = {"graph": str(args.graph), "path": args.label, "hint": args.hint,
                              "threads": args.threads, "machine": platform.processor() or platform.machine(),
                              "peaks_openvino": peaks, "batches": {}}
    for batch in args.batch or [1, 16]:
        prof = profile_graph(str(args.graph), args.hint, batch, args.threads, args.iters)
        gops = config.segment_flops(batch) / (prof["segment_ms_p50"] / 1e3) / 1e9
        prof.update(segment_gops=round(gops, 1), share_of_int8_peak=round(gops / peaks["int8_gops"], 3),
                    share_of_bf16_peak=round(gops / peaks["bf16_gflops"], 3))
        report["batches"][str(batch)] = prof
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile-openvino.json").write_text(json.dumps(report, indent=2))
    lines = [f"# Where the time goes: {args.label} ({args.hint} hint, {args.threads} thread(s))", "",
             f"OpenVINO GEMM peaks on this machine (n={args.gemm}): int8 {peaks['int8_gops']} GOP/s, "
             f"bf16 {peaks['bf16_gflops']} GFLOP/s, fp32 {peaks['fp32_gflops']} GFLOP/s.", ""]
    for batch, prof in report["batches"].items():
        lines += [f"## batch {batch}: {prof['segment_ms_p50']} ms per segment, {prof['segment_gops']} GOP/s = "
                  f"{100 * prof['share_of_int8_peak']:.0f}% of the int8 peak, "
                  f"{100 * prof['share_of_bf16_peak']:.0f}% of the bf16 peak", "",
                  "| layer type [kernel] | ms | share | nodes |", "| --- | --- | --- | --- |"]
        lines += [f"| {k} | {v['ms']} | {100 * v['share']:.1f}% | {v['nodes']} |"
                  for k, v in list(prof["layers"].items())[:12]]
        lines.append("")
    (args.out / "profile-openvino.md").write_text("\n".join(lines))
    print(f"wrote {args.out / 'profile-openvino.json'} and profile-openvino.md")


if __name__ == "__main__":
    main()

"""Issue 21, session 20: the published-scale (27M) fused INT8 segment with split integer projections, timed.

Input: a bundle that `hrm-edge export --int8` wrote for the seeded 27M config (`hrm-edge init sudoku-27m`):
its `segment.int8-cpu` (all 98 sites int8 with per-tensor scales: what auto keeps when the all-int8 graph
passes) and `segment.fp32-cpufused`. The INT8 graph is fused with today's `fuse_model` (RMSNorm, attention,
one MatMulInteger per chunk of the qkv and gate|up projections), and also rewritten to per-row scales and
then fused (what a checkpoint needing per-row scales would ship); a bundle written before session 18 also
has its own `segment.int8-cpufused` (no split integer projections), timed as "int8-tensor-fused-bundle".
Every graph runs with 1 and 2 intra-op threads, one ONNX Runtime session each, all sessions called in
interleaved rounds (rotating order), random carries, on the CPU EP.

    python -m scripts.int8_speed_27m BUNDLE [--batches 1,16] [--rounds 20] [--out bench/latest/session20-27m]

Writes OUT/speed27m.json: per graph, thread count and batch, p50 / p90 ms and the ratio of p50s to fused fp32
at the same thread count and batch.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from hrm_edge.export.fuse import fuse_model
from hrm_edge.quant.row_scales import per_row_activations
from scripts.segment_timing import cpu_session, interleaved, random_feeds


def build_graphs(bundle: Path, work: Path) -> dict[str, Path]:
    """Name -> graph file of every graph timed (module docstring)."""
    work.mkdir(parents=True, exist_ok=True)
    graphs = {"fp32-cpufused": bundle / "segment.fp32-cpufused.onnx"}
    if (bundle / "segment.int8-cpufused.onnx").is_file():
        graphs["int8-tensor-fused-bundle"] = bundle / "segment.int8-cpufused.onnx"
    for scale in ("tensor", "row"):
        model = onnx.load(str(bundle / "segment.int8-cpu.onnx"))
        if scale == "row":
            per_row_activations(model)
        fused, report = fuse_model(model)
        path = work / f"int8-{scale}-fused-split.onnx"
        onnx.save(fused, str(path))
        graphs[f"int8-{scale}-fused-split"] = path
        print(f"int8 {scale}: {report.counts}", flush=True)
    return graphs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--work", type=Path, default=Path("/tmp/hrm-edge-speed27m"))
    ap.add_argument("--out", type=Path, default=Path("bench/latest/session20-27m"))
    args = ap.parse_args()
    graphs = build_graphs(args.bundle, args.work)
    sessions = {(name, threads): cpu_session(str(path), threads) for name, path in graphs.items() for threads in (1, 2)}
    results: dict[str, dict[str, float]] = {}
    for batch in (int(b) for b in args.batches.split(",")):
        feeds = {key: random_feeds(s, batch, np.random.default_rng(0)) for key, s in sessions.items()}
        by_name = interleaved({f"{name}@{threads}": (lambda s=s, f=feeds[(name, threads)]: s.run(None, f))
                               for (name, threads), s in sessions.items()}, args.rounds)
        times = {(name, threads): by_name[f"{name}@{threads}"] for name, threads in sessions}
        for (name, threads), ms in times.items():
            base = float(np.median(times[("fp32-cpufused", threads)]))
            rec = {"p50_ms": round(float(np.median(ms)), 2), "p90_ms": round(float(np.percentile(ms, 90)), 2),
                   "ratio_to_fp32_fused": round(float(np.median(ms)) / base, 3), "calls": len(ms)}
            results[f"{name}@{threads}t/b{batch}"] = rec
            print(f"batch {batch:3d} {threads} thread(s) {name:26s} p50 {rec['p50_ms']:8.1f} ms  "
                  f"p90 {rec['p90_ms']:8.1f}  x fused fp32 {rec['ratio_to_fp32_fused']:.3f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed27m.json").write_text(json.dumps({"bundle": str(args.bundle), "onnxruntime": ort.__version__,
                                                        "rounds": args.rounds, "results": results}, indent=1))


if __name__ == "__main__":
    main()

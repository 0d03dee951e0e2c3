"""Unit costs of the INT8 export's phases on one checkpoint (issue 21, "export time at the published scale").

Times, on this machine, one unit of every phase of `Int8Pipeline` through the ONNX Runtime path
(one rollout batch, one ORT session build, one channel-statistics batch, one closed-loop batch,
one leave-one-out site) and the PyTorch fake-quant units that replace them, and writes JSON. The
extrapolation to a whole export multiplies each unit by the counts the export would run.

    python scripts/int8_unit_costs.py CKPT FP32_GRAPH -o OUT.json [--puzzles 64]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch


def _timed(fn, repeat: int = 1):
    t0 = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return (time.perf_counter() - t0) / repeat, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("fp32_graph")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--batch", type=int, default=32, help="puzzles per batch (rollout / statistics)")
    ap.add_argument("--closed-batch", type=int, default=64, help="puzzles per closed-loop batch")
    args = ap.parse_args()

    from hrm_edge.model.checkpoint import load_checkpoint
    from hrm_edge.puzzles.datasets import calib_data_dir, load_puzzle_set
    from hrm_edge.quant import quantize as Q
    from hrm_edge.quant.search import OpenLoop, find_sites, restore_float, with_outputs
    from hrm_edge.runtimes.ort.loader import make_session

    ck = load_checkpoint(args.ckpt)
    model = ck.model.set_compute_dtype("float32").eval()
    calib = load_puzzle_set(calib_data_dir(ck.task), split="calib")
    b, cb = args.batch, args.closed_batch
    tokens = np.ascontiguousarray(calib.inputs[:cb], np.int64)
    pids = np.ascontiguousarray(calib.puzzle_ids[:cb], np.int64)
    out: dict = {"checkpoint": args.ckpt, "parameters": model.parameter_count(), "threads": torch.get_num_threads(),
                 "load_before": os.getloadavg(), "batch": b, "closed_batch": cb, "units_seconds": {}}
    u = out["units_seconds"]

    with torch.inference_mode():
        t = torch.from_numpy(tokens[:b])
        p = torch.from_numpy(pids[:b])
        x = model.embed(t, p)
        z_H, z_L = model.initial_carry(b)
        model.reason(z_H, z_L, x)  # warm-up
        u["torch_fp32_segment_batch"], (z_H2, z_L2) = _timed(lambda: model.reason(z_H, z_L, x), 2)
    feeds = {"z_H": z_H2.numpy(), "z_L": z_L2.numpy(), "tokens": tokens[:b], "puzzle_ids": pids[:b]}

    work = Path(tempfile.mkdtemp(prefix="unit-costs."))
    src = onnx.load(args.fp32_graph)
    u["fold_transposes"], _ = _timed(lambda: Q.fold_weight_transposes(src))
    prepared = work / "prepared.onnx"
    onnx.save(src, str(prepared))
    sites = find_sites(src)
    out["sites"] = len(sites)
    u["ort_session_fp32"], sess = _timed(lambda: make_session(prepared))
    sess.run(None, feeds)
    u["ort_fp32_segment_batch"], _ = _timed(lambda: sess.run(None, feeds), 2)
    pairs = Q.swiglu_pairs(src)
    names = [a for pr in pairs for a in pr["inputs"]]
    stats = make_session(with_outputs(src, names).SerializeToString())
    stats.run(names, feeds)
    u["ort_channel_stats_batch"], _ = _timed(lambda: stats.run(names, feeds), 2)

    settings = Q.settings_for("cpu")
    full_path = work / "full.onnx"
    u["quantize_dynamic"], _ = _timed(lambda: Q.quantize_graph(prepared, full_path, settings))
    full = onnx.load(str(full_path))
    u["ort_session_int8"], qs = _timed(lambda: make_session(full_path))
    qfeeds = {**feeds}
    qs.run(None, qfeeds)
    u["ort_int8_segment_batch"], _ = _timed(lambda: qs.run(None, qfeeds), 2)

    samples = [(0, {k: v[:8] for k, v in feeds.items()})]
    ol = OpenLoop(src, samples)
    weight_sites = [s for s in sites if s.kind == "weight"]
    middle = weight_sites[len(weight_sites) // 2].node
    u["restore_float_one_site"], variant = _timed(lambda: restore_float(full, src, [middle]))
    u["loo_one_site_one_batch8"], _ = _timed(lambda: ol.errors(variant))

    # PyTorch fake quant (graph_spec of the all-int8 graph)
    try:
        from hrm_edge.quant.fakequant import fake_quant, graph_spec

        u["graph_spec"], spec = _timed(lambda: graph_spec(full, src, model))
        with torch.inference_mode(), fake_quant(model, spec):
            model.reason(z_H, z_L, x)
            u["torch_fakequant_segment_batch"], _ = _timed(lambda: model.reason(z_H, z_L, x), 2)
    except Exception as exc:
        out["fakequant_error"] = repr(exc)
    out["load_after"] = os.getloadavg()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

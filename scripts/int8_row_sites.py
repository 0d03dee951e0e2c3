"""Issue 21, session 13: which sites need per-row activation scales? Per site of a demo's cpu INT8 graph,
the mean over rows of the relative error of quantizing its fp32 input per tensor (uint8, one range)
and per row (symmetric int8, `hrm_edge.quant.row_scales`), on the exporter's open-loop calibration
samples; then graphs with per-row scales only where the ratio ("gain") reaches each threshold, gated
closed loop against the original checkpoint on the validation puzzles (INT8 gates) and on the
calibration puzzles (the search's tightened gates).

    python -m scripts.int8_row_sites DEMO THRESHOLDS [--out DIR]     # e.g. trm-maze11-demo 3,10,30

Writes DIR/<demo>/row_sites.json (per site: tensor and row error, gain) and mixed.json (per threshold:
row sites, gate figures). Session 13, maze demo: the token MLP's down_proj inputs gain 13-44x, every
other site 1.1-5x; per-row at the 16 down_proj sites alone (threshold 10) solves 100% the same but
keeps 88.7% of halting steps (FAIL); at 29 sites (threshold 3) validation passes (95.7% halting) but
the calibration margin does not (96.1%, 97% asked); per-row at every site (what `export --int8`
builds) passes both (bench/latest/session13-row-scales/: row_sites.json, mixed.json, whose "calib"
figures are against the plain INT8 gates and "calib_search_gate" against the search's).
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch

from hrm_edge.parity import DEFAULT_GATES
from hrm_edge.quant.fakequant import dynamic_row, dynamic_u8
from hrm_edge.quant.quantize import settings_for
from hrm_edge.quant.row_scales import per_row_activations
from hrm_edge.quant.search import with_outputs
from hrm_edge.runtimes.ort.loader import make_session
from scripts.int8_val_curve import closed_loop_on, demo_pipeline, open_demo, summary


def row_error(quantize: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    """Mean over rows (last axis) of |q(x)_row - x_row| / |x_row| (q sees the whole tensor: a per-tensor
    range is the same over the flattened rows)."""
    flat = x.reshape(-1, x.shape[-1])
    diff = (quantize(flat) - flat).norm(dim=-1)
    return float((diff / flat.norm(dim=-1).clamp_min(1e-12)).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo")
    ap.add_argument("thresholds")
    ap.add_argument("--out", type=Path, default=Path("/tmp/hrm-edge-row-sites"))
    args = ap.parse_args()
    ck, root = open_demo(args.demo, args.out)
    pipe, val = demo_pipeline(ck, root, "cpu")
    fp_nodes = {n.name: n for n in pipe.fp32.graph.node}
    sites = [s for s in pipe.sites if s.kind == "weight"]
    names = list(dict.fromkeys(fp_nodes[s.node].input[0] for s in sites))
    session = make_session(with_outputs(pipe.fp32, names).SerializeToString(), threads=1)
    errors: dict[str, list[list[float]]] = {n: [[], []] for n in names}
    for _, feeds in pipe.open_loop.samples:
        got = session.run(names, {i.name: feeds[i.name] for i in session.get_inputs()})
        for name, x in zip(names, got, strict=True):
            t = torch.from_numpy(x)
            errors[name][0].append(row_error(dynamic_u8, t))
            errors[name][1].append(row_error(dynamic_row, t))
    rows = []
    for s in sites:
        name = fp_nodes[s.node].input[0]
        tensor, row = float(np.mean(errors[name][0])), float(np.mean(errors[name][1]))
        rows.append({"label": s.label, "input": name, "tensor": round(tensor, 5), "row": round(row, 5),
                     "gain": round(tensor / row, 2)})
    (root / "row_sites.json").write_text(json.dumps(rows, indent=1))
    full = pipe.quantize(settings_for("cpu"))
    val_loop = closed_loop_on(val, pipe, 256)
    out = {}
    for threshold in (float(t) for t in args.thresholds.split(",")):
        graph = copy.deepcopy(full)
        count = per_row_activations(graph, {r["input"] for r in rows if r["gain"] >= threshold})
        path = root / f"int8-cpu-rows{threshold:g}.onnx"
        onnx.save(graph, str(path))
        t0 = time.time()
        on_val, on_calib = val_loop.evaluate(path), pipe.closed_loop.evaluate(path)
        out[threshold] = {"row_sites": count, "val": summary(on_val, DEFAULT_GATES["int8"]),
                          "calib": summary(on_calib, pipe.gates), "calib_search_gate": on_calib["passed"],
                          "seconds": round(time.time() - t0, 1)}
        print(threshold, json.dumps(out[threshold]), flush=True)
    (root / "mixed.json").write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()

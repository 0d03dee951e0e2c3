"""Issue 21, session 12: the exporter's all-int8 `cpu` graph (SmoothQuant, GPTQ) with per-row dynamic
activation scales (`scripts.int8_per_row_activations.per_row`), through ONNX Runtime, closed loop on the
validation puzzles against the ORIGINAL checkpoint's PyTorch fp32 rollout (policy q, INT8 gates),
beside the same graph with the shipped per-tensor scales. `--float A,B` keeps the sites whose labels
contain A or B in float (`restore_float`, int8 weights) in both.

    python -m scripts.int8_per_row_val DEMO [--val 256] [--float q_head] [--out DIR]

Writes DIR/<demo>/result.json (default DIR: /tmp/hrm-edge-per-row) and the graphs beside it.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import onnx

from hrm_edge.parity import DEFAULT_GATES
from hrm_edge.quant.quantize import settings_for
from hrm_edge.quant.search import restore_float
from scripts.int8_per_row_activations import per_row
from scripts.int8_val_curve import closed_loop_on, demo_pipeline, open_demo, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo")
    ap.add_argument("--val", type=int, default=256)
    ap.add_argument("--float", dest="float_sites", default="")
    ap.add_argument("--out", type=Path, default=Path("/tmp/hrm-edge-per-row"))
    args = ap.parse_args()
    ck, root = open_demo(args.demo, args.out)
    t0 = time.time()
    pipe, val = demo_pipeline(ck, root, "cpu")
    full = pipe.quantize(settings_for("cpu"))
    wanted = [w for w in args.float_sites.split(",") if w]
    nodes = [s.node for s in pipe.sites if any(w in s.label for w in wanted)]
    tensor = restore_float(full, pipe.fp32, nodes, "int8")
    graphs = {"tensor": tensor, "perrow": per_row(restore_float(full, pipe.fp32, nodes, "int8"))}
    loop = closed_loop_on(val, pipe, args.val)
    out = {"demo": args.demo, "float_sites": [s.label for s in pipe.sites if s.node in nodes],
           "sites": len(pipe.sites), "prepared_seconds": round(time.time() - t0, 1)}
    for name, graph in graphs.items():
        onnx.save(graph, str(root / f"int8-cpu-{name}.onnx"))
        t = time.time()
        ev = loop.evaluate(root / f"int8-cpu-{name}.onnx")
        out[name] = {**summary(ev, DEFAULT_GATES["int8"]), "seconds": round(time.time() - t, 1)}
        print(args.demo, name, f"{len(nodes)} float of {len(pipe.sites)}", json.dumps(out[name]), flush=True)
    (root / "result.json").write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()

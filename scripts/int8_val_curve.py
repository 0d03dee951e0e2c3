"""Issue 21, session 12: does the mixed-precision search's choice on calibration puzzles carry over to
the validation puzzles?

For one demo checkpoint and INT8 flavour: the exporter's fully quantized graph (SmoothQuant, GPTQ,
`Int8Pipeline.quantize`), its sites ranked by the leave-one-out benefit the search uses
(`hrm_edge.quant.search.leave_one_out`), and then, for each count k of the top-ranked sites kept in
float (`restore_float`, the excluded weights as the exporter writes them), the complete closed-loop
run (no early stop) on the calibration puzzles the search sees (against the search's own gates,
`search_gates()`, and the plain INT8 gates) and on the validation puzzles the export's gate uses
(plain INT8 gates), both against the ORIGINAL checkpoint's PyTorch fp32 rollout under its halting
policy.

    python scripts/int8_val_curve.py OUT --ckpt checkpoints/sudoku6-demo/model.pt --target tensorrt

Writes OUT/<demo>-<target>.json (one row per k) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hrm_edge.act import solve_in_batches
from hrm_edge.model.checkpoint import load_checkpoint
from hrm_edge.model.runner import TorchSegmentRunner
from hrm_edge.parity import DEFAULT_GATES, gate
from hrm_edge.puzzles.datasets import calib_data_dir, load_puzzle_set
from hrm_edge.quant.quantize import Int8Config, Int8Pipeline, quantized_sites, search_gates, settings_for
from hrm_edge.quant.search import ClosedLoop, leave_one_out, restore_float

KEYS = ("puzzles", "solved_agreement", "exact_agreement", "halting_agreement", "accuracy_reference",
        "accuracy_candidate", "accuracy_drop")


def closed_loop_on(pset: Any, pipe: Int8Pipeline, limit: int | None) -> ClosedLoop:
    """The plain INT8 gates on `pset` (first `limit` puzzles), against the original's fp32 rollout."""
    n = len(pset.inputs) if limit is None else min(limit, len(pset.inputs))
    tokens = np.ascontiguousarray(pset.inputs[:n], np.int64)
    ids = np.ascontiguousarray(pset.puzzle_ids[:n], np.int64)
    labels = None if pset.labels is None else pset.labels[:n]
    model = pipe.model
    ref = solve_in_batches(TorchSegmentRunner(model), tokens, ids, pipe.policy, pipe.max_steps, 64,
                           record_steps=True, record_logits=True)
    inner = model.inner
    return ClosedLoop(tokens, ids, labels, ref, inner.H_init.detach().float().numpy(),
                      inner.L_init.detach().float().numpy(), model.config.total_len, pipe.policy, pipe.max_steps,
                      DEFAULT_GATES["int8"], 64, 1, pipe.work_dir)


def open_demo(demo: str, out: Path) -> tuple[Any, Path]:
    """A shipped demo's checkpoint and its result directory OUT/DEMO (made); one torch thread."""
    torch.set_num_threads(1)
    root = out / demo
    root.mkdir(parents=True, exist_ok=True)
    return load_checkpoint(f"checkpoints/{demo}/model.pt"), root


def demo_pipeline(ck: Any, root: Path, target: str, calib_size: int = 1024) -> tuple[Int8Pipeline, Any]:
    """The INT8 pipeline of a checkpoint (its fp32 segment exported to root once; 1 ORT thread; the ORT
    search engine) on its calibration puzzles, and its validation set."""
    from hrm_edge.export.graphs import export_segment

    calib = load_puzzle_set(calib_data_dir(ck.task), split="calib")
    val = load_puzzle_set(calib_data_dir(ck.task), split="val")
    fp32_file = root / "segment.fp32.onnx"
    if not fp32_file.exists():
        export_segment(ck.model.set_compute_dtype("float32").eval(), fp32_file)
    config = Int8Config(calib_size=calib_size, threads=1, search_engine="ort")
    pipe = Int8Pipeline(fp32_file, ck, calib, root / "work", config, progress=False, log=print, targets=(target,))
    return pipe, val


def summary(ev: dict[str, Any], gates: Any) -> dict[str, Any]:
    m = ev["metrics"]
    return {**{k: m.get(k) for k in KEYS}, "passed": all(c["passed"] for c in gate(m, gates))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--ckpt", default="checkpoints/sudoku6-demo/model.pt")
    ap.add_argument("--target", default="tensorrt")
    ap.add_argument("--calib-size", type=int, default=1024)
    ap.add_argument("--val-size", type=int, default=None)
    ap.add_argument("--ks", default="", help="comma-separated float-site counts (default: a grid over all)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ck = load_checkpoint(args.ckpt)
    demo = Path(args.ckpt).parent.name
    settings = settings_for(args.target)
    root = args.out / f"{demo}-{settings.target}"
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pipe, val = demo_pipeline(ck, root, settings.target, args.calib_size)
    full = pipe.quantize(settings)
    excluded_weights = "int8-dq" if settings.target == "tensorrt" else "int8"
    sites = quantized_sites(pipe.sites, full, pipe.fp32)
    _, benefit = leave_one_out(full, pipe.fp32, sites, pipe.open_loop, False, excluded_weights)
    ranked = sorted(benefit, key=lambda n: -benefit[n])
    calib_loop = pipe.closed_loop  # the search's own puzzles, reference and (tightened) gates
    val_loop = closed_loop_on(val, pipe, args.val_size)
    print(f"prepared in {time.perf_counter() - t0:.0f} s: {len(sites)} sites, calib {len(calib_loop.tokens)}, "
          f"val {len(val_loop.tokens)} puzzles", flush=True)
    n = len(sites)
    ks = [int(k) for k in args.ks.split(",")] if args.ks else sorted({0, *range(0, n + 1, max(1, n // 10)), n})
    rows = []
    for k in ks:
        graph = restore_float(full, pipe.fp32, ranked[:k], excluded_weights)
        ev_c = calib_loop.evaluate(graph)
        ev_v = val_loop.evaluate(graph)
        row = {"float_sites": k, "calib": summary(ev_c, DEFAULT_GATES["int8"]),
               "calib_search_gates_passed": summary(ev_c, search_gates())["passed"],
               "val": summary(ev_v, DEFAULT_GATES["int8"])}
        rows.append(row)
        c, v = row["calib"], row["val"]
        search_ok = "PASS" if row["calib_search_gates_passed"] else "fail"
        print(f"k={k:3d}  calib solved {100 * c['solved_agreement']:.1f} halt {100 * c['halting_agreement']:.1f} "
              f"drop {100 * c['accuracy_drop']:+.2f} search-gates {search_ok}"
              f" | val solved {100 * v['solved_agreement']:.1f} halt {100 * v['halting_agreement']:.1f} "
              f"drop {100 * v['accuracy_drop']:+.2f} {'PASS' if v['passed'] else 'fail'}", flush=True)
        (args.out / f"{demo}-{settings.target}.json").write_text(json.dumps(
            {"checkpoint": args.ckpt, "target": settings.target, "sites": n, "ranked": ranked,
             "benefit": benefit, "rows": rows}, indent=1, default=float))


if __name__ == "__main__":
    main()

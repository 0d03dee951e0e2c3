"""Where rounding decides a reference's answers: PyTorch fp32 against fp64 and the bundle's fp32 graphs, per puzzle.

    python scripts/parity_rounding_stability.py BUNDLE CKPT --puzzles 32 -o stability.json

For each run (PyTorch fp64, each fp32 segment graph on ONNX Runtime) against PyTorch fp32: whether the final
output is identical, the first segment at which a predicted token differs (0: never), and the per-segment
max |Δlogit| / max |logit|. Session 17, seeded 27M config, 32 sudoku val puzzles: fp64 first differs at
segment 5-13 on every puzzle (bench/latest/session17-scale/rounding-stability-27m.json).
"""

from __future__ import annotations

import argparse
import copy
import json

import numpy as np
import torch

from hrm_edge.act import SolveResult, parse_policy, solve_in_batches
from hrm_edge.bundle import open_bundle
from hrm_edge.model.checkpoint import load_checkpoint
from hrm_edge.model.runner import TorchSegmentRunner
from hrm_edge.puzzles.datasets import load_puzzle_set
from hrm_edge.runtimes.solver import GraphSolver


def against(run: SolveResult, ref: SolveResult) -> dict[str, list]:
    """`run` against the PyTorch fp32 reference `ref` (both with per-step predictions and logits)."""
    T = min(len(run.step_predictions), len(ref.step_predictions))
    differ = (run.step_predictions[:T] != ref.step_predictions[:T]).any(-1)  # [T, N]
    first = np.where(differ.any(0), differ.argmax(0) + 1, 0)
    rel = [float(np.nanmax(np.abs(run.step_logits[t] - ref.step_logits[t])) / np.nanmax(np.abs(ref.step_logits[t])))
           for t in range(T)]
    final = (run.predictions == ref.predictions).all(-1)
    return {"final_equal": final.astype(int).tolist(), "first_token_diff_step": first.tolist(), "rel_by_step": rel}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("checkpoint")
    ap.add_argument("--data", default="calib_data/sudoku")
    ap.add_argument("--puzzles", type=int, default=32)
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args()
    b = open_bundle(a.bundle)
    ck = load_checkpoint(a.checkpoint)
    ps = load_puzzle_set(a.data, split="val")
    x, ids, n = ps.inputs[:a.puzzles], ps.puzzle_ids[:a.puzzles], min(a.puzzles, len(ps))
    policy, steps = parse_policy(b.manifest.need_halting().default_policy), b.manifest.need_halting().max_steps

    def torch_run(model: torch.nn.Module) -> SolveResult:
        return solve_in_batches(TorchSegmentRunner(model), x, ids, policy, steps, n, record_steps=True,
                                record_logits=True)

    ref = torch_run(ck.model.set_compute_dtype("float32").eval())
    runs = {"torch fp64": torch_run(copy.deepcopy(ck.model).double().set_compute_dtype(torch.float64))}
    for name in ("segment.fp32", "segment.fp32-cpufused"):
        if name in b.graphs:
            runs[name] = GraphSolver(b, name).solve(x, ids, policy, steps, n, record_logits=True)
    out = {name: against(run, ref) for name, run in runs.items()}
    for name, r in out.items():
        print(f"{name}: final output identical on {sum(r['final_equal'])}/{n}; first differing token at segment "
              f"{r['first_token_diff_step']}")
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()

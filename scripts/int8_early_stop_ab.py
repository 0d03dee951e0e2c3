"""Early stop A/B (issue 21): the same INT8 search with and without the closed loop's early stop, in one
process with fresh caches (early, full, early again), after one shared calibration rollout each.

    python scripts/int8_early_stop_ab.py sudoku6-demo 256 /tmp/es6 cpu

Writes DIR/early_stop_ab.json: per run the build and phase seconds, the float sites, every trial's
pass/fail and where it stopped; `same_sites` says whether the three runs chose the same sites.
"""
import json
import sys
import time
from pathlib import Path

import torch

import hrm_edge.quant.search as S
from hrm_edge.export.graphs import export_segment
from hrm_edge.model.checkpoint import load_checkpoint
from hrm_edge.puzzles.datasets import calib_data_dir, load_puzzle_set
from hrm_edge.quant.quantize import Int8Config, Int8Pipeline

demo, n, root, target = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
root.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)
ck = load_checkpoint(f"checkpoints/{demo}/model.pt")
calib = load_puzzle_set(calib_data_dir(ck.task), split="calib")
model = ck.model.set_compute_dtype("float32").eval()
if not (root / "segment.fp32.onnx").exists():
    export_segment(model, root / "segment.fp32.onnx")
orig = S.ClosedLoop.evaluate
out = {}
for mode in ("early", "full", "early2"):
    if mode == "full":
        S.ClosedLoop.evaluate = lambda self, m, record=False, early_stop=False: orig(self, m, record, False)
    else:
        S.ClosedLoop.evaluate = orig
    pipe = Int8Pipeline(root / "segment.fp32.onnx", ck, calib, root / f"work-{mode}",
                        Int8Config(calib_size=n, cache_dir=root / f"cache-{mode}", threads=1), progress=False,
                        log=print, targets=(target,))
    _ = pipe.reader.rollout  # the rollout is not part of the comparison
    t = time.perf_counter()
    b = pipe.build(target, root / f"int8-{mode}.onnx")
    secs = time.perf_counter() - t
    trials = b.report["search"]["trials"]
    out[mode] = {"build_seconds": round(secs, 1), "phase_seconds": b.report["phase_seconds"],
                 "float_sites": sorted(s["node"] for s in b.entry["quantization"]["float_sites"]),
                 "trials": len(trials), "trial_seconds": round(sum(t["seconds"] for t in trials), 1),
                 "stopped_early": [t.get("stopped_after") for t in trials],
                 "passed": [t["passed"] for t in trials], "calib_parity": b.report["calib_parity"]}
    print(mode, json.dumps({k: v for k, v in out[mode].items() if k != "float_sites"}), flush=True)
out["same_sites"] = out["early"]["float_sites"] == out["full"]["float_sites"] == out["early2"]["float_sites"]
print("same float sites:", out["same_sites"], len(out["early"]["float_sites"]))
(root / "early_stop_ab.json").write_text(json.dumps(out, indent=1, default=str))

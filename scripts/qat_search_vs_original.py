"""Issue 21: does QAT compose with the search when the user's promise (the ORIGINAL checkpoint's fp32
reference) is the search's reference too? PTQ of the original vs a fine-tuned (QAT) checkpoint, both
searched against the original's closed-loop rollout on the calibration puzzles, then gated on the val
puzzles against the original; and the fine-tuned model's own fp32 against the original (no quantization).

    python scripts/qat_search_vs_original.py OUT 1024 cpu QAT_CHECKPOINT

Writes OUT/qat_vs_ptq.json (session 10: bench/latest/session10-qat/).
"""
import json
import sys
import time
from pathlib import Path

import torch

from hrm_edge.act import parse_policy, solve_in_batches
from hrm_edge.export.graphs import export_segment
from hrm_edge.model.checkpoint import load_checkpoint
from hrm_edge.model.runner import TorchSegmentRunner
from hrm_edge.parity import DEFAULT_GATES, compare, gate
from hrm_edge.puzzles.datasets import calib_data_dir, load_puzzle_set
from hrm_edge.quant.quantize import Int8Config, Int8Pipeline
from hrm_edge.quant.search import ClosedLoop

ORIGINAL = "checkpoints/sudoku6-demo/model.pt"
KEYS = ("puzzles", "solved_agreement", "exact_agreement", "halting_agreement", "accuracy_drop")


def main() -> None:
    root, n, target, qat = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    orig = load_checkpoint(ORIGINAL)
    om = orig.model.set_compute_dtype("float32").eval()
    calib = load_puzzle_set(calib_data_dir(orig.task), split="calib")
    val = load_puzzle_set(calib_data_dir(orig.task), split="val")
    policy, steps = parse_policy("q"), om.config.halt_max_steps

    def rollout(model, pset, k):
        return solve_in_batches(TorchSegmentRunner(model), pset.inputs[:k], pset.puzzle_ids[:k], policy, steps, 64,
                                record_steps=True, record_logits=True)

    calib_ref, val_ref = rollout(om, calib, n), rollout(om, val, len(val))
    out = {}
    for name, path in (("ptq", ORIGINAL), ("qat", qat)):
        ck = load_checkpoint(path)
        model = ck.model.set_compute_dtype("float32").eval()
        fp32 = {split: compare(ref, rollout(model, pset, len(ref.steps)), pset.labels[:len(ref.steps)])
                for split, pset, ref in (("calib", calib, calib_ref), ("val", val, val_ref))}
        d = root / name
        d.mkdir(exist_ok=True)
        export_segment(model, d / "segment.fp32.onnx")
        pipe = Int8Pipeline(d / "segment.fp32.onnx", ck, calib, d / "work",
                            Int8Config(calib_size=n, cache_dir=d / "cache", threads=1), progress=False, log=print,
                            targets=(target,))
        own = pipe.closed_loop  # built on this checkpoint's rollout: the reference becomes the original's
        pipe._closed = ClosedLoop(own.tokens, own.puzzle_ids, own.labels, calib_ref, own.h_init, own.l_init,
                                  own.total_len, own.policy, own.max_steps, own.gates, own.batch_size, 1, d / "work")
        t = time.time()
        built = pipe.build(target, d / f"int8-{target}.onnx")
        val_loop = ClosedLoop(val.inputs, val.puzzle_ids, val.labels, val_ref, own.h_init, own.l_init, own.total_len,
                              policy, steps, DEFAULT_GATES["int8"], 64, 1, d / "work")
        ev = val_loop.evaluate(d / f"int8-{target}.onnx")
        q = built.entry["quantization"]
        out[name] = {"checkpoint": path, "float_sites": len(q["float_sites"]), "sites": q["sites"],
                     "build_s": round(time.time() - t, 1), "calib_parity_vs_original": built.report["calib_parity"],
                     "val_vs_original": {k: ev["metrics"].get(k) for k in KEYS}, "val_passed": ev["passed"],
                     "fp32_vs_original": {s: {**{k: m.get(k) for k in KEYS}, "int8_gates_failed": [
                         c["name"] for c in gate(m, DEFAULT_GATES["int8"]) if not c["passed"]]}
                         for s, m in fp32.items()},
                     "search_trials": built.report["search"]["trials"], "phase_seconds": built.report["phase_seconds"]}
        print(name, json.dumps(out[name]["val_vs_original"]), out[name]["float_sites"], "float;",
              "PASS" if ev["passed"] else "FAIL", flush=True)
    (root / "qat_vs_ptq.json").write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()

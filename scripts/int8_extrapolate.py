"""Extrapolate `export --int8` phase times of the 27M config from measured unit costs (issue 21).

Reads the JSON of scripts/int8_unit_costs.py and multiplies each unit by the number of times the
pipeline runs it, for the code before (every pass through ONNX Runtime separately) and after this
session's changes (the rollout doubles as reference and SmoothQuant statistics; the all-int8 ORT
run doubles as the final check). Every number written is EXTRAPOLATED, not measured end to end.

    python scripts/int8_extrapolate.py units.json -o extrapolated.json [--puzzles 512 --val 512 --steps 16]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def phases(u: dict[str, float], batch: int, n: int, v: int, T: int, sites: int, evals: int) -> dict:
    torch_seg = u["torch_fp32_segment_batch"] / batch
    ort_fp32 = u["ort_fp32_segment_batch"] / batch
    stats = u["ort_channel_stats_batch"] / batch
    int8 = u["ort_int8_segment_batch"] / batch
    session = u["ort_session_int8"]
    loo_site = u["restore_float_one_site"] + session + 8 * T * int8  # 8 open-loop samples per step
    closed = n * T * int8 + session
    report = 128 * (2 * ort_fp32 + 3 * int8) + 3 * session
    common = {"quantize (ORT quantize_dynamic)": u["quantize_dynamic"],
              "GPTQ statistics (256 samples, ORT)": 256 * stats,
              "report (open-loop errors, site errors)": report,
              "validation gate (PyTorch reference + ORT INT8)": v * T * (torch_seg + int8) + session}
    before = {"calibration rollout (PyTorch)": n * T * torch_seg, "channel statistics (ORT)": n * T * stats,
              "closed-loop fp32 reference (PyTorch)": n * T * torch_seg, "all-int8 closed loop (ORT)": closed,
              "final closed loop (ORT, again)": closed, **common}
    after = {"calibration rollout (PyTorch; also reference and statistics)": n * T * torch_seg,
             "all-int8 closed loop (ORT; also the final check)": closed, **common}
    search = {"leave-one-out sensitivity (ORT, per site: rewrite, session, 8 samples x T)": sites * loo_site,
              "closed-loop search (ORT, at most max_evals runs)": evals * closed}
    def total(d: dict) -> float:
        return round(sum(d.values()) / 60, 1)
    return {"unit_seconds_per_puzzle_segment": {"torch_fp32": torch_seg, "ort_fp32": ort_fp32, "ort_int8": int8},
            "before_s": before, "before_total_min": total(before), "after_s": after, "after_total_min": total(after),
            "if_the_search_runs_s": search, "if_the_search_runs_extra_min": total(search)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("units")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--puzzles", type=int, default=512, help="calibration puzzles (calib_data/sudoku: 512)")
    ap.add_argument("--val", type=int, default=512, help="validation puzzles of the gate (calib_data/sudoku: 512)")
    ap.add_argument("--steps", type=int, default=16, help="segments per puzzle (the seeded 27M never halts: 16)")
    ap.add_argument("--weight-sites", type=int, default=98)
    ap.add_argument("--max-evals", type=int, default=16)
    args = ap.parse_args()
    data = json.loads(Path(args.units).read_text())
    measured = phases(data["units_seconds"], data["batch"], args.puzzles, args.val, args.steps, args.weight_sites,
                      args.max_evals)
    # The same counts at the quiet-machine unit costs of bench/latest/27m-session1 (1 thread, batch 16):
    # torch-fp32 1.76 s, ort-int8 0.395 s, ort-fp32-cpufused 1.62 s per 16 puzzle-segments.
    quiet_units = {**data["units_seconds"], "torch_fp32_segment_batch": 1.76 * data["batch"] / 16,
                   "ort_fp32_segment_batch": 1.62 * data["batch"] / 16,
                   "ort_channel_stats_batch": 1.62 * data["batch"] / 16,
                   "ort_int8_segment_batch": 0.395 * data["batch"] / 16}
    quiet = phases(quiet_units, data["batch"], args.puzzles, args.val, args.steps, args.weight_sites, args.max_evals)
    out = {"kind": "EXTRAPOLATED from unit costs, not an end-to-end measurement",
           "counts": {"calibration_puzzles": args.puzzles, "validation_puzzles": args.val, "segments": args.steps,
                      "weight_sites": args.weight_sites, "max_evals": args.max_evals},
           "units_measured_here": {"load_before": data.get("load_before"), "load_after": data.get("load_after"),
                                   **measured},
           "units_quiet_bench_27m_session1": quiet}
    Path(args.output).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: (v["before_total_min"], v["after_total_min"], v["if_the_search_runs_extra_min"])
                      for k, v in out.items() if isinstance(v, dict) and "before_total_min" in v}))


if __name__ == "__main__":
    main()

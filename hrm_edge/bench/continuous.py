"""Benchmark: continuous ACT batching (S slots, `hrm_edge.continuous`) against shrinking batches of S
(`solve_in_batches`), same runtime and graph, under `q` on the HRM 6x6 demo's mixed-difficulty
validation puzzles, measured side by side in one run (alternating repeats; best of each).

    python -m hrm_edge.bench.continuous --bundle DIR --out bench/results   # continuous.json + .png
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from hrm_edge.act import parse_policy, solve_in_batches
from hrm_edge.bundle import open_bundle
from hrm_edge.continuous import solve_continuous
from hrm_edge.puzzles.datasets import load_puzzle_set
from hrm_edge.runtimes.solver import GraphSolver, default_graph

ROOT = Path(__file__).resolve().parents[2]


def measure(bundle_dir: str, data: str, slots: list[int], repeats: int, limit: int, threads: int) -> dict:
    bundle = open_bundle(bundle_dir)
    graph = default_graph(bundle)
    runner = GraphSolver(bundle, graph, threads=threads).segment_runner
    pset = load_puzzle_set(data, "val")
    tokens, ids = pset.inputs[:limit], bundle.model_puzzle_ids(pset.puzzle_ids[:limit])
    policy, steps = parse_policy("q"), bundle.manifest.need_halting().max_steps
    rows = []
    for s in slots:
        best = {"shrinking": np.inf, "continuous": np.inf}
        for _ in range(repeats):
            t = time.perf_counter()
            a = solve_in_batches(runner, tokens, ids, policy, steps, s)
            best["shrinking"] = min(best["shrinking"], time.perf_counter() - t)
            t = time.perf_counter()
            b = solve_continuous(runner, tokens, ids, policy, steps, s)
            best["continuous"] = min(best["continuous"], time.perf_counter() - t)
            assert (a.steps == b.steps).all() and (a.predictions == b.predictions).all()
        rows.append({"slots": s, "puzzles_per_s_shrinking": len(tokens) / best["shrinking"],
                     "puzzles_per_s_continuous": len(tokens) / best["continuous"],
                     "ratio": best["shrinking"] / best["continuous"]})
    return {"bundle": str(bundle_dir), "graph": graph, "runtime": "ort cpu", "threads": threads, "policy": "q",
            "max_steps": steps, "puzzles": len(tokens), "steps_histogram": np.bincount(a.steps).tolist(),
            "repeats": repeats, "rows": rows}


def demo_bundle(out: Path) -> str:
    """OUT/sudoku6-demo-bundle: the HRM 6x6 demo exported (fp32 + fused CPU graph) on first use, by the
    CLI in a subprocess (bench sits below cli)."""
    bundle = out / "sudoku6-demo-bundle"
    if not (bundle / "manifest.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "hrm_edge.cli", "export", str(ROOT / "checkpoints" / "sudoku6-demo" /
                                                                           "model.pt"), "-o", str(bundle), "--no-fp16"],
                       check=True)
    return str(bundle)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slots = [r["slots"] for r in report["rows"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(slots, [r["puzzles_per_s_shrinking"] for r in report["rows"]], "o-", label="shrinking batches")
    ax.plot(slots, [r["puzzles_per_s_continuous"] for r in report["rows"]], "o-", label="continuous")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("slots (batch size)")
    ax.set_ylabel("puzzles / s")
    ax.set_title(f"ACT batching, policy q, {report['graph']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", help="Exported HRM 6x6 demo bundle (default: exported to OUT/sudoku6-demo-bundle).")
    p.add_argument("--data", default=str(ROOT / "calib_data" / "sudoku6"))
    p.add_argument("--slots", default="4,8,16,32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--limit", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="bench/results")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle or demo_bundle(out)
    report = measure(bundle, args.data, [int(s) for s in args.slots.split(",")], args.repeats, args.limit,
                     args.threads)
    (out / "continuous.json").write_text(json.dumps(report, indent=2))
    plot(report, out / "continuous.png")
    for r in report["rows"]:
        print(f"slots {r['slots']:3d}: shrinking {r['puzzles_per_s_shrinking']:.0f}/s, continuous "
              f"{r['puzzles_per_s_continuous']:.0f}/s, ratio {r['ratio']:.2f}x")


if __name__ == "__main__":
    main()

"""Benchmark: continuous ACT batching (S slots, `hrm_edge.continuous`) against shrinking batches of S
(`solve_in_batches`), same runtime and graph, under `q` on the HRM 6x6 demo's mixed-difficulty
validation puzzles, measured side by side in one run (alternating repeats; best of each), for each
ONNX Runtime thread count and arrival order (the set's file order, and shuffled: what a server sees).

Beside the ratio it records what explains it: the graph's time per segment at batch 1..32 (best of
`repeats` x 10 steps) with its affine fit t(b) = fixed + per_row * b, the step-count distribution,
and for each schedule the segment calls, row-segments, time inside the runner's `step` and the
scheduling time outside it. Under an affine cost both schedules pay per_row x (total row-segments),
identical for both; they differ only in fixed x (segment calls), so the ratio is bounded by
`predicted_ratio` (the fit applied to the counted calls and rows).

Every time is taken twice: wall clock, and this process's CPU time (`time.process_time`). On a
shared machine a long segment is preempted and its wall time grows with the machine's load, not
with the work; at 1 ONNX Runtime thread the CPU time is the work itself (with more threads it adds
up the threads, spin-waiting included), so the CPU-time ratio is the one a loaded machine does not
distort.

    python -m hrm_edge.bench.continuous --bundle DIR --out bench/results   # continuous.json + .png
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from hrm_edge.act import SegmentRunner, parse_policy, solve_in_batches
from hrm_edge.bundle import open_bundle
from hrm_edge.continuous import solve_continuous
from hrm_edge.puzzles.datasets import load_puzzle_set
from hrm_edge.runtimes.solver import GraphSolver, default_graph

ROOT = Path(__file__).resolve().parents[2]
COST_BATCHES = (1, 2, 4, 8, 16, 32)


class CountingRunner:
    """A `SegmentRunner` that forwards to `inner` and counts segment calls, row-segments (rows summed
    over calls) and seconds spent in `step`."""

    def __init__(self, inner: SegmentRunner) -> None:
        self.inner = inner
        self.rows = self.calls = self.row_segments = 0
        self.step_s = self.step_cpu_s = 0.0

    def start(self, tokens: np.ndarray, puzzle_ids: np.ndarray) -> None:
        self.inner.start(tokens, puzzle_ids)
        self.rows = len(tokens)

    def step(self) -> tuple[np.ndarray, np.ndarray]:
        t, c = time.perf_counter(), time.process_time()
        out = self.inner.step()
        self.step_s += time.perf_counter() - t
        self.step_cpu_s += time.process_time() - c
        self.calls += 1
        self.row_segments += self.rows
        return out

    def predictions(self, rows: np.ndarray) -> np.ndarray:
        return self.inner.predictions(rows)

    def logits(self, rows: np.ndarray) -> np.ndarray:
        return self.inner.logits(rows)

    def keep(self, rows: np.ndarray) -> None:
        self.inner.keep(rows)
        self.rows = len(rows)

    def admit(self, tokens: np.ndarray, puzzle_ids: np.ndarray) -> None:
        self.inner.admit(tokens, puzzle_ids)
        self.rows += len(tokens)


def segment_costs(runner: SegmentRunner, tokens: np.ndarray, ids: np.ndarray, repeats: int) -> dict:
    """Milliseconds per segment at each batch in `COST_BATCHES` up to len(tokens), wall and CPU (best of
    repeats x 10 steps each, after one warm-up step), and their least-squares affine fits
    fixed + per_row * b."""
    wall, cpu = {}, {}
    batches = [b for b in COST_BATCHES if b <= len(tokens)]
    for b in batches:
        runner.start(tokens[:b], ids[:b])
        runner.step()
        walls, cpus = [], []
        for _ in range(10 * repeats):
            t, c = time.perf_counter(), time.process_time()
            runner.step()
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
        wall[b], cpu[b] = 1e3 * min(walls), 1e3 * min(cpus)
    out: dict = {"batch": batches}
    for name, best in (("wall", wall), ("cpu", cpu)):
        per_row, fixed = np.polyfit(list(best), list(best.values()), 1)
        out[name] = {"ms_per_segment": list(best.values()), "ms_per_row": [v / b for b, v in best.items()],
                     "fit_fixed_ms": float(fixed), "fit_per_row_ms": float(per_row)}
    return out


def compare_schedules(runner: SegmentRunner, tokens: np.ndarray, ids: np.ndarray, slots: int, steps: int,
                      repeats: int, cost: dict) -> dict:
    """Shrinking batches of `slots` vs continuous with `slots`, alternating, best of `repeats` each;
    both solve the same puzzles in the same order and must agree exactly."""
    policy = parse_policy("q")
    runs: dict[str, list[dict]] = {"shrinking": [], "continuous": []}
    results = {}
    for _ in range(repeats):
        for name in runs:
            counting = CountingRunner(runner)
            t, c = time.perf_counter(), time.process_time()
            if name == "shrinking":
                results[name] = solve_in_batches(counting, tokens, ids, policy, steps, slots)
            else:
                results[name] = solve_continuous(counting, tokens, ids, policy, steps, slots)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            runs[name].append({"wall_s": wall, "cpu_s": cpu, "segment_calls": counting.calls,
                               "row_segments": counting.row_segments, "step_wall_s": counting.step_s,
                               "step_cpu_s": counting.step_cpu_s, "outside_step_cpu_s": cpu - counting.step_cpu_s})
    best = {}
    for name, rs in runs.items():  # the counts repeat exactly; each clock's numbers from its best run
        w, c = min(rs, key=lambda r: r["wall_s"]), min(rs, key=lambda r: r["cpu_s"])
        best[name] = {"segment_calls": w["segment_calls"], "row_segments": w["row_segments"], "wall_s": w["wall_s"],
                      "step_wall_s": w["step_wall_s"], "cpu_s": c["cpu_s"], "step_cpu_s": c["step_cpu_s"],
                      "outside_step_cpu_s": c["outside_step_cpu_s"]}
    a, b = results["shrinking"], results["continuous"]
    assert (a.steps == b.steps).all() and (a.predictions == b.predictions).all(), "the schedules disagree"
    fixed, per_row = cost["cpu"]["fit_fixed_ms"], cost["cpu"]["fit_per_row_ms"]

    def predicted(r: dict) -> float:
        return fixed * r["segment_calls"] + per_row * r["row_segments"]

    sh, co = best["shrinking"], best["continuous"]
    return {"slots": slots, "shrinking": sh, "continuous": co,
            "puzzles_per_s_shrinking": len(tokens) / sh["wall_s"],
            "puzzles_per_s_continuous": len(tokens) / co["wall_s"],
            "ratio": sh["wall_s"] / co["wall_s"], "cpu_ratio": sh["cpu_s"] / co["cpu_s"],
            "predicted_ratio": predicted(sh) / predicted(co),
            "call_ratio": sh["segment_calls"] / co["segment_calls"],
            "row_segment_ratio": sh["row_segments"] / co["row_segments"]}


def measure(bundle_dir: str, data: str, slots: list[int], repeats: int, limit: int, threads: list[int],
            seeds: list[int]) -> dict:
    bundle = open_bundle(bundle_dir)
    graph = default_graph(bundle)
    pset = load_puzzle_set(data, "val")
    tokens, ids = pset.inputs[:limit], bundle.model_puzzle_ids(pset.puzzle_ids[:limit])
    steps = bundle.manifest.need_halting().max_steps
    orders = {"file order": np.arange(len(tokens))}
    orders.update({f"shuffled (seed {s})": np.random.default_rng(s).permutation(len(tokens)) for s in seeds})
    report: dict = {"bundle": str(bundle_dir), "graph": graph, "runtime": "ort cpu", "policy": "q",
                    "max_steps": steps, "puzzles": len(tokens), "repeats": repeats, "cpu_count": os.cpu_count(),
                    "load_average_at_start": os.getloadavg()[0], "segment_costs": {}, "rows": []}
    for th in threads:
        runner = GraphSolver(bundle, graph, threads=th).segment_runner
        cost = segment_costs(runner, tokens, ids, repeats)
        report["segment_costs"][str(th)] = cost
        for order, perm in orders.items():
            for s in slots:
                row = compare_schedules(runner, tokens[perm], ids[perm], s, steps, repeats, cost)
                report["rows"].append({"threads": th, "order": order, **row})
                print(f"threads {th}, {order}, slots {s}: ratio {row['ratio']:.2f}x wall, {row['cpu_ratio']:.2f}x "
                      f"CPU (affine model {row['predicted_ratio']:.2f}x; segment calls {row['call_ratio']:.2f}x)",
                      flush=True)
    report["steps_histogram"] = np.bincount(solve_in_batches(runner, tokens, ids, parse_policy("q"), steps,
                                                             64).steps).tolist()
    report["load_average_at_end"] = os.getloadavg()[0]
    return report


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
    """Left: time per segment vs batch (and its affine fit) per thread count; right: measured and
    predicted throughput ratio (continuous over shrinking) vs slots, per thread count and order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for th, cost in report["segment_costs"].items():
        b, fit = np.array(cost["batch"]), cost["cpu"]
        line = ax1.plot(b, fit["ms_per_segment"], "o", label=f"{th} thread(s), CPU time")[0]
        ax1.plot(b, fit["fit_fixed_ms"] + fit["fit_per_row_ms"] * b, "-", color=line.get_color(),
                 label=f"fit {fit['fit_fixed_ms']:.2f} + {fit['fit_per_row_ms']:.2f} ms x b")
        ax1.plot(b, cost["wall"]["ms_per_segment"], "+:", color=line.get_color(), label=f"{th} thread(s), wall")
    ax1.set_xlabel("batch (rows)")
    ax1.set_ylabel("ms per segment (best)")
    ax1.set_title(f"{report['graph']}, ORT CPU")
    ax1.legend(fontsize=8)
    groups: dict[tuple[int, str], list[dict]] = {}
    for r in report["rows"]:
        groups.setdefault((r["threads"], r["order"]), []).append(r)
    for (th, order), rows in groups.items():
        line = ax2.plot([r["slots"] for r in rows], [r["cpu_ratio"] for r in rows], "o-", label=f"{th}T, {order}")[0]
        ax2.plot([r["slots"] for r in rows], [r["predicted_ratio"] for r in rows], "x--", color=line.get_color())
    ax2.axhline(1.5, color="grey", lw=0.8, ls=":", label="target 1.5x")
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("slots (S)")
    ax2.set_ylabel("shrinking / continuous CPU time")
    ax2.set_title("measured (o) and affine-model prediction (x)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", help="Exported HRM 6x6 demo bundle (default: exported to OUT/sudoku6-demo-bundle).")
    p.add_argument("--data", default=str(ROOT / "calib_data" / "sudoku6"))
    p.add_argument("--slots", default="4,16,32")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--limit", type=int, default=256)
    p.add_argument("--threads", default="1,2", help="ONNX Runtime intra-op thread counts (comma-separated).")
    p.add_argument("--seeds", default="0", help="Shuffled arrival orders, one per seed (comma-separated).")
    p.add_argument("--out", default="bench/results")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle or demo_bundle(out)
    ints = lambda text: [int(v) for v in text.split(",") if v]  # noqa: E731
    report = measure(bundle, args.data, ints(args.slots), args.repeats, args.limit, ints(args.threads),
                     ints(args.seeds))
    (out / "continuous.json").write_text(json.dumps(report, indent=2))
    plot(report, out / "continuous.png")
    for th, cost in report["segment_costs"].items():
        for clock in ("cpu", "wall"):
            fit = cost[clock]
            print(f"{th} thread(s), {clock}: ms per segment " + ", ".join(
                f"b{b} {ms:.2f}" for b, ms in zip(cost["batch"], fit["ms_per_segment"], strict=True))
                + f"; fit {fit['fit_fixed_ms']:.2f} ms + {fit['fit_per_row_ms']:.2f} ms/row")
    print(f"steps histogram: {report['steps_histogram']}")


if __name__ == "__main__":
    main()

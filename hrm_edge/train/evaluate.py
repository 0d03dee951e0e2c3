"""Accuracy of a model on a labelled puzzle set, per halting policy and difficulty bucket.

Every policy is measured by running it (never derived); the inference-time scaling curve
(exact accuracy versus the segment cap) comes from one recorded `fixed` run to
`scan_steps`, whose step-t predictions are what a cap of t returns under `fixed`, and
whose per-step q values give the `q` policy's answer under each cap.
Works with any `SegmentRunner`, so it needs no torch itself.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import numpy as np

from hrm_edge.act import SegmentRunner, SolveResult, parse_policy, solve_in_batches
from hrm_edge.puzzles.datasets import PuzzleSet

DEFAULT_POLICIES = ("fixed", "q", "threshold:0.9")


def difficulty_buckets(pset: PuzzleSet) -> dict[str, np.ndarray]:
    """Named boolean masks over the set: by givens band and rater level (Sudoku), by path-length band (mazes)."""
    out: dict[str, np.ndarray] = {}
    meta = pset.meta or [{} for _ in range(len(pset))]
    if all("givens" in m for m in meta):
        givens = np.array([m["givens"] for m in meta])
        edges = sorted({int(g) // 5 * 5 for g in givens})
        for lo in edges:
            mask = (givens >= lo) & (givens < lo + 5)
            out[f"givens {lo}-{lo + 4}"] = mask
    if all("level_name" in m for m in meta):
        for name in sorted({m["level_name"] for m in meta}):
            out[f"level {name}"] = np.array([m["level_name"] == name for m in meta])
    elif all("band" in m for m in meta):  # mazes: the generator's shortest-path-length band, in steps
        bands = [tuple(m["band"]) for m in meta]
        for lo, hi in sorted(set(bands)):
            out[f"path {lo}-{hi}"] = np.array([b == (lo, hi) for b in bands])
    return out


def score(pset: PuzzleSet, result: SolveResult) -> dict[str, Any]:
    """Exact and token accuracy, validity (checker), segments mean and histogram, per bucket."""
    labels = pset.labels
    assert labels is not None, "evaluation needs labels"
    mask = labels != 0
    exact = (result.predictions == labels).all(-1)
    token = ((result.predictions == labels) & mask).sum(-1) / np.maximum(mask.sum(-1), 1)
    codec = pset.codec
    valid = np.array([codec.check(i, p) for i, p in zip(pset.inputs, result.predictions, strict=True)])

    def summary(sel: np.ndarray) -> dict[str, Any]:
        n = int(sel.sum())
        steps = result.steps[sel]
        return {"count": n, "exact": float(exact[sel].mean()) if n else None,
                "token": float(token[sel].mean()) if n else None, "valid": float(valid[sel].mean()) if n else None,
                "mean_segments": float(steps.mean()) if n else None,
                "more_than_one_segment": float((steps > 1).mean()) if n else None}

    everything = np.ones(len(pset), bool)
    return {**summary(everything),
            "segments_histogram": {int(k): int(v) for k, v in sorted(Counter(result.steps.tolist()).items())},
            "buckets": {name: summary(sel) for name, sel in difficulty_buckets(pset).items()}}


def scaling_curve(pset: PuzzleSet, recorded: SolveResult) -> dict[str, list[float]]:
    """Exact accuracy versus the segment cap t = 1..T, for `fixed` and for `q` (from one recorded run)."""
    labels = pset.labels
    T, N = recorded.step_q_halt.shape
    fixed, q_policy = [], []
    halted_at = np.full(N, -1)
    for t in range(T):
        preds = recorded.step_predictions[t]
        fixed.append(float((preds == labels).all(-1).mean()))
        wants = (recorded.step_q_halt[t] > recorded.step_q_continue[t]) & (halted_at < 0)
        halted_at[wants] = t
        chosen = np.where(halted_at[:, None] >= 0, recorded.step_predictions[np.maximum(halted_at, 0), np.arange(N)],
                          preds)
        q_policy.append(float((chosen == labels).all(-1).mean()))
    return {"max_steps": list(range(1, T + 1)), "fixed": fixed, "q": q_policy}


def evaluate(runner: SegmentRunner, pset: PuzzleSet, max_steps: int, policies: tuple[str, ...] = DEFAULT_POLICIES,
             batch_size: int = 256, scan_steps: int | None = None) -> dict[str, Any]:
    """Run each policy on the whole set; return scores per policy plus the scaling curve."""
    report: dict[str, Any] = {"task": pset.task, "split": pset.split, "puzzles": len(pset), "max_steps": max_steps,
                              "policies": {}}
    for name in policies:
        t0 = time.perf_counter()
        res = solve_in_batches(runner, pset.inputs, pset.puzzle_ids, parse_policy(name), max_steps, batch_size)
        report["policies"][name] = {**score(pset, res), "seconds": round(time.perf_counter() - t0, 3)}
    scan = scan_steps or 2 * max_steps
    recorded = solve_in_batches(runner, pset.inputs, pset.puzzle_ids, parse_policy("fixed"), scan, batch_size,
                                record_steps=True)
    report["scaling"] = scaling_curve(pset, recorded)
    return report


def plot_report(report: dict[str, Any], path: str) -> None:
    """PNG: exact accuracy versus max steps (left) and the segments histogram per policy (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    sc = report["scaling"]
    ax1.plot(sc["max_steps"], [100 * a for a in sc["fixed"]], marker="o", label="fixed (always the cap)")
    ax1.plot(sc["max_steps"], [100 * a for a in sc["q"]], marker="s", label="q (early exit)")
    ax1.axvline(report["max_steps"], color="grey", ls="--", lw=1, label="trained halt_max_steps")
    ax1.set_xlabel("segment cap (max steps)")
    ax1.set_ylabel("exact accuracy (%)")
    ax1.set_title(f"{report['task']} {report['split']}: inference-time scaling")
    ax1.legend()
    ax1.grid(alpha=0.3)
    width = 0.8 / max(1, len(report["policies"]))
    for i, (name, pol) in enumerate(report["policies"].items()):
        hist = pol["segments_histogram"]
        xs = np.array(list(hist)) + (i - len(report["policies"]) / 2) * width
        ax2.bar(xs, list(hist.values()), width=width, label=f"{name} (mean {pol['mean_segments']:.2f})")
    ax2.set_xlabel("segments used")
    ax2.set_ylabel("puzzles")
    ax2.set_title("segments per puzzle")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

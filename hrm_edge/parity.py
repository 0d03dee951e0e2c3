"""Compare a candidate runtime's ACT results with the PyTorch reference's (numpy only).

Both sides ran their own closed ACT loop on the same puzzles, so a candidate whose error
grows step by step also halts at other steps: `compare` reports per-step logit errors (over
the puzzles both sides still ran), token, identical-output and halting-step agreement, and, with
labels, accuracy for both and solved agreement: the share of puzzles that both sides solve or both
fail, i.e. whether the candidate solves the same puzzles as the reference. `gate` turns that into
pass/fail against thresholds.

Why reduced precisions are gated on solved agreement rather than identical outputs: on a puzzle the
reference does not solve, its wrong answer is as chaotic as its recurrence (see below), and a
candidate that is wrong differently fails the user no more than the reference does. Measured on the
HRM 6x6 demo (256 val puzzles, 14 unsolved by the reference): the INT8 cpu graph's outputs were
identical on 98.0%, and 3 of its 5 differences were puzzles both sides fail; fp16 differed on one
puzzle, also one both fail. Without labels, identical-output agreement stands in (it is stricter).

The fp64 floor. A trained HRM's recurrence amplifies rounding on the puzzles it does not solve:
over 8 segments of the 6x6 demo, PyTorch fp32 drifts up to ~1.6 logits from the same model run in
fp64, so no fp32 runtime can stay within a fixed absolute distance of PyTorch fp32 on them. Given
the fp64 run of the reference model (`compare(..., fp64=)`), each step also reports the
reference's own error against fp64 (`fp64_floor`) and the candidate's (`fp64_error`);
`fp64_error_ratio`, the largest per-step ratio over the steps at least `FP64_MIN_PUZZLES` puzzles
reach, says how much less exact the candidate is than PyTorch fp32 itself. An export bug (wrong
epsilon, RoPE, mask) shows as a ratio far above 2 from step 1; rounding shows as about 1.

Where the reference's own rounding decides. A puzzle is rounding-stable when PyTorch fp32 and fp64
predict the same tokens at every segment and halt at the same one. With the fp64 run, the identical-output
and halting gates read the stable puzzles only (`rounding_stable_puzzles`, `exact_agreement_stable`,
`halting_agreement_stable`), and each step's fp64 ratio reads the puzzles whose tokens rounding has not
changed yet (fp32 = fp64 through that step; `fp64_puzzles`): past that point the recurrence has
amplified rounding into different answers, and a ratio of two chaotic distances is noise. On the HRM
6x6 demo fp32 and fp64 give the same output and halting step on all 64 val puzzles
(`tests/test_parity.py`). The seeded 27M config (untrained, chaotic) is the other extreme, measured on
32 val puzzles (session 17): fp32 and fp64 first predict a different token at segment 5-13 on every
puzzle, so none is stable; over all puzzles the ONNX fp32 graphs gave identical outputs on 1 and 4 of
32, and the all-rows ratio reached 2.60 at segment 10, where 8% of tokens already differed.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from hrm_edge.act import SolveResult


@dataclass(frozen=True)
class Gates:
    """Pass thresholds. `max_logit_rel` (max over steps of max|Δlogit| / max|reference logit|)
    None = not gated (graphs that return no per-step logits, reduced precisions).
    `max_fp64_error_ratio`: gated where the metrics carry `fp64_error_ratio`."""

    max_logit_rel: float | None = 1e-5
    logit_rel_first_step: bool = False  # bound the first segment's logits only (see `VERIFY_GATES`)
    max_fp64_error_ratio: float | None = None
    min_exact_agreement: float | None = 1.0  # identical outputs
    min_solved_agreement: float | None = None  # same puzzles solved (needs labels; else identical outputs)
    min_halting_agreement: float = 1.0
    max_accuracy_drop: float = 0.0


# Documented defaults per precision (README "Parity gates"). The fp32 logit gate is relative to
# the logits' scale: trained HRMs emit logits of magnitude ~100, where fp32 rounding alone (torch
# fp32 against torch fp64) already differs by 1e-4 to 3e-4 absolute.
DEFAULT_GATES: dict[str, Gates] = {
    "fp32": Gates(max_logit_rel=1e-5, max_fp64_error_ratio=2.0, min_exact_agreement=1.0, min_halting_agreement=1.0,
                  max_accuracy_drop=0.0),
    "fp16": Gates(max_logit_rel=None, min_exact_agreement=None, min_solved_agreement=0.99, min_halting_agreement=0.95,
                  max_accuracy_drop=0.005),
    "int8": Gates(max_logit_rel=None, min_exact_agreement=None, min_solved_agreement=0.99, min_halting_agreement=0.95,
                  max_accuracy_drop=0.005),
}


# `verify` on a device has no fp64 reference to measure the recurrence's own drift against, so its
# fp32 logit bound covers the first segment, where a graph's arithmetic is compared before the
# recurrence amplifies rounding. On the HRM demo a fresh export's portable fp32 graph is 1.6e-5 from
# the golden logits by step 8 (over the all-steps bound of 1e-5) while matching every output and
# halting step. After the first segment it gates the same puzzles solved and the same halting step on
# every golden puzzle; identical outputs are gated only where the golden set has no labels (the solved
# gate's fallback) and reported otherwise: on a puzzle the model does not solve, the output after 16
# chaotic segments depends on rounding. A fresh export of the seeded 27M config (it solves nothing)
# gave identical outputs on 1 of 16 golden puzzles with the first segment 2.0e-6 away (session 16).
VERIFY_GATES: dict[str, Gates] = {**DEFAULT_GATES, "fp32": replace(
    DEFAULT_GATES["fp32"], logit_rel_first_step=True, min_exact_agreement=None, min_solved_agreement=1.0)}

# Steps where fewer puzzles still run are reported but not gated: a ratio of two maxima over one or
# two chaotic trajectories is noise (TRM attention demo: 4.45 at step 5 with 2 puzzles left, at most
# 1.66 over steps 1-3 with 256, 105 and 29).
FP64_MIN_PUZZLES = 16

# Smallest fp64 floor a ratio divides by (logits): where PyTorch fp32 equals fp64 almost exactly,
# a candidate 2e-6 away is not "twice as wrong".
FP64_FLOOR_MIN = 1e-5


def golden_result(ref: dict[str, np.ndarray]) -> SolveResult:
    """A bundle's golden run (`Bundle.reference()`) as a SolveResult; per-step logits beyond each
    puzzle's halting step masked (NaN)."""
    logits = ref["step_logits"].copy()
    T = logits.shape[0]
    after = np.arange(1, T + 1)[:, None] > ref["steps"][None, :]
    logits[after] = np.nan
    q_halt = np.where(after, np.nan, ref["step_q_halt"])
    return SolveResult(predictions=ref["predictions"], steps=ref["steps"], q_halt=np.zeros(len(ref["steps"])),
                       q_continue=np.zeros(len(ref["steps"])), step_predictions=ref["step_predictions"],
                       step_q_halt=q_halt, step_q_continue=ref["step_q_continue"], step_logits=logits)


def compare(reference: SolveResult, candidate: SolveResult, labels: np.ndarray | None,
            fp64: SolveResult | None = None) -> dict[str, Any]:
    """Metrics of candidate vs reference on N puzzles; with `fp64` (the reference model run in
    float64, `record_logits`), the fp64 floor metrics too (see module docstring)."""
    n = len(reference.steps)
    out: dict[str, Any] = {"puzzles": n}
    same_rows = (reference.predictions == candidate.predictions).all(-1)
    out["token_agreement"] = float((reference.predictions == candidate.predictions).mean())
    out["exact_agreement"] = float(same_rows.mean())
    out["halting_agreement"] = float((reference.steps == candidate.steps).mean())
    # per puzzle: the leading segments at which rounding has not changed the reference's tokens
    settled = np.full(n, np.iinfo(np.int32).max)
    if fp64 is not None:
        stable = (reference.predictions == fp64.predictions).all(-1) & (reference.steps == fp64.steps)
        if reference.step_predictions is not None and fp64.step_predictions is not None:
            T = min(len(reference.step_predictions), len(fp64.step_predictions))
            differ = (reference.step_predictions[:T] != fp64.step_predictions[:T]).any(-1)  # [T, N]
            settled = np.where(differ.any(0), differ.argmax(0), T)
            stable &= ~differ.any(0)
        out["rounding_stable_puzzles"] = int(stable.sum())
        if stable.any():  # else nothing the reference decides itself: the gates pass empty (see `gate`)
            out["exact_agreement_stable"] = float(same_rows[stable].mean())
            out["halting_agreement_stable"] = float((reference.steps == candidate.steps)[stable].mean())
    out["mean_steps_reference"] = float(reference.steps.mean())
    out["mean_steps_candidate"] = float(candidate.steps.mean())
    if labels is not None:
        ref_ok = (reference.predictions == labels).all(-1)
        cand_ok = (candidate.predictions == labels).all(-1)
        ref_acc, cand_acc = float(ref_ok.mean()), float(cand_ok.mean())
        out.update(accuracy_reference=ref_acc, accuracy_candidate=cand_acc, accuracy_drop=ref_acc - cand_acc,
                   solved_agreement=float((ref_ok == cand_ok).mean()))
    per_step: list[dict[str, float | int]] = []
    if reference.step_logits is not None and candidate.step_logits is not None:
        T = min(len(reference.step_logits), len(candidate.step_logits))
        for t in range(T):
            a, b = reference.step_logits[t], candidate.step_logits[t]
            both = ~np.isnan(a).any(axis=(1, 2)) & ~np.isnan(b).any(axis=(1, 2))
            if not both.any():
                break
            diff = np.abs(a[both] - b[both])
            scale = np.abs(a[both]).max()
            entry = {"step": t + 1, "puzzles": int(both.sum()), "max_abs": float(diff.max()),
                     "mean_abs": float(diff.mean()), "rel": float(diff.max() / max(scale, 1e-12))}
            if fp64 is not None and fp64.step_logits is not None and t < len(fp64.step_logits):
                exact = fp64.step_logits[t]
                rows = both & ~np.isnan(exact).any(axis=(1, 2)) & (settled > t)
                if rows.any():
                    floor = float(np.abs(a[rows] - exact[rows]).max())
                    error = float(np.abs(b[rows] - exact[rows]).max())
                    entry.update(fp64_floor=floor, fp64_error=error, fp64_ratio=error / max(floor, FP64_FLOOR_MIN),
                                 fp64_puzzles=int(rows.sum()), fp64_gated=bool(rows.sum() >= min(FP64_MIN_PUZZLES, n)))
            per_step.append(entry)
        out["max_logit_abs"] = max((s["max_abs"] for s in per_step), default=None)
        out["max_logit_rel"] = max((s["rel"] for s in per_step), default=None)
        out["first_step_logit_rel"] = per_step[0]["rel"] if per_step else None
        ratios = [s["fp64_ratio"] for s in per_step if s.get("fp64_gated")]
        out["fp64_error_ratio"] = max(ratios) if ratios else None
    else:
        out["max_logit_abs"] = out["max_logit_rel"] = out["first_step_logit_rel"] = out["fp64_error_ratio"] = None
    if reference.step_predictions is not None and candidate.step_predictions is not None:
        T = min(len(reference.step_predictions), len(candidate.step_predictions))
        for t, entry in enumerate(per_step[:T]):
            both = ~np.isnan(reference.step_q_halt[t]) & ~np.isnan(candidate.step_q_halt[t])
            entry["token_agreement"] = float(
                (reference.step_predictions[t][both] == candidate.step_predictions[t][both]).mean())
    out["per_step"] = per_step
    return out


def solved_metric(metrics: dict[str, Any]) -> str:
    """The agreement the solved gate reads: "solved_agreement" where labels gave it, else
    "exact_agreement" (identical outputs, the stricter measure)."""
    return "solved_agreement" if metrics.get("solved_agreement") is not None else "exact_agreement"


def failed_already(reference: SolveResult, predictions: np.ndarray, steps: np.ndarray, labels: np.ndarray | None,
                   total: int, gates: Gates) -> str | None:
    """The agreement gate a candidate run over `total` puzzles can no longer pass, or None.

    predictions int64 [n, S] and steps [n]: the candidate's results on the first n of the `total`
    puzzles (reference: all of them; labels [total, S] or None). An agreement gate with threshold t
    passes when at most (1 - t) * total puzzles disagree, and disagreements only accumulate, so once
    the first n puzzles hold more, the whole run fails that gate whatever the rest does. The decision
    is exact: a run stopped here fails exactly where the complete run would have failed. Accuracy
    drop is not decided early (later puzzles can make it up)."""
    n = len(steps)
    same = (reference.predictions[:n] == predictions).all(-1)
    counts = {"exact_agreement": int((~same).sum()),
              "halting_agreement": int((reference.steps[:n] != steps).sum())}
    if labels is not None:
        ref_ok = (reference.predictions[:n] == labels[:n]).all(-1)
        counts["solved_agreement"] = int((ref_ok != (predictions == labels[:n]).all(-1)).sum())
    # the solved gate reads identical outputs where there are no labels (`solved_metric`)
    thresholds = [("exact_agreement", gates.min_exact_agreement), ("halting_agreement", gates.min_halting_agreement),
                  ("solved_agreement" if labels is not None else "exact_agreement", gates.min_solved_agreement)]
    for name, t in thresholds:
        if t is not None and counts[name] > np.floor((1.0 - t) * total + 1e-9):
            return name
    return None


def gate(metrics: dict[str, Any], gates: Gates) -> list[dict[str, Any]]:
    """One record per gate: name, value, threshold, passed. Where the metrics carry the fp64 run's
    `rounding_stable_puzzles`, the identical-output and halting gates read those puzzles only (module
    docstring; none stable: value None, passed)."""
    checks: list[dict[str, Any]] = []

    def add(name: str, value: float | None, threshold: float, ok: bool) -> None:
        checks.append({"name": name, "value": value, "threshold": threshold, "passed": bool(ok)})

    def agreement(name: str, threshold: float) -> None:
        if "rounding_stable_puzzles" in metrics:
            name = f"{name}_stable"
            v = metrics.get(name)
            add(name, v, threshold, v is None or v >= threshold)
        else:
            add(name, metrics[name], threshold, metrics[name] >= threshold)

    if gates.max_logit_rel is not None:
        key = "first_step_logit_rel" if gates.logit_rel_first_step else "max_logit_rel"
        v = metrics.get(key)
        add(key, v, gates.max_logit_rel, v is not None and v <= gates.max_logit_rel)
    ratio = metrics.get("fp64_error_ratio")
    if gates.max_fp64_error_ratio is not None and ratio is not None:
        add("fp64_error_ratio", ratio, gates.max_fp64_error_ratio, ratio <= gates.max_fp64_error_ratio)
    if gates.min_exact_agreement is not None:
        agreement("exact_agreement", gates.min_exact_agreement)
    if gates.min_solved_agreement is not None:
        name = solved_metric(metrics)
        add(name, metrics[name], gates.min_solved_agreement, metrics[name] >= gates.min_solved_agreement)
    agreement("halting_agreement", gates.min_halting_agreement)
    if "accuracy_drop" in metrics:
        add("accuracy_drop", metrics["accuracy_drop"], gates.max_accuracy_drop,
            metrics["accuracy_drop"] <= gates.max_accuracy_drop + 1e-12)
    return checks


def _prediction_hash(prediction: np.ndarray) -> str:
    """sha256 (first 16 hex digits) of one puzzle's predicted tokens, as int64."""
    return hashlib.sha256(np.ascontiguousarray(prediction, np.int64).tobytes()).hexdigest()[:16]


def host_run(result: SolveResult) -> dict[str, Any]:
    """What pins a graph's run on the golden puzzles at export, for `verify` to hold a device to: each
    puzzle's halting step and the sha256 (first 16 hex digits) of its predictions."""
    return {"steps": [int(s) for s in result.steps], "predictions": [_prediction_hash(p) for p in result.predictions]}


def host_checks(result: SolveResult, pinned: dict[str, Any], labels: np.ndarray | None = None
                ) -> list[dict[str, Any]]:
    """Check records of a device's run against the export host's (`host_run`) on the golden puzzles.
    Gated (share 1): the device solves exactly the puzzles the host solved (`labels` [N, L]; without
    labels: identical outputs). Reported (threshold None): the share of identical halting steps, and of
    identical outputs where labels exist. As in the INT8 gate, a puzzle both get wrong may be wrong in
    another way, and halting is a rate that 16 puzzles cannot measure (`verify` re-runs the INT8 gate on
    the export gate's puzzles for that). Measured, the maze demo's per-row graph on ONNX Runtime 1.20.1
    against its 1.32 export host: another wrong answer on 1 of the 16 golden mazes (the fp32 reference
    fails it too), every solved maze and halting step the same; on 256 mazes 3.5% halt elsewhere."""
    got = host_run(result)
    n = len(pinned["steps"])
    if len(got["steps"]) != n or (labels is not None and len(labels) != n):
        return [{"name": "host_puzzles", "value": len(got["steps"]), "threshold": n, "passed": False}]
    same_out = sum(a == b for a, b in zip(got["predictions"], pinned["predictions"], strict=True)) / n
    same_halt = sum(a == b for a, b in zip(got["steps"], pinned["steps"], strict=True)) / n
    halting = {"name": "host_halting_agreement", "value": same_halt, "threshold": None, "passed": True}
    if labels is None:
        return [{"name": "host_identical_outputs", "value": same_out, "threshold": 1.0, "passed": same_out == 1.0},
                halting]
    answers = [_prediction_hash(label) for label in labels]
    same_solved = sum((a == want) == (b == want) for a, b, want in zip(got["predictions"], pinned["predictions"],
                                                                        answers, strict=True)) / n
    return [{"name": "host_solved_agreement", "value": same_solved, "threshold": 1.0, "passed": same_solved == 1.0},
            halting, {"name": "host_identical_outputs", "value": same_out, "threshold": None, "passed": True}]


def junit_xml(suite: str, checks: list[dict[str, Any]]) -> str:
    """A JUnit XML report: one testcase per gate, failures carry value and threshold."""
    failures = sum(not c["passed"] for c in checks)
    root = ET.Element("testsuite", name=suite, tests=str(len(checks)), failures=str(failures))
    for c in checks:
        case = ET.SubElement(root, "testcase", classname=suite, name=c["name"])
        if not c["passed"]:
            ET.SubElement(case, "failure", message=f"{c['name']} = {c['value']} (threshold {c['threshold']})")
    return ET.tostring(root, encoding="unicode")


def plot_parity(report: dict[str, Any], path: str) -> None:
    """PNG: per-step logit error (log scale) and the agreement metrics against their gates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = report["metrics"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [s["step"] for s in m["per_step"]]
    if steps:
        ax1.semilogy(steps, [max(s["max_abs"], 1e-12) for s in m["per_step"]], marker="o", label="max |Δlogit|")
        ax1.semilogy(steps, [max(s["mean_abs"], 1e-12) for s in m["per_step"]], marker="s", label="mean |Δlogit|")
        floor = [(s["step"], s["fp64_floor"], s["fp64_error"]) for s in m["per_step"] if "fp64_floor" in s]
        if floor:
            ax1.semilogy([f[0] for f in floor], [max(f[1], 1e-12) for f in floor], "k--",
                         label="reference fp32 vs fp64 (floor)")
            ax1.semilogy([f[0] for f in floor], [max(f[2], 1e-12) for f in floor], "k:", marker="^",
                         label="candidate vs fp64")
        ax1.legend()
    else:
        ax1.text(0.5, 0.5, "graph returns no per-step logits", ha="center", va="center", transform=ax1.transAxes)
    ax1.set_xlabel("ACT step")
    ax1.set_title(f"{report['candidate']} vs {report['reference']}")
    ax1.grid(alpha=0.3)
    names = ["token_agreement", "exact_agreement", "halting_agreement"]
    values = [100 * m[k] for k in names]
    passed = {c["name"]: c["passed"] for c in report["gates"]}
    colors = [{True: "tab:green", False: "tab:red"}.get(passed.get(n), "tab:grey") for n in names]
    ax2.bar([n.replace("_", "\n") for n in names], values, color=colors)
    ax2.set_ylim(min([*values, 90]) - 1, 100.5)
    ax2.set_ylabel("%")
    ax2.set_title(f"{m['puzzles']} puzzles, closed loop")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def with_overrides(base: Gates, logits_available: bool, **overrides: float | None) -> Gates:
    """`base` with the non-None overrides applied; no logit gate where the graph returns no logits."""
    values = {**asdict(base), **{k: v for k, v in overrides.items() if v is not None}}
    if not logits_available:
        values["max_logit_rel"] = values["max_fp64_error_ratio"] = None
    return Gates(**values)

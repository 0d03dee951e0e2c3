"""Issue 21, session 12: the noise floor of the INT8 gates.

How much perturbation can a trained demo's closed ACT loop take and still pass the INT8 parity gates
(`hrm_edge.parity.DEFAULT_GATES["int8"]`) against its own PyTorch fp32 run? Every Linear (every MatMul
site the INT8 graph quantizes: qkv / o, gate_up / down, the token-MLP's, lm_head, q_head) gets
Gaussian noise scaled to its own output, per token:

    y <- y + eps * rms(y over the last dim) * N(0, 1)        (fresh noise every call, fixed seed per run)

so eps is the relative L2 error each call adds, the same kind of quantity as an INT8 site's relative
output error. Variants: noise on the Linear INPUT (eps relative to the input's rms), noise on q_head
only (does halting alone explain the failures?), and bf16 under torch.autocast (a real perturbation).

Closed loop: the checkpoint's validation puzzles (calib_data/<task> val, the set `hrm-edge parity` and
the export's INT8 gate read; the first --puzzles of them), policy `q`, max_steps = halt_max_steps,
batches of 64; the reference, comparison and gates are `hrm_edge.quant.search.ClosedLoop`'s
(`evaluate_runner` with a `TorchSegmentRunner` on the perturbed model). eps = 0 goes through the same
hooks and must reproduce the reference bit for bit (asserted).

INT8 for comparison: per-site relative output error of the all-int8 graph (`sites[].error_full` of an
export's quant_report.json, both flavours: cpu = dynamic u8 activations, tensorrt = static s8). That
figure is ACCUMULATED over one segment (the site's output in the all-int8 graph against the fp32 graph
on the same segment inputs), so the noise's accumulated per-site error is measured the same way
(open loop, one segment from the reference carry of every step, mean over steps) and the "equivalent
eps" is the eps whose median accumulated site error equals INT8's.

    python scripts/int8_noise_floor.py [--out bench/latest/session12-noise-floor] [--demos a,b] [--puzzles 256]
                                       [--int8-bundles DIR]

Writes OUT/noise_floor.json (every run; rewritten after each one), OUT/<demo>.png and OUT/summary.md
(the summary table and every run); `--open-loop-only` redoes just the open-loop part of demos already in
the JSON, `--demos ''` just the plots and summary.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hrm_edge.act import HaltingPolicy, solve_in_batches
from hrm_edge.model.checkpoint import load_checkpoint
from hrm_edge.model.hrm import CastedLinear
from hrm_edge.model.runner import TorchSegmentRunner
from hrm_edge.parity import DEFAULT_GATES, compare, gate
from hrm_edge.puzzles.datasets import calib_data_dir, load_puzzle_set
from hrm_edge.quant.fakequant import linear_calls
from hrm_edge.quant.search import ClosedLoop

DEMOS = ("sudoku6-demo", "trm-sudoku6-demo", "trm-sudoku6-att-demo", "trm-maze11-demo", "trm-sudoku-demo")
EPS = (0.0, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
SEEDS = (0, 1)
INPUT_EPS = (1e-3, 1e-2)
Q_HEAD_EPS = (1e-3, 1e-2, 3e-2)
EXTRA_EPS = (1e-1, 3e-1)  # run only while both seeds still pass at the grid's previous eps
GATES = DEFAULT_GATES["int8"]
BATCH = 64  # `hrm-edge parity`'s default batch size
OPEN_LOOP_PUZZLES = 64
# The INT8 comparison reads `--int8-bundles DIR`: DIR/<demo> is an `hrm-edge export --int8 --int8-target cpu
# --int8-target tensorrt` bundle of the ORIGINAL checkpoint (its source sha256 is checked); its
# quant_report.json has every site's `error_full`. Session 12's figures came from the session 10-11
# exports (their paths are in noise_floor.json, demos.<demo>.int8.report).
METRICS = ("puzzles", "solved_agreement", "halting_agreement", "exact_agreement", "token_agreement",
           "accuracy_reference", "accuracy_candidate", "accuracy_drop", "mean_steps_reference", "mean_steps_candidate")


# ----------------------------------------------------------------------------------------------
# perturbations


def add_relative_noise(t: torch.Tensor, eps: float, gen: torch.Generator) -> torch.Tensor:
    """t + eps * rms(t over the last dim) * N(0, 1), in t's dtype (noise drawn in fp32 from `gen`).
    The relative L2 error of the result, over any set of rows, is eps in expectation."""
    rms = t.float().pow(2).mean(-1, keepdim=True).sqrt()
    noise = torch.randn(t.shape, generator=gen, dtype=torch.float32, device=t.device)
    return (t.float() + eps * rms * noise).to(t.dtype)


def linears(model: torch.nn.Module, only: str | None = None) -> list[tuple[str, torch.nn.Module]]:
    """Every Linear-like module (`CastedLinear`: the INT8 graph's weight MatMul sites), or just `only`."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, CastedLinear) and only in (None, n)]
    if not found:
        raise KeyError(f"no CastedLinear {only!r} in the model")
    return found


@contextlib.contextmanager
def perturbed(model: torch.nn.Module, eps: float, seed: int, where: str = "output",
              only: str | None = None) -> Iterator[torch.nn.Module]:
    """Relative Gaussian noise on every Linear's output (where="output") or input (where="input"),
    or on one module's (`only`, e.g. "inner.q_head"), fresh on every call, from a generator seeded
    once for the block."""
    if where not in ("output", "input"):
        raise ValueError(f"where must be 'output' or 'input', got {where!r}")
    gen = torch.Generator().manual_seed(seed)
    handles = []
    for _, module in linears(model, only):
        if where == "output":
            handles.append(module.register_forward_hook(lambda m, args, y: add_relative_noise(y, eps, gen)))
        else:
            handles.append(module.register_forward_pre_hook(
                lambda m, args: (add_relative_noise(args[0], eps, gen), *args[1:])))
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


# ----------------------------------------------------------------------------------------------
# closed loop


def closed_loop(model: torch.nn.Module, tokens: np.ndarray, ids: np.ndarray, labels: np.ndarray,
                policy: HaltingPolicy, max_steps: int) -> ClosedLoop:
    """The reference rollout (PyTorch fp32, steps recorded) and the ClosedLoop gating against it."""
    ref = solve_in_batches(TorchSegmentRunner(model), tokens, ids, policy, max_steps, BATCH, record_steps=True)
    inner = model.inner
    return ClosedLoop(tokens, ids, labels, ref, inner.H_init.detach().float().numpy(),
                      inner.L_init.detach().float().numpy(), model.config.total_len, policy, max_steps, GATES,
                      BATCH, 1)


def summary(ev: dict[str, Any]) -> dict[str, Any]:
    m = ev["metrics"]
    return {**{k: m.get(k) for k in METRICS}, "passed": ev["passed"],
            "failed_gates": [c["name"] for c in ev["gates"] if not c["passed"]], "seconds": ev["seconds"]}


def assert_exact(loop: ClosedLoop, model: torch.nn.Module) -> dict[str, Any]:
    """eps = 0 through the hooks: the same rollout bit for bit (predictions, steps, every step's q values)."""
    with perturbed(model, 0.0, 0):
        got = solve_in_batches(TorchSegmentRunner(model), loop.tokens, loop.puzzle_ids, loop.policy, loop.max_steps,
                               BATCH, record_steps=True)
    ref = loop.reference
    for name in ("predictions", "steps", "step_q_halt", "step_q_continue"):
        assert np.array_equal(getattr(got, name), getattr(ref, name), equal_nan=True), f"eps=0 changed {name}"
    metrics = compare(ref, got, loop.labels)
    checks = gate(metrics, GATES)
    return summary({"metrics": metrics, "gates": checks, "passed": all(c["passed"] for c in checks), "seconds": 0})


# ----------------------------------------------------------------------------------------------
# open loop: accumulated per-site error in one segment (what quant_report's error_full measures)


@torch.inference_mode()
def reference_carries(model: torch.nn.Module, tokens: torch.Tensor, ids: torch.Tensor, steps: int
                      ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """(input embedding, the clean model's incoming carry (z_H, z_L) of segments 1..steps)."""
    x = model.embed(tokens, ids)
    z_H, z_L = model.initial_carry(tokens.shape[0], tokens.device)
    carries = []
    for _ in range(steps):
        carries.append((z_H, z_L))
        z_H, z_L = model.reason(z_H, z_L, x)
    return x, carries


@torch.inference_mode()
def segment_outputs(model: torch.nn.Module, x: torch.Tensor, z_H: torch.Tensor, z_L: torch.Tensor
                    ) -> list[torch.Tensor]:
    """Every Linear call's output of one segment (reason + heads), in call order."""
    out: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda m, a, y: out.append(y.float())) for _, m in linears(model)]
    try:
        z_H, _ = model.reason(z_H, z_L, x)
        model.heads(z_H)
    finally:
        for h in handles:
            h.remove()
    return out


def site_errors(model: torch.nn.Module, x: torch.Tensor, carries: list, perturb: Any) -> np.ndarray:
    """float [n_calls]: per Linear call, the relative L2 error of its whole output tensor, perturbed vs
    clean segment on the same incoming carry, mean over the segments. `perturb`: a context manager
    factory applied around the perturbed segment."""
    table = []
    for z_H, z_L in carries:
        clean = segment_outputs(model, x, z_H, z_L)
        with perturb():
            noisy = segment_outputs(model, x, z_H, z_L)
        table.append([float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-12))
                      for a, b in zip(noisy, clean, strict=True)])
    return np.asarray(table).mean(0)


def error_stats(errors: np.ndarray) -> dict[str, float]:
    return {"median": float(np.median(errors)), "max": float(np.max(errors)), "sites": len(errors)}


def int8_site_errors(bundle: Path) -> dict[str, Any]:
    """Per flavour: median / max of `error_full` over the weight sites of an all-int8 export, the
    first site's (a purely local rounding error: its input is the same in both graphs), and the
    search's closed-loop trial of the all-int8 graph on the calibration puzzles (when it ran; it may
    have stopped early at a certain failure: `stopped_after`)."""
    report = json.loads((bundle / "quant_report.json").read_text())
    manifest = json.loads((bundle / "manifest.json").read_text())
    out: dict[str, Any] = {"report": str(bundle / "quant_report.json"),
                           "source_sha256": manifest["source_checkpoint"]["sha256"]}
    for target, entry in report["targets"].items():
        sites = [s for s in entry["sites"] if s["kind"] == "weight"]
        errors = np.array([s["error_full"] for s in sites])
        first = {"label": sites[0]["label"], "error": sites[0]["error_full"]}
        trial = next((t for t in entry.get("search", {}).get("trials", []) if not t["excluded"]), None)
        out[target] = {**error_stats(errors), "first_site": first,
                       "bmm_sites": sum(s["kind"] == "bmm" for s in entry["sites"]),
                       "all_int8_calib_trial": trial, "calibration": report["calibration_split"]}
    return out


def equivalent_eps(curve: list[tuple[float, float]], target: float) -> float | None:
    """The eps whose median accumulated site error equals `target`, log-log interpolated on
    (eps, median error) points; None outside the measured range."""
    pts = sorted((e, m) for e, m in curve if e > 0 and m > 0)
    for (e0, m0), (e1, m1) in itertools.pairwise(pts):
        if m0 <= target <= m1:
            if m1 == m0:
                return e0
            f = (np.log(target) - np.log(m0)) / (np.log(m1) - np.log(m0))
            return float(np.exp(np.log(e0) + f * (np.log(e1) - np.log(e0))))
    return None


# ----------------------------------------------------------------------------------------------
# one demo


def sha256(path: Path) -> str:
    from hrm_edge.files import sha256_file

    return sha256_file(path)


def run_demo(name: str, puzzles: int, log: Any, save: Any, into: dict[str, Any], int8_bundles: Path | None
             ) -> dict[str, Any]:
    """Every run of one demo, recorded into `into[name]` as it goes (`save` after each)."""
    ckpt = Path("checkpoints") / name / "model.pt"
    ck = load_checkpoint(ckpt)
    model = ck.model.set_compute_dtype("float32").eval()
    pset = load_puzzle_set(calib_data_dir(ck.task), split="val")
    n = min(puzzles, len(pset))
    tokens, ids, labels = pset.inputs[:n], pset.puzzle_ids[:n], pset.labels[:n]
    policy, max_steps = HaltingPolicy("q"), int(ck.config.halt_max_steps)
    calls = linear_calls(model)
    rec: dict[str, Any] = {"checkpoint": str(ckpt), "sha256": sha256(ckpt), "task": ck.task, "family":
                           ck.config.family, "data": f"{calib_data_dir(ck.task)} val[:{n}] of {len(pset)}",
                           "policy": str(policy), "max_steps": max_steps, "batch_size": BATCH,
                           "linear_calls_per_segment": int(sum(calls.values())), "linear_modules": len(calls),
                           "runs": []}
    into[name] = rec
    t0 = time.perf_counter()
    loop = closed_loop(model, tokens, ids, labels, policy, max_steps)
    ref = loop.reference
    rec["reference"] = {"accuracy": float((ref.predictions == labels).all(-1).mean()),
                        "mean_steps": float(ref.steps.mean()), "seconds": round(time.perf_counter() - t0, 1)}
    log(f"{name}: {n} puzzles, {rec['linear_calls_per_segment']} Linear calls/segment, reference accuracy "
        f"{rec['reference']['accuracy']:.3f}, mean steps {rec['reference']['mean_steps']:.2f} "
        f"({rec['reference']['seconds']} s)")

    def add(variant: str, eps: float | None, seed: int | None, ev: dict[str, Any]) -> None:
        rec["runs"].append({"variant": variant, "eps": eps, "seed": seed, **ev})
        verdict = "PASS" if ev["passed"] else "FAIL " + ",".join(ev["failed_gates"])
        log(f"  {variant:>13} eps {eps!s:>6} seed {seed}: solved {ev['solved_agreement']:.4f} halting "
            f"{ev['halting_agreement']:.4f} exact {ev['exact_agreement']:.4f} drop {ev['accuracy_drop']:+.4f} "
            f"steps {ev['mean_steps_candidate']:.2f} {verdict} ({ev['seconds']} s)")
        save()

    add("output", 0.0, None, assert_exact(loop, model))
    runner = TorchSegmentRunner(model)
    for eps in EPS[1:] + EXTRA_EPS:
        if eps in EXTRA_EPS and not all(r["passed"] for r in rec["runs"][-len(SEEDS):]):
            break  # the grid's last eps failed: no need to go further
        for seed in SEEDS:
            with perturbed(model, eps, seed):
                add("output", eps, seed, summary(loop.evaluate_runner(runner)))
    for eps in INPUT_EPS:
        for seed in SEEDS:
            with perturbed(model, eps, seed, where="input"):
                add("input", eps, seed, summary(loop.evaluate_runner(runner)))
    for eps in Q_HEAD_EPS:
        for seed in SEEDS:
            with perturbed(model, eps, seed, only="inner.q_head"):
                add("q_head-only", eps, seed, summary(loop.evaluate_runner(runner)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        add("bf16-autocast", None, None, summary(loop.evaluate_runner(runner)))

    open_loop_part(name, rec, model, tokens, ids, max_steps, int8_bundles)
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    curve = rec["open_loop"]["noise"]
    log(f"{name}: open-loop median site error " + ", ".join(f"{c['eps']:g}->{c['median']:.3g}" for c in curve)
        + f"; bf16 {rec['open_loop']['bf16-autocast']['median']:.3g}; int8 "
        + ", ".join(f"{t} {rec['int8'][t]['median']:.3g} (eps~{rec['int8'][t]['equivalent_eps']})"
                    for t in ("cpu", "tensorrt") if t in rec.get("int8", {}))
        + f" ({rec['seconds']} s)")
    save()
    return rec


def open_loop_part(name: str, rec: dict[str, Any], model: torch.nn.Module, tokens: np.ndarray, ids: np.ndarray,
                   max_steps: int, int8_bundles: Path | None) -> None:
    """rec["open_loop"]: the noise's (and bf16's) accumulated per-site error, as error_full measures INT8's;
    rec["int8"]: the site errors of the INT8 export int8_bundles/<name> (if there) and their equivalent eps."""
    k = min(OPEN_LOOP_PUZZLES, len(tokens))
    x, carries = reference_carries(model, torch.from_numpy(tokens[:k]), torch.from_numpy(ids[:k]), max_steps)
    curve = []
    for eps in EPS[1:] + EXTRA_EPS:
        errs = site_errors(model, x, carries, lambda e=eps: perturbed(model, e, 0))
        curve.append({"eps": eps, **error_stats(errs)})
    bf16 = site_errors(model, x, carries, lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    rec["open_loop"] = {"puzzles": k, "segments": max_steps, "noise": curve, "bf16-autocast": error_stats(bf16)}
    points = [(c["eps"], c["median"]) for c in curve]
    bundle = None if int8_bundles is None else int8_bundles / name
    if bundle is not None and (bundle / "quant_report.json").is_file():
        int8 = int8_site_errors(bundle)
        int8["same_checkpoint"] = int8["source_sha256"] == rec["sha256"]
        for target in ("cpu", "tensorrt"):
            if target in int8:
                int8[target]["equivalent_eps"] = equivalent_eps(points, int8[target]["median"])
        rec["int8"] = int8
    rec["bf16_equivalent_eps"] = equivalent_eps(points, rec["open_loop"]["bf16-autocast"]["median"])


# ----------------------------------------------------------------------------------------------
# summaries


def largest_passing(rec: dict[str, Any]) -> tuple[float | None, list[float]]:
    """(largest eps of the grid at and below which every output-noise run passed, every seed;
    the eps where both seeds passed)."""
    by_eps: dict[float, list[bool]] = {}
    for r in rec["runs"]:
        if r["variant"] == "output":
            by_eps.setdefault(r["eps"], []).append(r["passed"])
    both = [e for e in sorted(by_eps) if all(by_eps[e])]
    largest = None
    for e in sorted(by_eps):
        if not all(by_eps[e]):
            break
        largest = e
    return largest, both


def halting_at(rec: dict[str, Any], eps: float, variant: str = "output") -> list[float]:
    return [r["halting_agreement"] for r in rec["runs"] if r["variant"] == variant and r["eps"] == eps]


def plot(rec: dict[str, Any], name: str, path: Path) -> None:
    """Halting and solved agreement vs eps (log x), gates as horizontal lines, INT8 median site errors
    (solid) and their equivalent eps (dotted) as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    styles = {"output": ("o-", "tab:blue"), "input": ("s", "tab:orange"), "q_head-only": ("^", "tab:green")}
    for ax, key, threshold in ((axes[0], "halting_agreement", GATES.min_halting_agreement),
                               (axes[1], "solved_agreement", GATES.min_solved_agreement)):
        for variant, (marker, color) in styles.items():
            for seed in SEEDS:
                pts = [(r["eps"], r[key]) for r in rec["runs"]
                       if r["variant"] == variant and r["seed"] == seed and r["eps"]]
                if pts:
                    ax.semilogx(*zip(*pts, strict=True), marker, color=color, alpha=0.9 if seed == 0 else 0.5,
                                label=f"{variant} noise, seed {seed}")
        bf16 = next((r for r in rec["runs"] if r["variant"] == "bf16-autocast"), None)
        if bf16 is not None and rec.get("bf16_equivalent_eps"):
            ax.semilogx([rec["bf16_equivalent_eps"]], [bf16[key]], "D", color="tab:purple",
                        label="bf16 autocast (at its equivalent eps)")
        ax.axhline(threshold, color="k", ls="--", lw=1, label=f"int8 gate {threshold}")
        for target, color in (("cpu", "tab:red"), ("tensorrt", "tab:brown")):
            info = rec.get("int8", {}).get(target)
            if info:
                ax.axvline(info["median"], color=color, lw=1.2, label=f"int8 {target}: median site error_full")
                if info.get("equivalent_eps"):
                    ax.axvline(info["equivalent_eps"], color=color, lw=1.2, ls=":",
                               label=f"int8 {target}: equivalent eps")
                    trial = info.get("all_int8_calib_trial")
                    if trial is not None and trial.get(key) is not None:
                        ran = f", first {trial['stopped_after']}" if trial.get("stopped_after") else ""
                        ax.semilogx([info["equivalent_eps"]], [trial[key]], "X", color=color, ms=9,
                                    label=f"all-int8 {target} graph (calib puzzles{ran}; quant report)")
        ax.set_xlabel("eps (relative noise per Linear call)")
        ax.set_ylabel(key.replace("_", " "))
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{name}: closed loop vs PyTorch fp32, {rec['runs'][0]['puzzles']} val puzzles, policy q")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def first_failure(rec: dict[str, Any]) -> dict[str, Any] | None:
    """The smallest eps where an output-noise run failed: {eps, gates (failed, over both seeds)}."""
    failed = sorted((r["eps"], r["failed_gates"]) for r in rec["runs"] if r["variant"] == "output" and not r["passed"])
    if not failed:
        return None
    eps = failed[0][0]
    return {"eps": eps, "gates": sorted({g for e, gates in failed if e == eps for g in gates})}


def verdict(rec: dict[str, Any]) -> str:
    """One plain sentence: where the gates give way under noise, against INT8's equivalent eps."""
    largest, _ = largest_passing(rec)
    fail = first_failure(rec)
    int8 = rec.get("int8", {})
    parts = []
    if fail is None:
        parts.append(f"passes every eps measured (up to {max(r['eps'] for r in rec['runs'] if r['eps'] is not None)})")
    else:
        parts.append(f"noise passes up to {largest}, fails from {fail['eps']} ({', '.join(fail['gates'])})")
    for target in ("cpu", "tensorrt"):
        eq = int8.get(target, {}).get("equivalent_eps")
        if eq is None or largest is None:
            continue
        ratio = eq / largest
        parts.append(f"int8 {target} ~ eps {eq:.2g} = {ratio:.1f}x the floor"
                     + (" (int8-sized noise PASSES: room on the integer side)" if eq <= largest else ""))
    q = [r for r in rec["runs"] if r["variant"] == "q_head-only" and not r["passed"]]
    parts.append("q_head-only noise fails from " + str(min(r["eps"] for r in q)) if q
                 else "q_head-only noise passes at every eps tried")
    return "; ".join(parts)


def readme_table(results: dict[str, Any]) -> str:
    """The summary table (markdown)."""
    fmt = lambda v: "/".join(f"{100 * x:.1f}" for x in v) or "-"  # noqa: E731
    rows = []
    for name, rec in results["demos"].items():
        if not rec.get("open_loop"):
            continue  # still running
        largest, _ = largest_passing(rec)
        int8 = rec.get("int8", {})
        errs = " / ".join(f"{int8[t]['median']:.3g} (eps~{int8[t]['equivalent_eps']:.2g})"
                          if int8.get(t, {}).get("equivalent_eps") else
                          (f"{int8[t]['median']:.3g}" if t in int8 else "-") for t in ("cpu", "tensorrt"))
        rows.append(f"| {name} | {largest if largest is not None else '-'} | "
                    f"{fmt(halting_at(rec, 1e-3))} / {fmt(halting_at(rec, 1e-2))} | {errs} | {verdict(rec)} |")
    head = ("| demo | largest eps passing all gates (both seeds) | halting agreement % at 1e-3 / 1e-2 (seed 0/1) | "
            "int8 median site error_full cpu / tensorrt (equivalent eps) | verdict |\n|---|---|---|---|---|")
    return "\n".join([head, *rows])


def runs_table(rec: dict[str, Any]) -> str:
    """Every closed-loop run of one demo (markdown)."""
    lines = ["| variant | eps | seed | solved | halting | exact | token | acc. drop | mean steps | gates |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rec["runs"]:
        lines.append(f"| {r['variant']} | {r['eps']} | {r['seed']} | {100 * r['solved_agreement']:.2f} | "
                     f"{100 * r['halting_agreement']:.2f} | {100 * r['exact_agreement']:.2f} | "
                     f"{100 * r['token_agreement']:.3f} | {100 * r['accuracy_drop']:+.2f} | "
                     f"{r['mean_steps_candidate']:.3f} | "
                     f"{'PASS' if r['passed'] else 'FAIL ' + ', '.join(r['failed_gates'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench/latest/session12-noise-floor"))
    ap.add_argument("--demos", default=",".join(DEMOS))
    ap.add_argument("--puzzles", type=int, default=256)
    ap.add_argument("--puzzles-9x9", type=int, default=None, help="puzzles for trm-sudoku-demo (default --puzzles)")
    ap.add_argument("--int8-bundles", type=Path, default=None,
                    help="DIR/<demo>: an `export --int8` bundle of each demo, for the INT8 comparison")
    ap.add_argument("--open-loop-only", action="store_true",
                    help="recompute only the open-loop site errors and INT8 comparison of demos already in the JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "noise_floor.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    results.update({"gates": GATES.__dict__, "eps": EPS, "extra_eps": EXTRA_EPS, "seeds": SEEDS,
                    "input_eps": INPUT_EPS, "q_head_eps": Q_HEAD_EPS, "torch": torch.__version__, "threads": 1})
    results.setdefault("demos", {})

    def save() -> None:
        path.write_text(json.dumps(results, indent=1, default=str))

    for name in filter(None, args.demos.split(",")):  # --demos '': only the plots and summary.md
        if args.open_loop_only:
            rec = results["demos"].get(name)
            if rec is None:
                continue
            ck = load_checkpoint(rec["checkpoint"])
            pset = load_puzzle_set(calib_data_dir(ck.task), split="val")
            n = rec["runs"][0]["puzzles"]
            open_loop_part(name, rec, ck.model.set_compute_dtype("float32").eval(), pset.inputs[:n],
                           pset.puzzle_ids[:n], rec["max_steps"], args.int8_bundles)
            print(name, "open loop:", json.dumps({k: rec["int8"][k].get("equivalent_eps") for k in ("cpu", "tensorrt")
                                                  if k in rec.get("int8", {})}), flush=True)
            save()
        else:
            puzzles = args.puzzles_9x9 if name == "trm-sudoku-demo" and args.puzzles_9x9 else args.puzzles
            rec = run_demo(name, puzzles, lambda m: print(m, flush=True), save, results["demos"], args.int8_bundles)
    for name, rec in results["demos"].items():
        if rec.get("open_loop"):
            rec["verdict"] = verdict(rec)
            plot(rec, name, args.out / f"{name}.png")
    save()
    (args.out / "summary.md").write_text(readme_table(results) + "\n\n" + "\n\n".join(
        f"### {name}\n\n{rec['data']}, reference accuracy {rec['reference']['accuracy']:.4f}, mean steps "
        f"{rec['reference']['mean_steps']:.3f}\n\n{runs_table(rec)}" for name, rec in results["demos"].items()
        if rec.get("open_loop")) + "\n")


if __name__ == "__main__":
    main()

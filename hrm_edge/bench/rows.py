"""Result rows of `hrm-edge bench`: one per model, runtime, batch size and policy from a worker's
summary, their ratios to the baseline, and the targets evaluated on them."""

from __future__ import annotations

from typing import Any

from hrm_edge.bench.configs import BASELINE, PEERS, Runtime
from hrm_edge.bench.prepare import Model


def rows_from(model: Model, rt: Runtime, batch: int, res: dict[str, Any], peaks: dict[str, Any],
               policies: tuple[str, ...], threads: int) -> list[dict[str, Any]]:
    base = {"model": model.name, "runtime": rt.name, "engine": rt.engine, "precision": rt.precision,
            "graph": rt.graph, "variant": rt.variant, "batch": batch, "max_steps": model.max_steps,
            "threads": rt.threads or threads}
    if "error" in res or "skipped" in res:
        return [{**base, "policy": p, **({"error": res["error"]} if "error" in res else {"skipped": res["skipped"]})}
                for p in policies]
    seg = res["segment"]
    flops = model.config.segment_flops(batch)
    peak = {"fp32": peaks.get("fp32_peak_gflops"), "bf16": peaks.get("bf16_peak_gflops"),
            "int8": peaks.get("int8_peak_gops")}.get(rt.precision)
    gops = flops / (seg["p50"] / 1e3) / 1e9
    clean = seg.get("clean_p50")
    common = {
        **base, "seg_ms_p50": seg["p50"], "seg_ms_p90": seg["p90"], "seg_ms_min": seg["min"],
        "seg_ms_clean_p50": clean, "seg_iters": seg["iters"], "seg_clean_frac": seg["clean_frac"],
        "contention": seg["contention"], "gops": round(gops, 2),
        "gops_clean": round(flops / (clean / 1e3) / 1e9, 2) if clean else None,
        "peak_gops": peak, "peak_fraction": round(gops / peak, 4) if peak else None,
        "peak_fraction_clean": round(flops / (clean / 1e3) / 1e9 / peak, 4) if peak and clean else None,
        "segments_per_call": res.get("segments_per_call", 1), "load_s": res.get("load_s"),
        "paused_throughout": res.get("paused_throughout"),
    }
    rows = []
    for p in policies:
        row = {**common, "policy": p}
        e = res.get("policies", {}).get(p)
        if e:
            lat = e["batch_latency_ms"]
            row.update({"puzzle_ms_p50": lat["p50"], "puzzle_ms_p90": lat["p90"], "puzzles_per_s": e["puzzles_per_s"],
                        "mean_segments": e["mean_segments"], "exact_accuracy": e.get("exact_accuracy"),
                        "token_accuracy": e.get("token_accuracy"), "e2e_puzzles": e["puzzles"],
                        "segments_histogram": e["segments_histogram"], "e2e_contention": lat["contention"],
                        "e2e_complete": e.get("complete", True)})
        rows.append(row)
    return rows


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Every row against the baseline (torch-fp32, policy fixed) of its model and batch size."""
    base = {(r["model"], r["batch"]): r for r in rows
            if r["runtime"] == BASELINE and r["policy"] == "fixed" and "seg_ms_p50" in r}
    for r in rows:
        b = base.get((r["model"], r["batch"]))
        if b is None or "seg_ms_p50" not in r:
            continue
        r["seg_time_vs_baseline"] = round(r["seg_ms_p50"] / b["seg_ms_p50"], 4)
        if r.get("seg_ms_clean_p50") and b.get("seg_ms_clean_p50"):
            r["seg_time_vs_baseline_clean"] = round(r["seg_ms_clean_p50"] / b["seg_ms_clean_p50"], 4)
        if r.get("puzzles_per_s") and b.get("puzzles_per_s"):
            r["puzzles_per_s_vs_baseline"] = round(r["puzzles_per_s"] / b["puzzles_per_s"], 3)
        if (r.get("exact_accuracy") is not None and b.get("exact_accuracy") is not None
                and r.get("e2e_complete") and b.get("e2e_complete")):  # same puzzles on both sides
            r["exact_accuracy_delta_pts"] = round(100 * (r["exact_accuracy"] - b["exact_accuracy"]), 2)


PEER_TARGET = 0.15  # hrm-edge's fastest CPU path, x PyTorch eager fp32 per segment (issue 19)


def peer_targets(rows: list[dict[str, Any]], models: list[Model]) -> dict[str, Any]:
    """Per batch size of the untrained (large) model, one segment: hrm-edge's fastest CPU row (any
    row not in `PEERS` and not the baseline) against `PEER_TARGET` and the fastest peer row."""
    big = [m.name for m in models if not m.trained] or [m.name for m in models]
    out: dict[str, Any] = {}
    sel = [r for r in rows if r["model"] in big and r["variant"] == "segment" and r["policy"] == "fixed"
           and r.get("seg_time_vs_baseline") is not None and r["runtime"] != BASELINE]
    for batch in sorted({r["batch"] for r in sel}):
        ours = [r for r in sel if r["batch"] == batch and r["runtime"] not in PEERS]
        peers = [r for r in sel if r["batch"] == batch and r["runtime"] in PEERS]
        if not ours:
            continue
        best = min(ours, key=lambda r: r["seg_time_vs_baseline"])
        peer = min(peers, key=lambda r: r["seg_time_vs_baseline"]) if peers else None
        base = next((r for r in rows if r["model"] == best["model"] and r["batch"] == batch
                     and r["runtime"] == BASELINE and r["policy"] == "fixed" and r.get("gops")), None)
        int8_peak = next((r["peak_gops"] for r in sel if r.get("precision") == "int8" and r.get("peak_gops")), None)
        out[f"fastest_vs_peers_b{batch}"] = {
            "goal": f"batch {batch}: hrm-edge's fastest CPU path <= {PEER_TARGET}x PyTorch eager fp32 per segment "
                    "and faster than every peer row", "model": best["model"], "runtime": best["runtime"],
            "value": best["seg_time_vs_baseline"], "best_peer": None if peer is None else peer["runtime"],
            "best_peer_value": None if peer is None else peer["seg_time_vs_baseline"],
            # the share of the machine's measured int8 GEMM peak a segment must sustain to reach the
            # target (above 1: out of reach of int8 GEMMs here, whatever the runtime)
            "int8_peak_share_needed": round(base["gops"] / PEER_TARGET / int8_peak, 3) if base and int8_peak else None,
            "met": best["seg_time_vs_baseline"] <= PEER_TARGET
            and (peer is None or best["seg_time_vs_baseline"] < peer["seg_time_vs_baseline"])}
    return out


E2E_ACCURACY_PTS = 0.5  # "equal accuracy": exact accuracy at most this many points below eager fp32


def e2e_peer_targets(rows: list[dict[str, Any]], models: list[Model]) -> dict[str, Any]:
    """Per trained model and batch size, end to end under policy q: hrm-edge's fastest row (puzzles/s;
    any row not in `PEERS` and not the baseline) against the fastest peer row, both at equal accuracy:
    complete runs whose exact accuracy is within `E2E_ACCURACY_PTS` of eager fp32's under q on the same
    puzzles (the policy's own accuracy cost is not counted against anyone). Peer rows that lose more
    accuracy are listed, not compared."""
    out: dict[str, Any] = {}
    for m in (m for m in models if m.trained):
        sel = [r for r in rows if r["model"] == m.name and r["policy"] == "q" and r.get("puzzles_per_s")]
        for batch in sorted({r["batch"] for r in sel}):
            at = [r for r in sel if r["batch"] == batch]
            ref = next((r for r in at if r["runtime"] == BASELINE), None)
            if ref is None or ref.get("exact_accuracy") is None or not ref.get("e2e_complete"):
                continue

            def delta(r: dict[str, Any], ref: dict[str, Any] = ref) -> float | None:
                if r.get("exact_accuracy") is None or not r.get("e2e_complete"):
                    return None
                return round(100 * (r["exact_accuracy"] - ref["exact_accuracy"]), 2)

            others = [r for r in at if r["runtime"] != BASELINE]
            equal = [r for r in others if delta(r) is not None and delta(r) >= -E2E_ACCURACY_PTS]
            ours = [r for r in equal if r["runtime"] not in PEERS]
            peers = [r for r in equal if r["runtime"] in PEERS]
            if not ours:
                continue
            best = max(ours, key=lambda r: r["puzzles_per_s"])
            peer = max(peers, key=lambda r: r["puzzles_per_s"]) if peers else None
            out[f"e2e_q_vs_peers_{m.name}_b{batch}"] = {
                "goal": f"{m.name}, batch {batch}, end to end under q: hrm-edge's fastest path solves more puzzles/s "
                        f"than every peer row at equal accuracy (within {E2E_ACCURACY_PTS} pt of eager fp32 under q)",
                "model": m.name, "runtime": best["runtime"], "value": best["puzzles_per_s"],
                "puzzles": ref.get("e2e_puzzles"), "reference_accuracy": ref["exact_accuracy"],
                "accuracy_delta_pts": delta(best), "best_peer": None if peer is None else peer["runtime"],
                "best_peer_value": None if peer is None else peer["puzzles_per_s"],
                "peers_below_accuracy": {r["runtime"]: delta(r) for r in others
                                         if r["runtime"] in PEERS and r not in equal},
                "met": peer is None or best["puzzles_per_s"] > peer["puzzles_per_s"]}
    return out


def targets(rows: list[dict[str, Any]], models: list[Model]) -> dict[str, Any]:
    """The issue's targets, evaluated on this run's rows (best row of each kind)."""
    out: dict[str, Any] = {}
    big = [m.name for m in models if not m.trained] or [m.name for m in models]
    trained = [m.name for m in models if m.trained]

    def best(sel: list[dict[str, Any]], key: str, lower: bool) -> dict[str, Any] | None:
        sel = [r for r in sel if r.get(key) is not None]
        return (min if lower else max)(sel, key=lambda r: r[key]) if sel else None

    r = best([r for r in rows if r["model"] in big and r["precision"] == "int8" and r["batch"] == 1
              and r["variant"] == "segment" and r["policy"] == "fixed"], "seg_time_vs_baseline", True)
    out["int8_segment_b1"] = None if r is None else {
        "goal": "ORT CPU INT8 time per segment at batch 1 <= 0.2x PyTorch eager fp32", "model": r["model"],
        "runtime": r["runtime"], "value": r["seg_time_vs_baseline"], "value_clean": r.get("seg_time_vs_baseline_clean"),
        "met": r["seg_time_vs_baseline"] <= 0.2}
    cand = [r for r in rows if r["model"] in trained and r["precision"] == "int8" and r["policy"] == "q"
            and r.get("exact_accuracy_delta_pts") is not None and r["exact_accuracy_delta_pts"] >= -0.5]
    allq = [r for r in rows if r["model"] in trained and r["precision"] == "int8" and r["policy"] == "q"]
    r = best(cand, "puzzles_per_s_vs_baseline", False) or best(allq, "puzzles_per_s_vs_baseline", False)
    out["e2e_q_int8"] = None if r is None else {
        "goal": "puzzles/s with policy q + INT8 >= 20x eager fp32 fixed (same batch), exact accuracy no more "
                "than 0.5 pt below it",
        "model": r["model"], "runtime": r["runtime"], "batch": r["batch"], "value": r["puzzles_per_s_vs_baseline"],
        "accuracy_delta_pts": r.get("exact_accuracy_delta_pts"), "mean_segments": r.get("mean_segments"),
        "met": r["puzzles_per_s_vs_baseline"] >= 20 and r.get("exact_accuracy_delta_pts") is not None
        and r["exact_accuracy_delta_pts"] >= -0.5}
    r = best([r for r in rows if r["model"] in big and r["engine"] == "ort" and r["precision"] == "fp32"
              and r["batch"] == 16 and r["policy"] == "fixed"], "peak_fraction", False)
    out["fp32_b16_peak"] = None if r is None else {
        "goal": "ORT fp32 at batch 16 >= 70% of the fp32 GEMM peak", "model": r["model"], "runtime": r["runtime"],
        "value": r["peak_fraction"], "value_clean": r.get("peak_fraction_clean"), "gops": r["gops"],
        "peak_gops": r["peak_gops"], "met": r["peak_fraction"] >= 0.7}
    out.update(peer_targets(rows, models))
    out.update(e2e_peer_targets(rows, models))
    return out

"""The report files of `hrm-edge bench`: the markdown tables (`bench.md`) and the per-model plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hrm_edge.bench.configs import BASELINE


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def markdown_report(report: dict[str, Any]) -> str:
    pk = report["peaks"]
    lines = [f"# hrm-edge bench ({report['created']}, {report['seconds']} s)", "",
             f"Machine: {report['machine']['cpu']} ({', '.join(report['machine']['isa'])}), "
             f"{report['machine']['threads']} threads. Baseline: {report['baseline']}.", "",
             f"Peaks: fp32 {_fmt(pk.get('fp32_peak_gflops'))} GFLOP/s (torch {_fmt(pk.get('torch_fp32_gflops'))}, "
             f"numpy {_fmt(pk.get('numpy_fp32_gflops'))}, ORT MatMul {_fmt(pk.get('ort_fp32_gflops'))}), "
             f"bf16 {_fmt(pk.get('bf16_peak_gflops'))} GFLOP/s, int8 {_fmt(pk.get('int8_peak_gops'))} GOP/s "
             "(ORT MatMulInteger u8s8).", ""]
    head = ("| model | runtime | batch | policy | seg ms p50 | p90 | clean p50 | x base | GOP/s | % peak | "
            "puzzle ms p50 | p90 | puzzles/s | x base | segs | exact % | contention |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in report["rows"]:
        if "error" in r or "skipped" in r:
            lines.append(f"| {r['model']} | {r['runtime']} | {r['batch']} | {r['policy']} | "
                         f"{r.get('error') or r.get('skipped')} |" + " |" * 12)
            continue
        acc = r.get("exact_accuracy")
        lines.append(
            f"| {r['model']} | {r['runtime']} | {r['batch']} | {r['policy']} | {_fmt(r['seg_ms_p50'])} | "
            f"{_fmt(r['seg_ms_p90'])} | {_fmt(r.get('seg_ms_clean_p50'))} | {_fmt(r.get('seg_time_vs_baseline'))} | "
            f"{_fmt(r['gops'])} | {_fmt(100 * r['peak_fraction'] if r.get('peak_fraction') else None)} | "
            f"{_fmt(r.get('puzzle_ms_p50'))} | {_fmt(r.get('puzzle_ms_p90'))} | {_fmt(r.get('puzzles_per_s'))} | "
            f"{_fmt(r.get('puzzles_per_s_vs_baseline'))} | {_fmt(r.get('mean_segments'))} | "
            f"{_fmt(100 * acc if acc is not None else None)} | {_fmt(r.get('contention'), 2)} |")
    if report["skipped"]:
        lines += ["", "Skipped:"] + [f"- {k}: {v}" for k, v in report["skipped"].items()]
    lines += ["", "## Targets", ""]
    for k, t in report["targets"].items():
        if t is None:
            lines.append(f"- {k}: not measured in this run")
            continue
        lines.append(f"- {'MET' if t['met'] else 'MISSED'} {t['goal']}: {_fmt(t['value'])} ({t['runtime']}, "
                     f"{t['model']}" + (f", clean {_fmt(t.get('value_clean'))}" if t.get("value_clean") else "")
                     + (f", accuracy delta {t.get('accuracy_delta_pts')} pt" if "accuracy_delta_pts" in t else "")
                     + (f", best peer {t['best_peer']} {_fmt(t['best_peer_value'])}" if t.get("best_peer") else "")
                     + ")")
    for model, prof in report.get("profiles", {}).items():
        if "error" in prof:
            continue
        lines += ["", f"## ORT profile: {model}, one segment at batch 1 (kernel ms per run, share)", ""]
        names = [n for n in prof if isinstance(prof[n], dict) and "ops" in prof[n]]
        lines.append("| op type | " + " | ".join(names) + " |")
        lines.append("|---|" + "---|" * len(names))
        top: dict[str, float] = {}
        for n in names:
            for op, o in prof[n]["ops"].items():
                top[op] = max(top.get(op, 0.0), o["ms"])
        for op in sorted(top, key=top.get, reverse=True)[:18]:
            cells = []
            for n in names:
                o = prof[n]["ops"].get(op)
                cells.append(f"{o['ms']:.2f} ({100 * o['share']:.0f}%)" if o else "-")
            lines.append(f"| {op} | " + " | ".join(cells) + " |")
        lines.append("| run (wall) | " + " | ".join(f"{prof[n]['run_ms']:.2f} ms, {prof[n]['nodes_per_run']} nodes"
                                                   for n in names) + " |")
    return "\n".join(lines) + "\n"


def plot_report(report: dict[str, Any], out: Path) -> list[str]:
    """Per model: latency vs batch per runtime, accuracy vs speed per policy, segments histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    rows = [r for r in report["rows"] if "seg_ms_p50" in r]
    for model in report["models"]:
        name = model["name"]
        mr = [r for r in rows if r["model"] == name]
        if not mr:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for rt in dict.fromkeys(r["runtime"] for r in mr):
            pts = sorted({(r["batch"], r["seg_ms_p50"]) for r in mr if r["runtime"] == rt and r["policy"] == mr[0][
                "policy"]})
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=rt)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("time per segment, p50 (ms)")
        ax.set_title(f"{name}: latency per segment vs batch")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{name}-latency_vs_batch.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)

        e2e = [r for r in mr if r.get("puzzles_per_s")]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        markers = {"fixed": "o", "q": "s"}
        for r in e2e:
            ax.scatter(r["puzzles_per_s"], 100 * (r.get("exact_accuracy") or 0),
                       marker=markers.get(r["policy"], "^"), s=18 + 6 * r["batch"] ** 0.5)
            ax.annotate(f"{r['runtime']} b{r['batch']} {r['policy']}", (r["puzzles_per_s"],
                                                                        100 * (r.get("exact_accuracy") or 0)),
                        fontsize=5, alpha=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("puzzles / s (end to end)")
        ax.set_ylabel("exact accuracy (%)")
        ax.set_title(f"{name}: accuracy vs speed (o fixed, s q)" + ("" if model["trained"] else " [untrained]"))
        ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        path = out / f"{name}-accuracy_vs_speed.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)

        fig, ax = plt.subplots(figsize=(7, 4.5))
        hists = [r for r in e2e if r.get("segments_histogram")]
        shown = {}
        for r in hists:
            key = (r["runtime"], r["policy"])
            if key not in shown and r["runtime"] in (BASELINE, "ort-int8"):
                shown[key] = r
        width = 0.8 / max(1, len(shown))
        for i, ((rt, pol), r) in enumerate(shown.items()):
            h = {int(k): v for k, v in r["segments_histogram"].items()}
            xs = np.array(sorted(h)) + (i - len(shown) / 2) * width
            ax.bar(xs, [h[k] for k in sorted(h)], width=width,
                   label=f"{rt} {pol} b{r['batch']} (mean {r['mean_segments']:.2f})")
        ax.set_xlabel("segments used")
        ax.set_ylabel("puzzles")
        ax.set_title(f"{name}: segments per puzzle")
        if shown:
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{name}-segments_hist.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)
    return written

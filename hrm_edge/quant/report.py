"""The INT8 quantization report of a bundle: `quant_report.json` (settings, calibration, per-site
error table, search trials, measured parity) and one `quant_report-<target>.png` per target with the
error by layer (site), by layer and ACT step, and by ACT step (open and closed loop)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from hrm_edge.parity import solved_metric
from hrm_edge.quant.search import SCORED

REPORT_JSON = "quant_report.json"


def _clean(value: Any) -> Any:
    """JSON-safe: numpy scalars/arrays to Python, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_report(directory: str | Path, report: dict[str, Any]) -> list[Path]:
    """Write quant_report.json and a PNG per target into `directory`; returns the paths written."""
    directory = Path(directory)
    path = directory / REPORT_JSON
    path.write_text(json.dumps(_clean(report), indent=1))
    written = [path]
    for target, section in report.get("targets", {}).items():
        png = directory / f"quant_report-{target}.png"
        plot_target(section, png)
        written.append(png)
    return written


def plot_target(section: dict[str, Any], path: str | Path) -> None:
    """Error by layer, by layer x ACT step and by ACT step for one target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = section.get("sites", [])
    fig = plt.figure(figsize=(14, 9))
    grid = fig.add_gridspec(2, 2, height_ratios=[1.1, 1])
    ax1 = fig.add_subplot(grid[0, :])
    ax2 = fig.add_subplot(grid[1, 0])
    ax3 = fig.add_subplot(grid[1, 1])
    x = np.arange(len(sites))
    full = [max(s["error_full"], 1e-9) for s in sites]
    final = [max(s["error_final"], 1e-9) for s in sites]
    ax1.semilogy(x, full, marker=".", lw=1, label="all sites int8")
    ax1.semilogy(x, final, marker=".", lw=1, label="shipped (float sites excluded)")
    for i, s in enumerate(sites):
        if s.get("excluded"):
            ax1.axvline(i, color="tab:red", alpha=0.25, lw=3)
    ax1.set_xticks(x)
    ax1.set_xticklabels([s["label"] for s in sites], rotation=90, fontsize=6)
    ax1.set_ylabel("rel. L2 error of site output")
    parity = section.get("calib_parity", {})
    ax1.set_title(f"{section.get('graph')}: error by layer (open loop, calibration inputs of every ACT step); "
                  f"red = kept in float. Calib parity: solved "
                  f"{100 * (parity.get(solved_metric(parity)) or 0):.1f}%, "
                  f"halting {100 * (parity.get('halting_agreement') or 0):.1f}%, "
                  f"{'PASS' if parity.get('passed') else 'FAIL'}", fontsize=9)
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    heat = np.array([s.get("error_final_by_step", []) for s in sites], dtype=float)
    if heat.size:
        im = ax2.imshow(np.log10(np.maximum(heat, 1e-6)), aspect="auto", cmap="viridis", interpolation="nearest")
        fig.colorbar(im, ax=ax2, label="log10 rel. error (shipped graph)")
        ax2.set_xticks(np.arange(heat.shape[1]))
        ax2.set_xticklabels([str(i) for i in range(heat.shape[1])])
    ax2.set_xlabel("ACT step of the input carry")
    ax2.set_ylabel("site (graph order)")
    ax2.set_title("error by layer and ACT step", fontsize=9)
    ol = section.get("open_loop", {})
    for name, style in (("full", "--"), ("final", "-")):
        per = (ol.get(name) or {}).get("per_step", [])
        if per:
            steps = sorted({p["step"] for p in per})
            vals = [np.mean([np.mean([p[k] for k in SCORED if k in p]) for p in per if p["step"] == s])
                    for s in steps]
            ax3.semilogy(np.array(steps) + 1, vals, style, marker="o",
                         label=f"open loop, {name}: carry, logits, halting-margin error")
    closed = section.get("closed_loop_per_step", [])
    if closed:
        ax3.semilogy([c["step"] for c in closed], [max(c["mean_abs"], 1e-9) for c in closed], marker="s",
                     label="closed loop: mean |Δlogit|")
        ax4 = ax3.twinx()
        ax4.plot([c["step"] for c in closed], [100 * c.get("token_agreement", np.nan) for c in closed], color="k",
                 marker="^", lw=1, label="closed loop: token agreement %")
        ax4.set_ylabel("token agreement %")
        ax4.legend(fontsize=7, loc="lower right")
    ax3.set_xlabel("ACT step (segment)")
    ax3.set_title("error by ACT step", fontsize=9)
    ax3.legend(fontsize=7, loc="upper left")
    ax3.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


__all__ = ["REPORT_JSON", "plot_target", "write_report"]

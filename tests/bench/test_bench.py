"""`hrm-edge bench` end to end on a tiny model (quick mode), the peak measurement and the pauser."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from hrm_edge.bench import pausing
from hrm_edge.bench import suite as bench
from hrm_edge.bench.worker import CpuMeter, run_peak, summarize
from hrm_edge.cli.bench import bench as bench_cmd
from hrm_edge.model import create_model
from hrm_edge.model.checkpoint import save_checkpoint
from hrm_edge.model.config import preset_config

ROW_FIELDS = ("model", "runtime", "engine", "precision", "variant", "batch", "policy", "seg_ms_p50", "seg_ms_p90",
              "seg_time_vs_baseline", "gops", "peak_gops", "peak_fraction", "contention", "puzzle_ms_p50",
              "puzzle_ms_p90", "puzzles_per_s", "puzzles_per_s_vs_baseline", "mean_segments", "exact_accuracy",
              "segments_histogram")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    ckpt = save_checkpoint(root / "tiny.pt", create_model(preset_config("sudoku-tiny")), "sudoku")
    args = [str(ckpt), "--quick", "--out", str(root / "out"), "--puzzles", "2", "--profile",
            "--runtime", "ort-fp32-cpufused", "--runtime", "ort-int8", "--runtime", "ort-int8/loop",
            "--runtime", "tensorrt"]
    result = CliRunner().invoke(bench_cmd, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = root / "out"
    return {"out": out, "json": json.loads((out / "bench.json").read_text()), "stdout": result.output}


def test_bench_writes_json_with_the_documented_fields(report):
    data = report["json"]
    assert data["schema"] == bench.SCHEMA
    assert {"machine", "settings", "peaks", "models", "rows", "skipped", "targets", "profiles", "plots"} <= set(data)
    rows = [r for r in data["rows"] if "seg_ms_p50" in r]
    runtimes = {r["runtime"] for r in rows}
    assert runtimes == {"torch-fp32", "ort-fp32-cpufused", "ort-int8", "ort-int8/loop"}
    assert {r["policy"] for r in rows} == {"fixed", "q"}
    for r in rows:
        missing = [f for f in ROW_FIELDS if f not in r]
        assert not missing, (r["runtime"], missing)
        assert r["seg_ms_p50"] > 0 and r["puzzles_per_s"] > 0 and 0 <= r["exact_accuracy"] <= 1
        assert sum(r["segments_histogram"].values()) == r["e2e_puzzles"]
    base = next(r for r in rows if r["runtime"] == "torch-fp32" and r["policy"] == "fixed")
    assert base["seg_time_vs_baseline"] == 1 and base["puzzles_per_s_vs_baseline"] == 1
    assert any(k.startswith("tensorrt") for k in data["skipped"])
    model = data["models"][0]
    assert model["prep"]["parity"]["fused_vs_standard"]["logits"] < 1e-4
    assert model["prep"]["fuse"]["fused"]["fused_ops"]["MultiHeadAttention"] > 0
    assert model["prep"]["fuse"]["loop_int8"]["fused_ops"]["MultiHeadAttention"] > 0  # fused inside the Loop body
    loop = next(r for r in rows if r["runtime"] == "ort-int8/loop" and r["policy"] == "fixed")
    seg = next(r for r in rows if r["runtime"] == "ort-int8" and r["policy"] == "fixed")
    assert loop["mean_segments"] == seg["mean_segments"]
    # The issue targets, plus one fastest-vs-peers target per measured batch, per segment and (trained
    # models) end to end (no peer rows in this run).
    batches = sorted({r["batch"] for r in rows if r["variant"] == "segment"})
    trained = [m["name"] for m in data["models"] if m["trained"]]
    assert set(data["targets"]) == {"int8_segment_b1", "e2e_q_int8", "fp32_b16_peak"} | {
        f"fastest_vs_peers_b{b}" for b in batches} | {f"e2e_q_vs_peers_{m}_b{b}" for m in trained for b in batches}
    prof = data["profiles"][model["name"]]
    assert prof["cpufused fp32"]["ops"]["MultiHeadAttention"]["ms"] > 0
    int8_ops = prof["cpufused int8"]["ops"]  # where the INT8 segment's time goes, by (ORT-fused) op type
    assert sum(o["ms"] for op, o in int8_ops.items() if "Integer" in op or "Quantize" in op) > 0, sorted(int8_ops)
    assert "Softmax" in prof["standard fp32"]["ops"] or "FusedMatMul" in prof["standard fp32"]["ops"]
    assert (report["out"] / "bench.md").read_text().startswith("# hrm-edge bench")


def test_bench_writes_png_plots(report):
    plots = report["json"]["plots"]
    assert len(plots) == 3
    for name in plots:
        assert (report["out"] / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_peak_measurement_is_positive():
    peaks = run_peak({"threads": 1, "n": 128, "seconds": 0.05})
    for key in ("fp32_peak_gflops", "bf16_peak_gflops", "int8_peak_gops", "ort_fp32_gflops", "numpy_fp32_gflops"):
        assert peaks[key] > 0, key


def test_summarize_separates_clean_windows():
    s = summarize([0.001, 0.002, 0.010], [0.0, 0.05, 0.9])
    assert s["p50"] == 2.0 and s["clean_p50"] == 1.5 and s["iters"] == 3
    assert abs(s["clean_frac"] - 2 / 3) < 1e-3
    meter = CpuMeter()
    meter.start()
    time.sleep(0.02)
    share = meter.stop()
    assert share is None or 0.0 <= share <= 1.0


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and signals")
def test_pauser_stops_and_resumes_matching_processes():
    marker = "hrm_edge_bench_pause_test_marker"
    proc = subprocess.Popen([sys.executable, "-c", "import time, sys; time.sleep(60)", marker])
    try:
        time.sleep(0.2)
        assert pausing.find_processes(marker) == [proc.pid]
        assert not set(pausing.find_processes("python")) & pausing._ancestors()  # never ourselves
        pauser = pausing.Pauser((marker,), max_seconds=30)
        with pauser.paused() as pids:
            assert pids == [proc.pid]
            time.sleep(0.1)
            assert _state(proc.pid) == "T"
        time.sleep(0.1)
        assert _state(proc.pid) != "T"
        assert pauser.paused_seconds > 0
    finally:
        proc.kill()
        proc.wait()


def test_solve_bundle_row_runs_the_exported_fused_graph_like_the_fused_row(tmp_path):
    """The bench measures what `hrm-edge solve BUNDLE` runs: a bundle from the product exporter, its
    default graph on ORT's CPU EP (the fused graph), beside the bench's own fused fp32 row."""
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "tiny.pt", create_model(preset_config("sudoku-tiny")), "sudoku")
    args = [str(ckpt), "--quick", "--out", str(tmp_path / "out"), "--puzzles", "4", "--no-profile",
            "--runtime", "ort-fp32-cpufused", "--runtime", "solve-bundle"]
    result = CliRunner().invoke(bench_cmd, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert "segment.fp32-cpufused.onnx" in data["models"][0]["prep"]["fuse"]["bundle"]["graphs"]
    rows = {(r["runtime"], r["policy"]): r for r in data["rows"] if "seg_ms_p50" in r}
    for policy in ("fixed", "q"):
        bundle, fused = rows["solve-bundle", policy], rows["ort-fp32-cpufused", policy]
        assert bundle["engine"] == "bundle" and bundle["seg_ms_p50"] > 0
        assert bundle["mean_segments"] == fused["mean_segments"]
        assert bundle["exact_accuracy"] == fused["exact_accuracy"]
        assert bundle["segments_histogram"] == fused["segments_histogram"]

"""The peer rows of `hrm-edge bench` (issue 19): which rows are peers, the fastest-vs-peers targets, and
the OpenVINO and torch.compile rows measured end to end on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from hrm_edge.bench.configs import PEER_RUNTIMES, PEERS, runtimes, skip_reason
from hrm_edge.bench.prepare import Model
from hrm_edge.bench.rows import e2e_peer_targets, peer_targets
from hrm_edge.cli.bench import bench as bench_cmd
from hrm_edge.model import create_model
from hrm_edge.model.checkpoint import save_checkpoint
from hrm_edge.model.config import preset_config


def _row(runtime: str, batch: int, ratio: float) -> dict:
    return {"model": "big", "runtime": runtime, "variant": "segment", "policy": "fixed", "batch": batch,
            "seg_time_vs_baseline": ratio}


def _models() -> list[Model]:
    return [Model("big", None, None, "sudoku", False, {}, {}), Model("demo", None, None, "sudoku", True, {}, {})]


def test_every_peer_is_a_known_runtime_and_in_the_peer_run():
    known = runtimes(4)
    assert set(PEERS) <= set(PEER_RUNTIMES) <= set(known)
    assert {known[p].engine for p in PEERS} == {"torch", "openvino"}


def test_the_target_needs_the_fastest_hrm_edge_row_under_the_bound_and_ahead_of_every_peer():
    rows = [_row("torch-fp32", 1, 1.0), _row("ort-int8", 1, 0.29), _row("openvino-int8", 1, 0.14),
            _row("openvino-int8-nncf", 1, 0.2), _row("ort-int8", 16, 0.45), _row("openvino-int8-nncf", 16, 0.25),
            _row("openvino-bf16", 16, 0.35)]
    out = peer_targets(rows, _models())
    b1, b16 = out["fastest_vs_peers_b1"], out["fastest_vs_peers_b16"]
    assert (b1["runtime"], b1["value"], b1["best_peer"], b1["best_peer_value"], b1["met"]) == (
        "openvino-int8", 0.14, "openvino-int8-nncf", 0.2, True)
    assert (b16["runtime"], b16["value"], b16["best_peer"], b16["met"]) == ("ort-int8", 0.45, "openvino-int8-nncf",
                                                                            False)


def test_the_target_states_the_share_of_the_int8_peak_it_needs():
    rows = [{**_row("torch-fp32", 1, 1.0), "precision": "fp32", "gops": 96.0, "peak_gops": 197.0},
            {**_row("ort-int8", 1, 0.25), "precision": "int8", "gops": 384.0, "peak_gops": 416.0}]
    # 0.15x eager's 96 GOP/s is 640 GOP/s: 1.538 of a 416 GOP/s int8 peak
    assert peer_targets(rows, _models())["fastest_vs_peers_b1"]["int8_peak_share_needed"] == 1.538


def test_rows_of_trained_models_do_not_count_for_the_speed_target():
    rows = [{**_row("ort-int8", 1, 0.1), "model": "demo"}, _row("ort-fp32-cpufused", 1, 0.8)]
    assert peer_targets(rows, _models())["fastest_vs_peers_b1"]["runtime"] == "ort-fp32-cpufused"


def _e2e(runtime: str, batch: int, per_s: float, accuracy: float | None, complete: bool = True) -> dict:
    return {"model": "demo", "runtime": runtime, "policy": "q", "batch": batch, "puzzles_per_s": per_s,
            "exact_accuracy": accuracy, "e2e_complete": complete, "e2e_puzzles": 128}


def test_end_to_end_peers_are_compared_at_the_accuracy_of_eager_fp32_under_q():
    rows = [_e2e("torch-fp32", 1, 10.0, 0.90), _e2e("ort-fp32-cpufused", 1, 14.0, 0.90),
            _e2e("openvino-int8", 1, 19.0, 0.896), _e2e("openvino-bf16", 1, 18.0, 0.91),
            _e2e("openvino-int8-nncf", 1, 30.0, 0.15), _e2e("torch-compile-bf16", 1, 40.0, 0.95, complete=False)]
    t = e2e_peer_targets(rows, _models())["e2e_q_vs_peers_demo_b1"]
    assert (t["runtime"], t["value"], t["accuracy_delta_pts"], t["best_peer"], t["best_peer_value"], t["met"]) == (
        "openvino-int8", 19.0, -0.4, "openvino-bf16", 18.0, True)
    assert t["peers_below_accuracy"] == {"openvino-int8-nncf": -75.0, "torch-compile-bf16": None}


def test_an_hrm_edge_row_that_loses_accuracy_does_not_beat_a_peer():
    rows = [_e2e("torch-fp32", 16, 10.0, 0.5), _e2e("openvino-int8", 16, 50.0, 0.494),
            _e2e("ort-fp32-cpufused", 16, 20.0, 0.5), _e2e("torch-bf16", 16, 25.0, 0.5),
            {**_e2e("ort-int8", 16, 99.0, 0.5), "model": "big"}]
    t = e2e_peer_targets(rows, _models())["e2e_q_vs_peers_demo_b16"]
    assert (t["runtime"], t["best_peer"], t["met"]) == ("ort-fp32-cpufused", "torch-bf16", False)


def test_openvino_rows_run_where_the_extra_is_installed():
    pytest.importorskip("openvino", reason="the [openvino] extra is not installed")
    pytest.importorskip("nncf", reason="the [openvino] extra is not installed")
    known = runtimes(4)
    assert [skip_reason(known[n]) for n in ("openvino-fp32", "openvino-bf16", "openvino-int8",
                                            "openvino-int8-nncf")] == [None] * 4


@pytest.mark.slow
def test_bench_measures_openvino_and_compiled_torch_beside_the_baseline(tmp_path):
    pytest.importorskip("openvino", reason="the [openvino] extra is not installed")
    pytest.importorskip("nncf", reason="the [openvino] extra is not installed")
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "tiny.pt", create_model(preset_config("sudoku-tiny")), "sudoku")
    names = ("openvino-fp32", "openvino-bf16", "openvino-int8", "openvino-int8-nncf", "torch-compile-fp32")
    args = [str(ckpt), "--quick", "--out", str(tmp_path / "out"), "--puzzles", "2", "--threads", "1"]
    for name in names:
        args += ["--runtime", name]
    result = CliRunner().invoke(bench_cmd, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    rows = {r["runtime"]: r for r in report["rows"] if r["policy"] == "fixed"}
    assert set(rows) == {"torch-fp32", *names}
    for name in names:
        assert "error" not in rows[name] and rows[name]["seg_ms_p50"] > 0 and rows[name]["seg_time_vs_baseline"] > 0
    assert rows["openvino-int8-nncf"]["engine"] == "openvino" and rows["openvino-int8-nncf"]["graph"] == "nncf"
    nncf = report["models"][0]["prep"]["fuse"]["int8_nncf"]
    assert nncf["transposes_folded"] > 0 and nncf["quantize_nodes"] > 0
    assert "fastest_vs_peers_b1" in report["targets"]
    # hrm-edge's INT8 row on OpenVINO runs a static Q/DQ graph (OpenVINO's int8 form), s8 activations
    import onnx
    from onnx import numpy_helper

    model = report["models"][0]
    assert model["graphs"]["int8_openvino"] == "segment.int8-static.onnx" and "static" in model["prep"][
        "int8_openvino_source"]
    static = onnx.load(str(next((tmp_path / "out" / "cache").glob("*/segment.int8-static.onnx"))))
    inits = {i.name: i for i in static.graph.initializer}
    zero_points = [numpy_helper.to_array(inits[n.input[2]]) for n in static.graph.node if n.op_type == "QuantizeLinear"]
    assert len(zero_points) >= 8 and all(z.dtype == "int8" and not z.any() for z in zero_points)

"""`hrm-edge export --int8` end to end on a tiny model: the INT8 graph is gated on the finished
bundle, the gate's result is sealed into the manifest (so the digest covers it), and the gate's
report names the bundle where it ends up; the INT8 graph's own golden run is pinned for `verify`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from hrm_edge.act import SolveResult
from hrm_edge.bundle import open_bundle
from hrm_edge.parity import host_checks, host_run
from hrm_edge.runtimes.ort.loader import make_session
from hrm_edge.runtimes.solver import default_graph, runnable_graphs
from tests.cli_helpers import one_line_error, run_cli


@pytest.fixture(scope="module")
def int8_export(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "bundle"
    from hrm_edge.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["export", str(tiny_ckpt), "-o", str(out), "--int8", "--calib-size", "16", "--no-fp16", "--golden", "4"])
    assert exc.value.code == 0
    return out


def test_int8_export_seals_its_gate_into_the_manifest(int8_export):
    b = open_bundle(int8_export)
    assert "segment.int8-cpu" in b.graphs
    [gate] = b.manifest.gates
    assert (gate.name, gate.precision, gate.passed) == ("parity", "int8", True)
    assert set(gate.graphs) == {"segment.int8-cpu", "segment.int8-cpufused"}
    assert gate.puzzles > 0


def test_int8_gate_report_names_the_final_bundle(int8_export):
    report = json.loads((int8_export.parent / f"{int8_export.name}-parity" / "parity.json").read_text())
    assert report["bundle"] == str(int8_export)


def test_the_printed_digest_pins_the_int8_bundle(int8_export, capsys):
    digest = open_bundle(int8_export).manifest.digest
    assert digest.startswith("sha256:") and len(digest) == 7 + 64
    code, out, _ = run_cli(capsys, "verify", str(int8_export), "--expect", digest)
    assert code == 0 and f"bundle digest: {digest}" in out and "digest matches --expect" in out


def test_the_int8_graph_is_pinned_to_its_own_run_on_the_golden_puzzles(int8_export, capsys):
    """verify holds a device to the export host's INT8 run (4 golden puzzles here), not to a statistical
    agreement with fp32 that 16 puzzles cannot measure."""
    run = open_bundle(int8_export).graphs["segment.int8-cpu"].quantization["golden_run"]
    assert len(run["steps"]) == len(run["predictions"]) == 4
    code, out, _ = run_cli(capsys, "verify", str(int8_export))
    assert code == 0
    assert "PASS segment.int8-cpu: as on the export host, identical outputs 100.0%, halting agreement 100.0%" in out
    assert "PASS segment.int8-cpufused: as on the export host, identical outputs 100.0%, halting agreement 100.0%" \
        in out


def test_the_cpu_int8_graph_also_ships_fused_for_onnx_runtime_on_the_cpu(int8_export):
    """The fused copy (norms as ORT contrib kernels) is the graph `solve` runs on ORT's CPU EP; it runs
    nowhere else, keeps the same float sites and passed its own calibration gate."""
    b = open_bundle(int8_export)
    plain, fused = b.graphs["segment.int8-cpu"], b.graphs["segment.int8-cpufused"]
    assert fused.only_on == "ort-cpu" and plain.only_on is None
    # sudoku-tiny: H_cycles 2 x (L_cycles 2 + 1) one-layer calls per segment, 2 norms each
    assert fused.fusion["counts"]["rmsnorm"] == 12
    assert fused.op_types.get("SimplifiedLayerNormalization") == 12 and "ReduceMean" not in fused.op_types
    assert fused.quantization["float_sites"] == plain.quantization["float_sites"]
    assert fused.calib_parity["passed"] and fused.calib_parity["puzzles"] == 16
    assert default_graph(b, "ort") == "segment.int8-cpufused"
    assert "segment.int8-cpufused" not in runnable_graphs(b, "openvino")


def test_the_fused_int8_graph_is_as_close_to_fp32_as_the_int8_graph(int8_export):
    """One segment from the initial carry on the golden puzzles. The fusion changes only the float rounding
    of the norms, but a dynamic int8 range follows every change, so the two int8 graphs differ by about as
    much as either differs from fp32 (measured here: relative rms 0.016-0.018 between them, 0.020-0.026
    from fp32, each): what must hold is that the fused graph is no farther from fp32."""
    b = open_bundle(int8_export)
    ref = np.load(int8_export / b.manifest.need_reference().file)
    h_init, l_init = b.carry_init()
    n, length = ref["inputs"].shape[0], b.graphs["segment.int8-cpu"].inputs["z_H"].shape[1]
    feed = {"tokens": ref["inputs"].astype(np.int64), "puzzle_ids": ref["puzzle_ids"].astype(np.int64),
            "z_H": np.ascontiguousarray(np.broadcast_to(h_init, (n, length, h_init.shape[-1]))),
            "z_L": np.ascontiguousarray(np.broadcast_to(l_init, (n, length, l_init.shape[-1])))}
    fp32, plain, fused = ([o.astype(np.float64) for o in make_session(b.graph_path(name), threads=1).run(None, feed)]
                          for name in ("segment.fp32", "segment.int8-cpu", "segment.int8-cpufused"))
    for out in range(3):  # z_H, z_L, logits
        scale = np.sqrt(np.mean(fp32[out] ** 2))
        plain_err = np.sqrt(np.mean((plain[out] - fp32[out]) ** 2)) / scale
        fused_err = np.sqrt(np.mean((fused[out] - fp32[out]) ** 2)) / scale
        assert 0.005 < plain_err < 0.05
        assert fused_err <= 1.25 * plain_err


def test_a_run_that_halts_elsewhere_than_on_the_host_fails():
    steps = np.array([2, 3, 8, 1], np.int32)
    preds = np.arange(4 * 6, dtype=np.int64).reshape(4, 6)
    host = SolveResult(preds, steps, np.zeros(4, np.float32), np.zeros(4, np.float32))
    pinned = host_run(host)
    assert all(c["passed"] for c in host_checks(host, pinned))
    moved = SolveResult(preds, np.array([2, 3, 7, 1], np.int32), host.q_halt, host.q_continue)
    checks = {c["name"]: c for c in host_checks(moved, pinned)}
    assert checks["host_halting_agreement"]["value"] == 0.75 and not checks["host_halting_agreement"]["passed"]
    assert checks["host_identical_outputs"]["passed"]


def test_a_malformed_pinned_run_is_one_error_line(int8_export, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(int8_export, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["graphs"]["segment.int8-cpu"]["quantization"]["golden_run"]["steps"] = "2,3"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    line = one_line_error(capsys, "verify", str(bundle))
    assert "golden_run is malformed" in line

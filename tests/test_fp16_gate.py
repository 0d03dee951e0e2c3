"""The FP16 graph's parity gate: export runs it on validation puzzles and keeps them with the fp32
reference's run (gate_set.npz), and `verify` re-runs it there on the device, because the 16 golden
puzzles cannot measure a 95% halting rate (the maze demo's FP16 graph on aarch64 halted elsewhere on
1 of its 16 golden mazes: 93.8%, a failed `verify` of a graph that keeps 100% of fp32's halting steps
on 256 mazes on x86). Trained HRM 6x6 demo; 64 gate puzzles to keep it quick."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hrm_edge.bundle import GATE_SET, REFERENCE, open_bundle
from tests.cli_helpers import one_line_error, run_cli, with_arrays_replaced

DEMO = Path(__file__).resolve().parents[1] / "checkpoints" / "sudoku6-demo" / "model.pt"
GOLDEN = 8
RERUN = "(the export's FP16 gate, re-run here on its sudoku6 val puzzles)"


def _export(root, *args: str):
    from hrm_edge.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["export", str(DEMO), "-o", str(root), "--no-cpu-fused", "--golden", str(GOLDEN), *args])
    assert exc.value.code == 0
    return root


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("fp16-gate") / "b", "--gate-puzzles", "64")


@pytest.fixture(scope="module")
def ungated(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("fp16-ungated") / "b", "--gate-puzzles", "0")


def _one_golden_halting_step_moved(src, dst):
    """A copy whose golden reference says puzzle 0 halted one step later (as a device whose FP16 graph
    halts elsewhere on one golden puzzle would see it)."""
    with np.load(src / REFERENCE) as f:
        steps = f["steps"].copy()
    steps[0] = steps[0] + 1 if steps[0] < steps.max() else steps[0] - 1
    with_arrays_replaced(src, dst, REFERENCE, steps=steps)
    return dst


def test_export_gates_the_fp16_graph_and_keeps_its_puzzles(bundle):
    b = open_bundle(bundle)
    [run] = b.manifest.gates
    assert (run.precision, run.puzzles, run.data, run.file, run.passed) == ("fp16", 64, "sudoku6 val", GATE_SET, True)
    assert list(run.graphs) == ["segment.fp16"] and GATE_SET in b.manifest.files
    assert {c["name"] for c in run.graphs["segment.fp16"]} == {"solved_agreement", "halting_agreement",
                                                               "accuracy_drop"}
    gate_set = b.gate_set(run)
    assert gate_set["inputs"].shape == (64, 36) and gate_set["labels"].any()
    report = json.loads((bundle.parent / "b-parity" / "parity.json").read_text())
    assert report["bundle"] == str(bundle) and list(report["graphs"]) == ["segment.fp16"]


def test_verify_reports_fp16_on_the_golden_puzzles_and_gates_it_on_the_gate_set(bundle, capsys):
    code, out, err = run_cli(capsys, "verify", str(bundle), "--graph", "segment.fp16")
    assert code == 0, out + err
    golden, rerun = out.splitlines()[-2:]
    assert golden.startswith(f"segment.fp16: {GOLDEN} puzzles") and "(against fp32: reported" in golden
    assert rerun.startswith("PASS segment.fp16: 64 puzzles, solved agreement 100.0%") and rerun.endswith(RERUN)


def test_one_golden_halting_step_off_no_longer_fails_fp16_verify(bundle, tmp_path, capsys):
    moved = _one_golden_halting_step_moved(bundle, tmp_path / "moved")
    code, out, err = run_cli(capsys, "verify", str(moved), "--graph", "segment.fp16")
    assert code == 0, out + err
    assert f"halting agreement {100 * (GOLDEN - 1) / GOLDEN:.1f}%" in out.splitlines()[-2]


def test_without_a_gate_set_the_golden_puzzles_still_gate_fp16(ungated, tmp_path, capsys):
    b = open_bundle(ungated)
    assert b.manifest.gates == [] and GATE_SET not in b.manifest.files
    moved = _one_golden_halting_step_moved(ungated, tmp_path / "moved")
    assert "segment.fp16: halting_agreement" in one_line_error(capsys, "verify", str(moved), "--graph", "segment.fp16")


def test_an_fp16_run_that_halts_elsewhere_on_the_gate_set_fails_verify(bundle, tmp_path, capsys):
    with np.load(bundle / GATE_SET) as f:
        steps = f["steps"]
    with_arrays_replaced(bundle, tmp_path / "b", GATE_SET, steps=np.where(steps < steps.max(), steps + 1, steps - 1))
    line = one_line_error(capsys, "verify", str(tmp_path / "b"), "--graph", "segment.fp16")
    assert "segment.fp16: halting_agreement" in line


def test_int8_is_never_exported_without_its_gate(tmp_path, capsys):
    line = one_line_error(capsys, "export", str(DEMO), "-o", str(tmp_path / "b"), "--int8", "--gate-puzzles", "0")
    assert "--gate-puzzles 0" in line and not (tmp_path / "b").exists()

"""INT8 graphs on OpenVINO: hrm-edge's own INT8 graph compiles to int8 kernels; its float sites run in f32,
or, with the fast-float opt-in, in bf16 only where the bundle's golden puzzles still pass the INT8 gate."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("openvino", reason="the [openvino] extra is not installed")

from hrm_edge.act import parse_policy
from hrm_edge.bundle import open_bundle
from hrm_edge.runtimes.openvino.session import FAST_FLOAT_ENV, open_segment_runner
from hrm_edge.runtimes.solver import GraphSolver, runnable_graphs

INT8 = "segment.int8-cpu"


@pytest.fixture(scope="module")
def bundle(tiny_ckpt, tmp_path_factory):
    from hrm_edge.cli.main import main

    out = tmp_path_factory.mktemp("ov-int8") / "bundle"
    with pytest.raises(SystemExit) as exc:
        main(["export", str(tiny_ckpt), "-o", str(out), "--int8", "--calib-size", "16", "--no-fp16",
              "--no-cpu-fused", "--golden", "4"])
    assert exc.value.code == 0
    return out


def test_with_the_opt_in_the_int8_graph_runs_on_openvino_with_its_float_sites_in_bf16(bundle, monkeypatch):
    monkeypatch.setenv(FAST_FLOAT_ENV, "1")
    b = open_bundle(bundle)
    assert INT8 in runnable_graphs(b, "openvino")
    solver = GraphSolver(b, INT8, "openvino", threads=1)
    assert solver.inference_precision == "bf16"  # the golden puzzles pass the INT8 gate in bf16
    ref, info = b.reference(), b.manifest.reference
    res = solver.solve(ref["inputs"], ref["puzzle_ids"], parse_policy(info.policy), info.max_steps)
    assert (res.steps == ref["steps"]).mean() >= 0.95  # the INT8 gate's halting bound


def test_float_sites_stay_f32_by_default(bundle, monkeypatch):
    monkeypatch.delenv(FAST_FLOAT_ENV, raising=False)
    _, hint = open_segment_runner(open_bundle(bundle), INT8, threads=1)
    assert hint == "f32"


def test_golden_halting_steps_that_bf16_does_not_reproduce_keep_the_float_sites_in_fp32(bundle, tmp_path,
                                                                                        monkeypatch):
    monkeypatch.setenv(FAST_FLOAT_ENV, "1")
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    ref = dict(np.load(copy / "reference.npz"))
    ref["steps"] = np.where(ref["steps"] == 1, 2, 1).astype(ref["steps"].dtype)  # no candidate halts there
    np.savez(copy / "reference.npz", **ref)
    _, hint = open_segment_runner(open_bundle(copy, verify_hashes=False), INT8, threads=1)
    assert hint == "f32"

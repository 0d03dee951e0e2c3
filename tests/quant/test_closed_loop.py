"""The search's closed loop stops a candidate at its first certain failure, and decides as a complete run."""

from __future__ import annotations

import dataclasses

import pytest

from hrm_edge.quant.search import ClosedLoop


@pytest.fixture(scope="module")
def loop_of(demo):
    """ClosedLoop over the demo pipeline's 64 calibration puzzles in batches of 8, with given gates."""
    pipe = demo["pipe"]
    ref = pipe.closed_loop

    def make(gates):
        return ClosedLoop(ref.tokens, ref.puzzle_ids, ref.labels, ref.reference, ref.h_init, ref.l_init,
                          ref.total_len, ref.policy, ref.max_steps, gates, batch_size=8, threads=1)
    return make


def test_a_candidate_that_cannot_pass_stops_before_the_last_batch(demo, loop_of):
    """Identical outputs on every puzzle (min_exact_agreement 1.0) cannot hold for the all-int8 graph:
    it is condemned at its first differing puzzle's batch, and the complete run fails too."""
    strict = dataclasses.replace(demo["pipe"].gates, min_exact_agreement=1.0, min_halting_agreement=0.0)
    loop = loop_of(strict)
    early = loop.evaluate(demo["graphs"]["cpu"], early_stop=True)
    full = loop.evaluate(demo["graphs"]["cpu"])
    assert not early["passed"] and not full["passed"]
    assert early["stopped_early"]["gate"] == "exact_agreement"
    assert early["stopped_early"]["of"] == 64
    assert early["stopped_early"]["puzzles"] % 8 == 0 and early["stopped_early"]["puzzles"] < 64
    assert early["metrics"]["puzzles"] == early["stopped_early"]["puzzles"]
    assert "stopped_early" not in full and full["metrics"]["puzzles"] == 64


def test_a_passing_candidate_runs_every_puzzle_and_reports_what_a_complete_run_does(demo, loop_of):
    loop = loop_of(demo["pipe"].gates)
    early = loop.evaluate(demo["pipe"].fp32, early_stop=True)
    full = loop.evaluate(demo["pipe"].fp32)
    assert early["passed"] and full["passed"]
    assert "stopped_early" not in early
    assert early["metrics"] == full["metrics"]


@pytest.fixture(scope="module")
def complete_tensorrt_run(demo, loop_of):
    """The all-int8 tensorrt graph's complete closed-loop metrics (gates do not change the run)."""
    return loop_of(demo["pipe"].gates).evaluate(demo["graphs"]["tensorrt"])["metrics"]


@pytest.mark.parametrize("halting", [0.85, 0.95, 0.99])
def test_early_stop_never_changes_the_decision(demo, loop_of, complete_tensorrt_run, halting):
    """The search's gates with halting agreement from lenient to strict, on the all-int8 tensorrt graph."""
    from hrm_edge.parity import gate

    gates = dataclasses.replace(demo["pipe"].gates, min_halting_agreement=halting)
    complete = all(c["passed"] for c in gate(complete_tensorrt_run, gates))
    assert loop_of(gates).evaluate(demo["graphs"]["tensorrt"], early_stop=True)["passed"] == complete

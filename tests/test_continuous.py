"""Continuous ACT batching (`hrm_edge.continuous`): with any number of slots, any policy and puzzles
arriving at any segment boundary, every puzzle's steps and prediction equal solving it alone.

Real runners on the HRM 6x6 demo: the PyTorch reference runner on its checkpoint, the ONNX Runtime
runner on its exported bundle (the portable segment graph, and the fused CPU graph that takes x from
its embed graph)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hrm_edge.act import halt_rule, parse_policy, run_act
from hrm_edge.continuous import ContinuousACT, solve_continuous
from hrm_edge.errors import PolicyError
from tests.serving.demo import DEMO, demo_bundle, demo_puzzles

POLICIES = ["fixed", "q", "threshold:0.6"]
MAX_STEPS = 8
N = 12

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def puzzles():
    return demo_puzzles(N)


@pytest.fixture(scope="module")
def runners(tmp_path_factory):
    """name -> a fresh SegmentRunner factory, and the model's puzzle ids of the demo puzzles."""
    from hrm_edge.bundle import open_bundle
    from hrm_edge.model.checkpoint import load_checkpoint
    from hrm_edge.model.runner import TorchSegmentRunner
    from hrm_edge.runtimes.solver import GraphSolver

    model = load_checkpoint(DEMO / "model.pt").model.set_compute_dtype("float32")
    bundle = open_bundle(demo_bundle(tmp_path_factory))
    solvers = {g: GraphSolver(bundle, g, threads=1) for g in ("segment.fp32", "segment.fp32-cpufused")}
    return {"torch": lambda: TorchSegmentRunner(model),
            "ort segment.fp32": lambda: solvers["segment.fp32"].segment_runner,
            "ort segment.fp32-cpufused": lambda: solvers["segment.fp32-cpufused"].segment_runner}


@pytest.fixture(scope="module")
def alone(runners, puzzles):
    """(runner, policy) -> per-puzzle (steps, prediction, q_halt, q_continue), each puzzle solved alone."""
    cache = {}

    def get(name, policy):
        if (name, policy) not in cache:
            runner = runners[name]()
            rows = [run_act(runner, puzzles.inputs[i:i + 1], puzzles.puzzle_ids[i:i + 1], parse_policy(policy),
                            MAX_STEPS) for i in range(N)]
            cache[name, policy] = rows
        return cache[name, policy]

    return get


def assert_same_as_alone(finished, alone_rows):
    assert sorted(f.key for f in finished) == list(range(len(alone_rows)))  # each exactly once
    for f in finished:
        want = alone_rows[f.key]
        assert f.steps == int(want.steps[0]), f"puzzle {f.key}"
        np.testing.assert_array_equal(f.prediction, want.predictions[0])
        np.testing.assert_allclose([f.q_halt, f.q_continue], [want.q_halt[0], want.q_continue[0]], atol=1e-5)


def test_demo_puzzles_halt_at_different_steps_under_q(alone):
    steps = sorted({int(r.steps[0]) for r in alone("torch", "q")})
    assert len(steps) >= 3, steps  # a mixed-difficulty set: otherwise continuous batching proves nothing


@pytest.mark.parametrize("name", ["torch", "ort segment.fp32", "ort segment.fp32-cpufused"])
@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=8)
@given(data=st.data())
def test_interleaved_arrivals_give_each_puzzle_its_alone_result(runners, alone, puzzles, name, policy, data):
    slots = data.draw(st.integers(1, 5), label="slots")
    # arrival[i]: the segment boundary at which puzzle i is submitted (arbitrary order and bunching)
    arrival = data.draw(st.lists(st.integers(0, 12), min_size=N, max_size=N), label="arrival")
    loop = ContinuousACT(runners[name](), slots)
    mode, threshold = halt_rule(parse_policy(policy))
    finished, boundary = [], 0
    while len(finished) < N:
        due = [i for i in range(N) if arrival[i] == boundary]
        if due:
            loop.submit(due, puzzles.inputs[due], puzzles.puzzle_ids[due], mode, threshold, MAX_STEPS)
        finished += loop.step()
        assert loop.in_flight <= slots
        boundary += 1
    assert loop.idle
    assert_same_as_alone(finished, alone(name, policy))


@pytest.mark.parametrize("name", ["torch", "ort segment.fp32-cpufused"])
def test_puzzles_with_different_policies_share_the_slots(runners, alone, puzzles, name):
    loop = ContinuousACT(runners[name](), 4)
    for k, policy in enumerate(POLICIES):
        keys = list(range(k, N, len(POLICIES)))
        loop.submit_policy(keys, puzzles.inputs[keys], puzzles.puzzle_ids[keys], parse_policy(policy), MAX_STEPS)
    finished = loop.drain()
    for policy_index, policy in enumerate(POLICIES):
        mine = [f for f in finished if f.key % len(POLICIES) == policy_index]
        want = alone(name, policy)
        for f in mine:
            assert f.steps == int(want[f.key].steps[0])
            np.testing.assert_array_equal(f.prediction, want[f.key].predictions[0])


def test_free_slots_are_refilled_at_every_boundary(runners, alone, puzzles):
    """While puzzles wait, every segment runs a full batch; the rows run add up to the puzzles' steps."""
    loop = ContinuousACT(runners["ort segment.fp32"](), 4)
    loop.submit_policy(range(N), puzzles.inputs, puzzles.puzzle_ids, parse_policy("q"), MAX_STEPS)
    rows_while_queued = []
    while not loop.idle:
        before = loop.row_segments
        loop.step()
        if loop.queued:  # puzzles still waited after this boundary's admissions
            rows_while_queued.append(loop.row_segments - before)
    total_steps = sum(int(r.steps[0]) for r in alone("ort segment.fp32", "q"))
    assert loop.row_segments == total_steps
    assert rows_while_queued and set(rows_while_queued) == {4}
    assert loop.segments <= total_steps // 4 + MAX_STEPS


def test_solve_continuous_equals_run_act_on_a_batch(runners, puzzles):
    policy = parse_policy("q")
    got = solve_continuous(runners["ort segment.fp32"](), puzzles.inputs, puzzles.puzzle_ids, policy, MAX_STEPS, 3)
    want = run_act(runners["ort segment.fp32"](), puzzles.inputs, puzzles.puzzle_ids, policy, MAX_STEPS)
    np.testing.assert_array_equal(got.steps, want.steps)
    np.testing.assert_array_equal(got.predictions, want.predictions)


def test_a_bad_halting_rule_is_refused_before_queueing(runners, puzzles):
    loop = ContinuousACT(runners["torch"](), 2)
    with pytest.raises(PolicyError, match="halt_mode 7"):
        loop.submit([0], puzzles.inputs[:1], puzzles.puzzle_ids[:1], 7, 0.0, MAX_STEPS)
    with pytest.raises(PolicyError, match="max_steps"):
        loop.submit([0], puzzles.inputs[:1], puzzles.puzzle_ids[:1], 1, 0.0, 0)
    assert loop.idle

"""The continuous-batching benchmark's accounting (`hrm_edge.bench.continuous`): on the real ORT runner
both schedules run exactly the row-segments the puzzles need (sum of their steps); continuous
batching only saves segment calls."""

from __future__ import annotations

import numpy as np

from tests.serving.demo import demo_bundle, demo_puzzles


def test_both_schedules_run_the_same_row_segments_and_continuous_fewer_calls(tmp_path_factory):
    from hrm_edge.act import parse_policy, run_act
    from hrm_edge.bench.continuous import compare_schedules, segment_costs
    from hrm_edge.bundle import open_bundle
    from hrm_edge.runtimes.solver import GraphSolver

    bundle = open_bundle(demo_bundle(tmp_path_factory))
    runner = GraphSolver(bundle, "segment.fp32", threads=1).segment_runner
    pset = demo_puzzles(24)
    ids = bundle.model_puzzle_ids(pset.puzzle_ids)
    cost = segment_costs(runner, pset.inputs, ids, repeats=1)
    assert cost["batch"] == [1, 2, 4, 8, 16]  # batches up to the 24 puzzles given
    assert all(ms > 0 for ms in cost["cpu"]["ms_per_segment"])
    row = compare_schedules(runner, pset.inputs, ids, slots=4, steps=8, repeats=1, cost=cost)
    steps = run_act(runner, pset.inputs, ids, parse_policy("q"), 8).steps
    assert row["shrinking"]["row_segments"] == row["continuous"]["row_segments"] == int(steps.sum())
    batch_max = sum(int(steps[i:i + 4].max()) for i in range(0, 24, 4))  # shrinking: each batch runs its slowest
    assert row["shrinking"]["segment_calls"] == batch_max
    assert row["continuous"]["segment_calls"] < batch_max
    assert np.isfinite(row["predicted_ratio"]) and row["call_ratio"] == batch_max / row["continuous"]["segment_calls"]

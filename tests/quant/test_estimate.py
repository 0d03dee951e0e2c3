"""The duration estimate `export --int8` prints before its long phases (hrm_edge.quant.estimate)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hrm_edge.quant import estimate as E


def test_each_phase_is_its_count_of_puzzle_segments_times_the_measured_cost():
    # 0.1 s per puzzle-segment, 64 puzzles x 8 steps, 10 weight sites, one dynamic target, no GPTQ
    est = E.estimate_export(0.1, puzzles=64, max_steps=8, sites=10, gptq_per_step=0, gate_puzzles=32)
    assert est.calibration == 0.1 * 64 * 8  # the fp32 rollout
    assert est.sensitivity == 0.1 * 11 * 8 * 8  # (sites + 1) open-loop passes of 8 samples per step
    assert est.search == 0.1 * 16 * 64 * 8  # at most 16 closed-loop runs
    # at most: the calibration closed loop, then the reference and the graph on val, all at the fp32 cost
    assert est.gate_bound == 0.1 * (64 * 8 + 2 * 32 * 8)
    assert est.gate == pytest.approx(0.1 * (E.INT8_COST * (64 + 32) * 8 + 32 * 8))  # INT8 segments cost less
    assert est.total == est.calibration + est.sensitivity + est.search + est.gate_bound


def test_the_gate_counts_every_gated_graph():
    # cpu flavour with its fused graph (two INT8 graphs, two calibration closed loops) and the FP16 graph
    est = E.estimate_export(0.1, puzzles=64, max_steps=8, sites=10, gptq_per_step=0, gate_puzzles=32,
                            int8_graphs=2, gate_graphs=3)
    assert est.gate_bound == 0.1 * (2 * 64 * 8 + (1 + 3) * 32 * 8)
    assert est.gate == pytest.approx(0.1 * (E.INT8_COST * 2 * (64 + 32) * 8 + (1 + 1) * 32 * 8))


def test_a_graph_left_to_the_validation_gate_costs_no_calibration_closed_loop():
    # the CLI's export: cpu's fused graph is gated on the validation puzzles only
    est = E.estimate_export(0.1, puzzles=64, max_steps=8, sites=10, gptq_per_step=0, gate_puzzles=32,
                            int8_graphs=2, gate_graphs=3, calib_loops=1)
    assert est.gate_bound == 0.1 * (1 * 64 * 8 + (1 + 3) * 32 * 8)
    assert est.gate == pytest.approx(0.1 * (E.INT8_COST * (64 + 2 * 32) * 8 + (1 + 1) * 32 * 8))


def test_without_a_validation_gate_the_gate_is_the_calibration_closed_loop():
    est = E.estimate_export(0.1, puzzles=64, max_steps=8, sites=10, gptq_per_step=0)
    assert est.gate_bound == 0.1 * 64 * 8
    assert est.gate == pytest.approx(0.1 * E.INT8_COST * 64 * 8)


def test_a_static_target_adds_one_range_pass_over_the_rollout():
    dynamic = E.estimate_export(0.1, puzzles=64, max_steps=8, sites=10, gptq_per_step=0)
    static = E.estimate_export(0.1, puzzles=64, max_steps=8, sites=10, gptq_per_step=0, static_targets=1)
    assert static.calibration - dynamic.calibration == 0.1 * 64 * 8


def test_the_printed_line_names_the_likely_total_and_the_bound():
    line = E.estimate_export(0.05, puzzles=1024, max_steps=8, sites=50, gate_puzzles=256).line()
    assert line.startswith("estimate: int8 export ~") and "at most" in line and "50.0 ms per puzzle" in line


class _ScriptedModel(torch.nn.Module):
    """A model whose segments take scripted times on a fake clock (seconds per call, in order)."""

    def __init__(self, clock: list[float], durations: list[float]) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.clock, self.durations = clock, list(durations)

    def initial_carry(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(batch), torch.zeros(batch)

    def segment(self, *args: object) -> None:
        self.clock[0] += self.durations.pop(0)


def test_the_unit_cost_is_the_fastest_of_several_timed_segments(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(E.time, "perf_counter", lambda: clock[0])
    # warm-up 5 s, then a segment slowed by a burst of load (3.2 s) and two normal ones (0.8, 0.9 s)
    model = _ScriptedModel(clock, [5.0, 3.2, 0.8, 0.9])
    tokens, ids = np.zeros((16, 4), np.int64), np.zeros(16, np.int64)
    assert E.time_segment(model, tokens, ids, batch=16, repeats=3) == pytest.approx(0.8 / 16)
    assert model.durations == []

"""The ACT loop: halting policies, per-sample halting, shrinking batches, batch == one by one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hrm_edge.act import parse_policy, run_act, solve_in_batches
from hrm_edge.errors import PolicyError
from hrm_edge.model.hrm import HRM
from hrm_edge.model.runner import TorchSegmentRunner
from hrm_edge.progress import ClosedLoopProgress
from tests.model_helpers import q_model


class ScriptedRunner:
    """A runner whose q values are scripted per puzzle: puzzle i wants to halt at step halt_at[i].

    It records the active batch size of every step, to check that halted puzzles leave."""

    def __init__(self, halt_at: list[int]) -> None:
        self.halt_at = np.array(halt_at)
        self.batch_sizes: list[int] = []

    def start(self, tokens, puzzle_ids):
        self.active = tokens[:, 0].copy()  # tokens[:, 0] holds the puzzle's index
        self.step_no = 0
        self.tokens = tokens

    def step(self):
        self.step_no += 1
        self.batch_sizes.append(len(self.active))
        want = self.halt_at[self.active] <= self.step_no
        q_halt = np.where(want, 1.0, -1.0).astype(np.float32)
        return q_halt, np.zeros_like(q_halt)

    def predictions(self, rows):
        # prediction encodes (puzzle index, step) so the test can see which step was reported
        orig = self.active[rows]
        return np.stack([np.full(self.tokens.shape[1], 100 * i + self.step_no) for i in orig])

    def logits(self, rows):
        return np.zeros((len(rows), self.tokens.shape[1], 3), np.float32)

    def keep(self, rows):
        self.active = self.active[rows]


def indexed_tokens(n: int) -> np.ndarray:
    return np.repeat(np.arange(n)[:, None], 4, axis=1)


def run_scripted(halt_at, policy, max_steps, **kw):
    runner = ScriptedRunner(halt_at)
    n = len(halt_at)
    res = run_act(runner, indexed_tokens(n), np.zeros(n, np.int64), parse_policy(policy), max_steps, **kw)
    return res, runner


def test_fixed_policy_runs_exactly_max_steps_for_every_puzzle():
    res, runner = run_scripted([1, 2, 3], "fixed", 5)
    assert res.steps.tolist() == [5, 5, 5]
    assert runner.batch_sizes == [3, 3, 3, 3, 3]


def test_q_policy_halts_each_puzzle_at_its_own_step():
    res, _ = run_scripted([3, 1, 2, 9], "q", 5)
    assert res.steps.tolist() == [3, 1, 2, 5]


def test_halted_puzzles_leave_the_active_batch():
    _, runner = run_scripted([3, 1, 2, 9], "q", 5)
    assert runner.batch_sizes == [4, 3, 2, 1, 1]


def test_each_puzzle_reports_the_prediction_of_its_halting_step():
    res, _ = run_scripted([3, 1, 2, 9], "q", 5)
    assert res.predictions[:, 0].tolist() == [3, 101, 202, 305]


def test_recorded_steps_are_padded_after_halting():
    res, _ = run_scripted([2, 1], "q", 3, record_steps=True)
    assert res.step_predictions[:, 0, 0].tolist() == [1, 2, 0]
    assert res.step_predictions[:, 1, 0].tolist() == [101, 0, 0]
    assert np.isnan(res.step_q_halt[1, 1]) and res.step_q_halt[0, 1] == 1.0


def test_max_steps_caps_every_policy_and_may_exceed_training_steps():
    res, _ = run_scripted([40, 40], "q", 20)
    assert res.steps.tolist() == [20, 20]


def test_threshold_policy_compares_sigmoid_of_q_halt():
    policy = parse_policy("threshold:0.9")
    q = np.array([np.log(0.89 / 0.11), np.log(0.91 / 0.09)], np.float32)
    assert policy.halts(q, np.full(2, 100.0, np.float32)).tolist() == [False, True]


@pytest.mark.parametrize("text", ["threshold:1.5", "threshold:0", "threshold:x", "sometimes"])
def test_bad_policy_strings_are_rejected(text):
    with pytest.raises(PolicyError):
        parse_policy(text)


def test_solve_in_batches_concatenates_chunks_in_order():
    runner = ScriptedRunner([1, 2, 3, 4, 5])
    res = solve_in_batches(runner, indexed_tokens(5), np.zeros(5, np.int64), parse_policy("q"), 9,
                           batch_size=2)
    assert res.steps.tolist() == [1, 2, 3, 4, 5]


class RecordingProgress:
    def __init__(self) -> None:
        self.events: list[object] = []

    def segment(self) -> None:
        self.events.append("s")

    def chunk_done(self, puzzles: int) -> None:
        self.events.append(puzzles)


def test_solve_in_batches_reports_every_segment_and_every_finished_chunk():
    progress = RecordingProgress()
    solve_in_batches(ScriptedRunner([1, 2, 3, 4, 5]), indexed_tokens(5), np.zeros(5, np.int64), parse_policy("q"), 9,
                     batch_size=2, progress=progress)
    # chunks [0, 1] -> 2 segments, [2, 3] -> 4 segments, [4] -> 5 segments
    assert progress.events == ["s"] * 2 + [2] + ["s"] * 4 + [2] + ["s"] * 5 + [1]


def test_closed_loop_progress_counts_skipped_segments_and_prints_a_line_without_a_terminal(capsys):
    with ClosedLoopProgress("reference", puzzles=5, batch=2, max_steps=9, every_s=0.0) as bar:
        solve_in_batches(ScriptedRunner([1, 2, 3, 4, 5]), indexed_tokens(5), np.zeros(5, np.int64),
                         parse_policy("q"), 9, batch_size=2, progress=bar)
    assert (bar.total, bar.done_segments, bar.done_puzzles) == (27, 27, 5)  # 3 chunks x 9: an upper bound
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("reference: 5/5 puzzles done, 27 of at most 27 segment calls")


def test_closed_loop_progress_is_silent_for_a_short_run_and_when_disabled(capsys):
    for bar in (ClosedLoopProgress("short", 5, 2, 9), ClosedLoopProgress("off", 5, 2, 9, enabled=False, every_s=0)):
        with bar:
            solve_in_batches(ScriptedRunner([1, 2, 3, 4, 5]), indexed_tokens(5), np.zeros(5, np.int64),
                             parse_policy("q"), 9, batch_size=2, progress=bar)
    assert capsys.readouterr().err == ""


@pytest.fixture(scope="module")
def tiny_model() -> HRM:
    return q_model(halt_max_steps=6)


def test_batch_gives_the_same_tokens_and_steps_as_one_by_one(tiny_model):
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 11, (8, 81))
    ids = np.zeros(8, np.int64)
    runner = TorchSegmentRunner(tiny_model)
    batch = run_act(runner, tokens, ids, parse_policy("q"), 6)
    singles = [run_act(runner, tokens[i:i + 1], ids[i:i + 1], parse_policy("q"), 6) for i in range(8)]
    assert len(set(batch.steps.tolist())) >= 3, "the seeded model should halt puzzles at several steps"
    assert batch.steps.tolist() == [s.steps[0] for s in singles]
    assert np.array_equal(batch.predictions, np.concatenate([s.predictions for s in singles]))


def test_torch_runner_matches_calling_segment_directly(tiny_model):
    rng = np.random.default_rng(1)
    tokens = rng.integers(1, 11, (3, 81))
    res = run_act(TorchSegmentRunner(tiny_model), tokens, np.zeros(3, np.int64), parse_policy("fixed"), 3,
                  record_logits=True)
    t = torch.from_numpy(tokens)
    z_H, z_L = tiny_model.initial_carry(3)
    with torch.no_grad():
        for step in range(3):
            z_H, z_L, logits, _, _ = tiny_model.segment(z_H, z_L, t, torch.zeros(3, dtype=torch.long))
            np.testing.assert_array_equal(res.step_logits[step], logits.numpy())
    np.testing.assert_array_equal(res.predictions, logits.argmax(-1).numpy())

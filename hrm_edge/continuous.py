"""Continuous batching of the ACT loop (numpy only, no torch): a scheduler beside `hrm_edge.act.run_act`.

`run_act` solves one batch and shrinks it as puzzles halt, so one slow puzzle keeps the batch (and
the device) running for few rows. `ContinuousACT` keeps up to `slots` puzzles in flight instead: at
every segment boundary the puzzles that halted leave with their result and queued puzzles join
(initial carry, input embedded) through the runner's `admit`, so the batch stays full while work is
queued. Each puzzle carries its own halting rule and step cap, so requests with different policies
share one batch; a puzzle's steps and prediction are those `run_act` gives it alone (each row of a
segment depends only on that row's carry and input).

Halting rules are the `act_loop` graph's (`hrm_edge.contract.HALT_MODES`): mode 0 runs `max_steps`
segments, 1 halts when q_halt > q_continue, 2 when q_halt >= threshold (a logit, compared in fp32
as `HaltingPolicy.halts` does).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

import numpy as np

from hrm_edge.act import HaltingPolicy, SegmentRunner, SolveResult, halt_rule
from hrm_edge.contract import HALT_MODES
from hrm_edge.errors import PolicyError

FIXED, Q, THRESHOLD = HALT_MODES["fixed"], HALT_MODES["q"], HALT_MODES["threshold"]


@dataclass(frozen=True)
class Finished:
    """One solved puzzle: its key, prediction int64 [S], segments used, and the q values (fp32) of
    its halting segment."""

    key: Hashable
    prediction: np.ndarray
    steps: int
    q_halt: float
    q_continue: float


@dataclass
class _Queued:
    key: Hashable
    tokens: np.ndarray  # int64 [S]
    puzzle_id: int
    halt_mode: int
    threshold: float
    max_steps: int


@dataclass
class _Slots:
    """Per active row of the runner (same order): key, halting rule, cap and segments run."""

    keys: list[Hashable] = field(default_factory=list)
    halt_mode: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    threshold: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    max_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def append(self, items: list[_Queued]) -> None:
        self.keys += [q.key for q in items]
        self.halt_mode = np.concatenate([self.halt_mode, [q.halt_mode for q in items]]).astype(np.int64)
        self.threshold = np.concatenate([self.threshold, [q.threshold for q in items]]).astype(np.float32)
        self.max_steps = np.concatenate([self.max_steps, [q.max_steps for q in items]]).astype(np.int64)
        self.steps = np.concatenate([self.steps, np.zeros(len(items), np.int64)])

    def keep(self, rows: np.ndarray) -> None:
        self.keys = [self.keys[i] for i in rows]
        self.halt_mode, self.threshold = self.halt_mode[rows], self.threshold[rows]
        self.max_steps, self.steps = self.max_steps[rows], self.steps[rows]


class ContinuousACT:
    """The ACT loop with a fixed number of slots, fed from a queue.

    runner: a `SegmentRunner` with `admit` (every hrm-edge segment runner has it). slots: the most
    puzzles in flight (the runner's batch never exceeds it). `submit` queues puzzles; each `step()`
    fills free slots from the queue, runs one segment for the rows in flight and returns the
    puzzles that halted after it. Not thread-safe: one thread drives it.
    """

    def __init__(self, runner: SegmentRunner, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.runner, self.slots = runner, slots
        self._queue: deque[_Queued] = deque()
        self._rows = _Slots()
        self.segments = 0  # segments run (runner calls) since construction
        self.row_segments = 0  # sum over segments of the rows in flight

    @property
    def in_flight(self) -> int:
        """Puzzles in the runner's batch."""
        return len(self._rows.keys)

    @property
    def queued(self) -> int:
        """Puzzles waiting for a slot."""
        return len(self._queue)

    @property
    def idle(self) -> bool:
        """Nothing in flight and nothing queued."""
        return not self._queue and not self._rows.keys

    def submit(self, keys: Iterable[Hashable], tokens: np.ndarray, puzzle_ids: np.ndarray,
               halt_mode: int, threshold: float, max_steps: int) -> None:
        """Queue puzzles: tokens int64 [n, S], puzzle_ids int64 [n] (the model's ids), one key each
        (returned with the result), all with one halting rule (`halt_rule`) and step cap."""
        keys = list(keys)
        tokens = np.ascontiguousarray(tokens, np.int64)
        puzzle_ids = np.ascontiguousarray(puzzle_ids, np.int64)
        if tokens.ndim != 2 or puzzle_ids.shape != (tokens.shape[0],) or len(keys) != tokens.shape[0]:
            raise ValueError(f"tokens must be [n, S], puzzle_ids [n] and n keys; got {tokens.shape}, "
                             f"{puzzle_ids.shape} and {len(keys)} keys")
        if halt_mode not in HALT_MODES.values():
            raise PolicyError(f"halt_mode {halt_mode} is not one of {sorted(HALT_MODES.values())} ({HALT_MODES})")
        if max_steps < 1:
            raise PolicyError(f"max_steps must be >= 1, got {max_steps}")
        self._queue.extend(_Queued(k, t, int(p), int(halt_mode), float(threshold), int(max_steps))
                           for k, t, p in zip(keys, tokens, puzzle_ids, strict=True))

    def submit_policy(self, keys: Iterable[Hashable], tokens: np.ndarray, puzzle_ids: np.ndarray,
                      policy: HaltingPolicy, max_steps: int) -> None:
        """`submit` with a `HaltingPolicy`."""
        mode, threshold = halt_rule(policy)
        self.submit(keys, tokens, puzzle_ids, mode, threshold, max_steps)

    def _admit(self) -> None:
        free = self.slots - self.in_flight
        if free <= 0 or not self._queue:
            return
        items = [self._queue.popleft() for _ in range(min(free, len(self._queue)))]
        tokens = np.stack([q.tokens for q in items])
        puzzle_ids = np.array([q.puzzle_id for q in items], np.int64)
        if self.in_flight:
            self.runner.admit(tokens, puzzle_ids)
        else:
            self.runner.start(tokens, puzzle_ids)
        self._rows.append(items)

    def step(self) -> list[Finished]:
        """Fill free slots, run one segment, retire and return the puzzles that halted."""
        self._admit()
        rows = self._rows
        if not rows.keys:
            return []
        q_halt, q_continue = self.runner.step()
        self.segments += 1
        self.row_segments += len(rows.keys)
        rows.steps += 1
        halted = ((rows.halt_mode == Q) & (q_halt > q_continue)) \
            | ((rows.halt_mode == THRESHOLD) & (q_halt >= rows.threshold)) | (rows.steps >= rows.max_steps)
        if not halted.any():
            return []
        done = np.flatnonzero(halted)
        preds = self.runner.predictions(done)
        finished = [Finished(rows.keys[i], preds[j], int(rows.steps[i]), float(q_halt[i]), float(q_continue[i]))
                    for j, i in enumerate(done)]
        kept = np.flatnonzero(~halted)
        if kept.size:
            self.runner.keep(kept)
        rows.keep(kept)
        return finished

    def drain(self) -> list[Finished]:
        """Step until nothing is queued or in flight; every result, in the order puzzles halted."""
        out: list[Finished] = []
        while not self.idle:
            out += self.step()
        return out


def solve_continuous(runner: SegmentRunner, tokens: np.ndarray, puzzle_ids: np.ndarray, policy: HaltingPolicy,
                     max_steps: int, slots: int) -> SolveResult:
    """Solve N puzzles with `slots` in flight; the same result as `run_act` on each puzzle alone."""
    tokens = np.ascontiguousarray(tokens, np.int64)
    n, seq = tokens.shape
    result = SolveResult(predictions=np.zeros((n, seq), np.int64), steps=np.zeros(n, np.int32),
                         q_halt=np.zeros(n, np.float32), q_continue=np.zeros(n, np.float32))
    loop = ContinuousACT(runner, slots)
    loop.submit_policy(range(n), tokens, puzzle_ids, policy, max_steps)
    for f in loop.drain():
        result.predictions[f.key], result.steps[f.key] = f.prediction, f.steps
        result.q_halt[f.key], result.q_continue[f.key] = f.q_halt, f.q_continue
    return result

"""The ACT loop with early exit, shared by every runtime (numpy only, no torch).

A runtime supplies a `SegmentRunner`: it owns the carry (on whatever device) and runs
one segment for the puzzles still active. The loop here decides, per puzzle, when to
stop, and drops halted puzzles from the active batch so compute shrinks as puzzles finish.

Halting policies:
- `fixed`: always `max_steps` segments (the official evaluation);
- `q`: halt when q_halt > q_continue (the training-time rule);
- `threshold:<p>`: halt when sigmoid(q_halt) >= p, 0 < p < 1.
Every policy halts at `max_steps`; `max_steps` may exceed the training `halt_max_steps`
(inference-time scaling).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from hrm_edge.contract import HALT_MODES
from hrm_edge.errors import PolicyError


@dataclass(frozen=True)
class HaltingPolicy:
    """When to stop a puzzle. `kind` is "fixed", "q" or "threshold"."""

    kind: str
    threshold: float = 0.5

    def __str__(self) -> str:
        return f"threshold:{self.threshold:g}" if self.kind == "threshold" else self.kind

    def halts(self, q_halt: np.ndarray, q_continue: np.ndarray) -> np.ndarray:
        """bool [b]: which puzzles stop after this segment (before the step cap)."""
        if self.kind == "fixed":
            return np.zeros(q_halt.shape, dtype=bool)
        if self.kind == "q":
            return q_halt > q_continue
        return q_halt >= self.threshold_logit  # sigmoid(q) >= p

    @property
    def threshold_logit(self) -> float:
        """The threshold as a q_halt logit: log(p / (1 - p))."""
        return math.log(self.threshold / (1.0 - self.threshold))


def halt_rule(policy: HaltingPolicy) -> tuple[int, float]:
    """(halt_mode, threshold logit) of a policy: the `act_loop` graph's encoding of it (`HALT_MODES`)."""
    if policy.kind == "threshold":
        return HALT_MODES["threshold"], policy.threshold_logit
    return HALT_MODES[policy.kind], 0.0


def parse_policy(text: str) -> HaltingPolicy:
    """Parse "fixed", "q" or "threshold:<p>" (0 < p < 1)."""
    text = text.strip().lower()
    if text in ("fixed", "q"):
        return HaltingPolicy(text)
    if text.startswith("threshold:"):
        try:
            p = float(text.split(":", 1)[1])
        except ValueError:
            raise PolicyError(f"halting policy {text!r}: threshold is not a number") from None
        if not 0.0 < p < 1.0:
            raise PolicyError(f"halting policy {text!r}: threshold must be strictly between 0 and 1")
        return HaltingPolicy("threshold", p)
    raise PolicyError(f"unknown halting policy {text!r}; use fixed, q or threshold:<p>")


class SegmentRunner(Protocol):
    """What a runtime implements for the ACT loop. Rows index the currently active puzzles."""

    def start(self, tokens: np.ndarray, puzzle_ids: np.ndarray) -> None:
        """Begin a batch: tokens int64 [B, S], puzzle_ids int64 [B]; carry := initial carry."""

    def step(self) -> tuple[np.ndarray, np.ndarray]:
        """Run one segment for the active rows; return (q_halt, q_continue), fp32 [b] each."""

    def predictions(self, rows: np.ndarray) -> np.ndarray:
        """int64 [len(rows), S]: argmax tokens of the last segment for these active rows."""

    def logits(self, rows: np.ndarray) -> np.ndarray:
        """fp32 [len(rows), S, V]: logits of the last segment for these active rows."""

    def keep(self, rows: np.ndarray) -> None:
        """Shrink the active batch to these rows (sorted indices into the current active rows)."""

    def admit(self, tokens: np.ndarray, puzzle_ids: np.ndarray) -> None:
        """Append rows to the active batch (after the current ones), each with the initial carry:
        tokens int64 [n, S], puzzle_ids int64 [n]. Optional: `run_act` never calls it; the
        continuous scheduler (`hrm_edge.continuous`) does. Until the next `step`, the last segment's
        outputs of the admitted rows are undefined."""


@dataclass
class SolveResult:
    """Per puzzle outcome of the ACT loop (N puzzles, T = max_steps, S = seq_len).

    predictions int64 [N, S]; steps int32 [N] (segments used); q_halt, q_continue fp32 [N]
    at the halting segment. With `record_steps`: step_predictions int64 [T, N, S] (0 = PAD
    after a puzzle halted), step_q_halt / step_q_continue fp32 [T, N] (NaN after halting),
    and with `record_logits` step_logits fp32 [T, N, S, V] (NaN after halting).
    """

    predictions: np.ndarray
    steps: np.ndarray
    q_halt: np.ndarray
    q_continue: np.ndarray
    step_predictions: np.ndarray | None = None
    step_q_halt: np.ndarray | None = None
    step_q_continue: np.ndarray | None = None
    step_logits: np.ndarray | None = None


def run_act(runner: SegmentRunner, tokens: np.ndarray, puzzle_ids: np.ndarray, policy: HaltingPolicy,
            max_steps: int, record_steps: bool = False, record_logits: bool = False) -> SolveResult:
    """Run the ACT loop on one batch until every puzzle halted or `max_steps` segments ran."""
    tokens = np.ascontiguousarray(tokens, dtype=np.int64)
    puzzle_ids = np.ascontiguousarray(puzzle_ids, dtype=np.int64)
    if tokens.ndim != 2 or puzzle_ids.shape != (tokens.shape[0],):
        raise ValueError(f"tokens must be [B, S] and puzzle_ids [B]; got {tokens.shape} and {puzzle_ids.shape}")
    if max_steps < 1:
        raise PolicyError(f"max_steps must be >= 1, got {max_steps}")
    n, seq = tokens.shape
    result = SolveResult(
        predictions=np.zeros((n, seq), np.int64), steps=np.zeros(n, np.int32),
        q_halt=np.zeros(n, np.float32), q_continue=np.zeros(n, np.float32))
    if record_steps or record_logits:
        result.step_predictions = np.zeros((max_steps, n, seq), np.int64)
        result.step_q_halt = np.full((max_steps, n), np.nan, np.float32)
        result.step_q_continue = np.full((max_steps, n), np.nan, np.float32)
    active = np.arange(n)  # original index of each active row
    runner.start(tokens, puzzle_ids)
    for step in range(1, max_steps + 1):
        q_halt, q_continue = runner.step()
        rows = np.arange(len(active))
        if result.step_predictions is not None:
            result.step_predictions[step - 1, active] = runner.predictions(rows)
            result.step_q_halt[step - 1, active] = q_halt
            result.step_q_continue[step - 1, active] = q_continue
        if record_logits:
            logits = runner.logits(rows)
            if result.step_logits is None:
                result.step_logits = np.full((max_steps, n, *logits.shape[1:]), np.nan, np.float32)
            result.step_logits[step - 1, active] = logits
        halted = policy.halts(q_halt, q_continue) | (step >= max_steps)
        if halted.any():
            done = rows[halted]
            idx = active[done]
            result.predictions[idx] = (result.step_predictions[step - 1, idx]
                                       if result.step_predictions is not None else runner.predictions(done))
            result.steps[idx] = step
            result.q_halt[idx] = q_halt[halted]
            result.q_continue[idx] = q_continue[halted]
            if halted.all():
                break
            runner.keep(rows[~halted])
            active = active[~halted]
    return result


class Progress(Protocol):
    """What a long closed-loop run reports as it goes (`solve_in_batches`; a progress bar implements it)."""

    def segment(self) -> None:
        """One segment of the current chunk of puzzles ran."""

    def chunk_done(self, puzzles: int) -> None:
        """A chunk of `puzzles` puzzles finished (halted or reached max_steps)."""


class TickingRunner:
    """A SegmentRunner that forwards to `runner` and calls `tick()` after every segment it runs."""

    def __init__(self, runner: SegmentRunner, tick: Callable[[], None]) -> None:
        self._runner, self._tick = runner, tick

    def start(self, tokens: np.ndarray, puzzle_ids: np.ndarray) -> None:
        self._runner.start(tokens, puzzle_ids)

    def step(self) -> tuple[np.ndarray, np.ndarray]:
        out = self._runner.step()
        self._tick()
        return out

    def predictions(self, rows: np.ndarray) -> np.ndarray:
        return self._runner.predictions(rows)

    def logits(self, rows: np.ndarray) -> np.ndarray:
        return self._runner.logits(rows)

    def keep(self, rows: np.ndarray) -> None:
        self._runner.keep(rows)


def solve_in_batches(runner: SegmentRunner, tokens: np.ndarray, puzzle_ids: np.ndarray, policy: HaltingPolicy,
                     max_steps: int, batch_size: int, record_steps: bool = False,
                     record_logits: bool = False, progress: Progress | None = None) -> SolveResult:
    """`run_act` over consecutive chunks of at most `batch_size` puzzles, results concatenated;
    `progress` hears of every segment and every finished chunk."""
    if progress is not None:
        runner = TickingRunner(runner, progress.segment)
    parts = []
    for i in range(0, len(tokens), batch_size):
        parts.append(run_act(runner, tokens[i:i + batch_size], puzzle_ids[i:i + batch_size], policy, max_steps,
                             record_steps, record_logits))
        if progress is not None:
            progress.chunk_done(len(parts[-1].steps))
    return concat_results(parts)


def concat_results(parts: list[SolveResult]) -> SolveResult:
    """Concatenate the results of consecutive chunks of puzzles."""
    if len(parts) == 1:
        return parts[0]

    def cat(name: str, axis: int) -> np.ndarray | None:
        values = [getattr(p, name) for p in parts]
        return None if values[0] is None else np.concatenate(values, axis=axis)

    return SolveResult(
        predictions=cat("predictions", 0), steps=cat("steps", 0), q_halt=cat("q_halt", 0),
        q_continue=cat("q_continue", 0), step_predictions=cat("step_predictions", 1),
        step_q_halt=cat("step_q_halt", 1), step_q_continue=cat("step_q_continue", 1),
        step_logits=cat("step_logits", 1))

"""The solver model's wire contract: its name, inputs and outputs (those of the `act_loop` graph,
`hrm_edge.contract.LOOP_INPUTS` / `LOOP_OUTPUTS`), and the checks every request passes.

One request holds n >= 1 puzzles of one halting rule (no batch axis: Triton's max_batch_size 0):

- inputs: tokens int64 [n, S], puzzle_ids int64 [n] (original ids), max_steps int64 [1],
  halt_mode int64 [1] (`HALT_MODES`), threshold float32 [1] (a logit; read for halt_mode 2);
- outputs: preds int64 [n, S], steps int64 [n], q_halt, q_continue float32 [n].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hrm_edge.contract import HALT_MODES, LOOP_INPUTS, LOOP_OUTPUTS
from hrm_edge.errors import HrmEdgeError

SOLVER_MODEL = "hrm_solver"
SEGMENT_MODEL = "hrm_segment"
ITERATIVE_MODEL = "hrm_iterative"  # one puzzle per request, Triton's iterative sequence batching (`triton_iterative`)
# The solver config's parameters that say which bundle it serves (`hrm_edge.serving.triton_repo`):
# the bundle's digest (`Manifest.digest`, "sha256:<hex>") and its task.
BUNDLE_DIGEST = "bundle_digest"
BUNDLE_TASK = "bundle_task"
# Where the repository's segment runs (`hrm-edge triton-repo --segment-backend`; --plan: tensorrt).
# iterative: in hrm_iterative's process, Triton's scheduler batching the puzzles segment by segment.
SEGMENT_BACKENDS = ("onnxruntime", "python", "in-solver", "iterative")
# `hrm-edge serve --scheduler`: the two segment backends that run the segment on the bundle where it is.
SCHEDULERS = ("iterative", "in-solver")
DEFAULT_SCHEDULER = "in-solver"
MAX_REQUEST_PUZZLES = 4096  # a request holds at most this many puzzles (bounds a server's memory per request)
MAX_SEGMENTS = 1024  # the largest max_steps a request may ask for (the CLI's cap)

# name -> (numpy dtype, shape with -1 for n and "S" for the sequence length)
SOLVER_INPUTS: dict[str, tuple[str, tuple[int | str, ...]]] = dict(zip(LOOP_INPUTS, (
    ("int64", (-1, "S")), ("int64", (-1,)), ("int64", (1,)), ("int64", (1,)), ("float32", (1,))), strict=True))
SOLVER_OUTPUTS: dict[str, tuple[str, tuple[int | str, ...]]] = dict(zip(LOOP_OUTPUTS, (
    ("int64", (-1, "S")), ("int64", (-1,)), ("float32", (-1,)), ("float32", (-1,))), strict=True))


class RequestError(HrmEdgeError):
    """A malformed solver request (answered with one error; the server keeps serving)."""


def dims(shape: tuple[int | str, ...], seq_len: int) -> tuple[int, ...]:
    """A contract shape with S replaced by the sequence length."""
    return tuple(seq_len if d == "S" else int(d) for d in shape)


@dataclass(frozen=True)
class SolveRequest:
    """A checked request: tokens int64 [n, S], puzzle_ids int64 [n], and its halting rule."""

    tokens: np.ndarray
    puzzle_ids: np.ndarray
    max_steps: int
    halt_mode: int
    threshold: float


def parse_request(inputs: dict[str, np.ndarray], seq_len: int, vocab_size: int) -> SolveRequest:
    """Check a request's tensors (names, dtypes, shapes, values) and return them; RequestError else."""
    missing = [n for n in SOLVER_INPUTS if n not in inputs]
    if missing:
        raise RequestError(f"missing input(s) {', '.join(missing)}")
    for name, (dtype, shape) in SOLVER_INPUTS.items():
        a = np.asarray(inputs[name])
        want = dims(shape, seq_len)
        if a.dtype != np.dtype(dtype):
            raise RequestError(f"input {name}: dtype {a.dtype}, expected {dtype}")
        if a.ndim != len(want) or any(w != -1 and w != g for w, g in zip(want, a.shape, strict=True)):
            raise RequestError(f"input {name}: shape {list(a.shape)}, expected {[d if d != -1 else 'n' for d in want]}")
    tokens, puzzle_ids = np.asarray(inputs["tokens"]), np.asarray(inputs["puzzle_ids"])
    n = tokens.shape[0]
    if n < 1 or n > MAX_REQUEST_PUZZLES or puzzle_ids.shape != (n,):
        raise RequestError(f"tokens hold {n} puzzles and puzzle_ids {puzzle_ids.shape[0]}: "
                           f"expected the same 1..{MAX_REQUEST_PUZZLES}")
    if tokens.min() < 0 or tokens.max() >= vocab_size:
        raise RequestError(f"tokens must lie in 0..{vocab_size - 1}")
    max_steps, mode = int(inputs["max_steps"][0]), int(inputs["halt_mode"][0])
    threshold = float(inputs["threshold"][0])
    if not 1 <= max_steps <= MAX_SEGMENTS:
        raise RequestError(f"max_steps {max_steps} is outside 1..{MAX_SEGMENTS}")
    if mode not in HALT_MODES.values():
        raise RequestError(f"halt_mode {mode} is not one of {HALT_MODES}")
    if not np.isfinite(threshold):
        raise RequestError("threshold must be finite")
    return SolveRequest(np.ascontiguousarray(tokens), np.ascontiguousarray(puzzle_ids), max_steps, mode, threshold)


def request_inputs(tokens: np.ndarray, puzzle_ids: np.ndarray, halt_mode: int, threshold: float,
                   max_steps: int) -> dict[str, np.ndarray]:
    """The input tensors of a request (what a client sends)."""
    return {"tokens": np.ascontiguousarray(tokens, np.int64), "puzzle_ids": np.ascontiguousarray(puzzle_ids, np.int64),
            "max_steps": np.array([max_steps], np.int64), "halt_mode": np.array([halt_mode], np.int64),
            "threshold": np.array([threshold], np.float32)}

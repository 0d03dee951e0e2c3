"""One continuous ACT loop shared by concurrent requests: the solver behind `hrm-edge serve`
and the Triton repository's Python-backend solver model.

`SolverService` owns a `SegmentRunner` and a `ContinuousACT`. `solve` (called from any number of
request threads) checks a request, queues its puzzles and blocks until all of them halted; puzzles of
concurrent requests share the slots, each with its own halting rule. There is no worker thread: one
waiting request thread at a time drives the loop (segment by segment, releasing the lock between
segments so others can queue puzzles) until its own puzzles are done, then hands the loop to another
waiting thread. A request alone on an idle server thus runs on its own thread, like a local solve.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

import numpy as np

from hrm_edge.act import SegmentRunner
from hrm_edge.continuous import ContinuousACT
from hrm_edge.serving.protocol import RequestError, parse_request


class _Pending:
    """One request's puzzles in flight: outputs filled as puzzles halt; `done` set when all did."""

    def __init__(self, n: int, seq_len: int) -> None:
        self.preds = np.zeros((n, seq_len), np.int64)
        self.steps = np.zeros(n, np.int64)
        self.q_halt = np.zeros(n, np.float32)
        self.q_continue = np.zeros(n, np.float32)
        self.left = n
        self.error: BaseException | None = None
        self.done = threading.Event()


class SolverService:
    """The solver model's implementation (inputs/outputs: `hrm_edge.serving.protocol`).

    runner: the segment runner (ORT in-process, or BLS calls to a segment model); slots: puzzles in
    flight; seq_len, vocab_size: the model's; model_ids: maps original puzzle ids to the model's rows
    (`Bundle.model_puzzle_ids`). Call `close()` to stop the worker.
    """

    def __init__(self, runner: SegmentRunner, slots: int, seq_len: int, vocab_size: int,
                 model_ids: Callable[[np.ndarray], np.ndarray] = lambda ids: ids) -> None:
        self.seq_len, self.vocab_size, self.model_ids = seq_len, vocab_size, model_ids
        self.loop = ContinuousACT(runner, slots)
        self._lock = threading.Condition()
        self._ids = itertools.count()
        self._pending: dict[int, _Pending] = {}  # request id -> its outputs
        self._closed = False
        self._driving = False  # a request thread is running segments
        self._arriving = 0  # request threads about to take the lock (to queue puzzles)
        self._arrivals = threading.Lock()  # guards _arriving

    def solve(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Solve one request; RequestError for a malformed one (nothing is queued then)."""
        req = parse_request(inputs, self.seq_len, self.vocab_size)
        try:
            model_ids = self.model_ids(req.puzzle_ids)
        except Exception as exc:  # an id the bundle does not hold
            raise RequestError(str(exc)) from None
        n = len(req.tokens)
        pending = _Pending(n, self.seq_len)
        with self._arrivals:
            self._arriving += 1
        with self._lock:
            with self._arrivals:
                self._arriving -= 1
            if self._closed:
                raise RequestError("the server is shutting down")
            rid = next(self._ids)
            self._pending[rid] = pending
            self.loop.submit([(rid, i) for i in range(n)], req.tokens, model_ids, req.halt_mode, req.threshold,
                             req.max_steps)
            while not pending.done.is_set():
                if self._driving:
                    self._lock.wait()
                    continue
                self._driving = True
                try:
                    self._drive(pending)
                finally:
                    self._driving = False
                    self._lock.notify_all()  # another waiting request takes the loop over
        if pending.error is not None:
            raise pending.error
        return {"preds": pending.preds, "steps": pending.steps, "q_halt": pending.q_halt,
                "q_continue": pending.q_continue}

    def _drive(self, mine: _Pending) -> None:
        """Run segments until `mine` is done (called holding the lock, returns holding it; the lock is
        released between segments so other requests can queue puzzles)."""
        while not mine.done.is_set():
            try:
                finished = self.loop.step()  # admissions read the queue: under the lock
            except BaseException as exc:  # a runtime failure fails every request in flight
                self._fail_all(exc)
                return
            woke = False
            for f in finished:
                rid, i = f.key
                p = self._pending[rid]
                p.preds[i], p.steps[i], p.q_halt[i], p.q_continue[i] = f.prediction, f.steps, f.q_halt, f.q_continue
                p.left -= 1
                if p.left == 0:
                    del self._pending[rid]
                    p.done.set()
                    woke = True
            if woke:
                self._lock.notify_all()
            if not mine.done.is_set() and (woke or self._arriving):
                # let finished requests return and arriving ones queue puzzles for the next segment; only
                # then: on a loaded machine a yield can cost a scheduler time slice, milliseconds of a
                # lone request's latency
                self._lock.release()
                time.sleep(0)  # (yields the GIL to the thread waiting for the lock)
                self._lock.acquire()

    def _fail_all(self, exc: BaseException) -> None:
        for p in self._pending.values():
            p.error = exc
            p.done.set()
        self._pending.clear()
        self.loop = ContinuousACT(self.loop.runner, self.loop.slots)

    def close(self) -> None:
        """Refuse new requests; return once the puzzles in flight are done."""
        with self._lock:
            self._closed = True
            while self._driving or self._pending:
                self._lock.wait()

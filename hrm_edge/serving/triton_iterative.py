"""The repository's `iterative` variant (`hrm-edge triton-repo --segment-backend iterative`): Triton's
own scheduler does the continuous batching of the ACT loop, one segment per model execution.

What Triton provides (read in the Triton sources and docs, 2.51 / 24.10 and later):

- The sequence batcher has an "iterative sequence" mode (config `sequence_batching {
  iterative_sequence: true }`, marked provisional by the docs): one request is a whole sequence. A
  request without a correlation id gets one from the server (a counter) and the sequence-start flag,
  so clients set no sequence id and no control inputs.
- A backend hands a request back to the batcher instead of answering it by releasing it with the
  flag TRITONSERVER_REQUEST_RELEASE_RESCHEDULE; the batcher queues the same request again (flags
  cleared) in its sequence's slot, and the next batch mixes rescheduled and new requests. A request
  released without that flag ends its sequence and frees the slot (a backlog of new sequences waits
  for free slots).
- The Python backend supports this from release 23.11: in `execute`, `request.set_release_flags(
  pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)` and, for a model that is not decoupled, `None`
  in that request's place in the returned list (one response per request; a decoupled model must
  reschedule before `execute` returns instead).
- Sequence slots per model instance: max(1, max_batch_size), or `oldest.max_candidate_sequences`.
  The sequence batcher takes requests of batch size 1 only, so a model with max_batch_size 0 has one
  slot per instance: no batching. Hence hrm_iterative has one puzzle per request and max_batch_size =
  slots; the oldest strategy puts only sequences with a request ready into a batch (the direct
  strategy pads empty slots below the highest busy one with null requests).
- A Python model that is not decoupled runs one `execute` at a time per instance, even a coroutine
  (the stub runs it to completion), and HTTP and non-streaming gRPC clients cannot call a decoupled
  model.

So the repository has two Python models:

- `hrm_iterative` (`TritonPythonModel` here): one request = one puzzle. Each `execute` gets the batch
  Triton formed of the sequences in flight; puzzles it has not seen (by correlation id) are queued
  into a `ContinuousACT` (the carry (z_H, z_L) starts from the bundle's initial carry, exactly as in
  `hrm-edge serve`), one segment runs for every puzzle in flight, halted puzzles are answered, the
  others rescheduled. The segment runs in this process (ONNX Runtime through `make_session`, or the
  runtime named in solver.json), as in the in-solver variant, so the two differ only in who
  schedules.
- `hrm_solver` (`FrontModel`): the shipped wire protocol (`hrm_edge.serving.protocol`: n puzzles
  per request, same names, dtypes and shapes), so clients see no difference. It checks the request
  and sends each puzzle to hrm_iterative (BLS, concurrently); its instances (`request_threads` stub
  processes) are how many requests are in flight at once, since each runs one request at a time.

hrm_iterative's own wire (what a client calling it directly sends): tokens int64 [1, S], puzzle_ids,
max_steps, halt_mode int64 [1, 1], threshold float32 [1, 1]; outputs preds int64 [1, S], steps int64
[1, 1], q_halt, q_continue float32 [1, 1]. Runs inside Triton only (`triton_python_backend_utils`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hrm_edge.act import SegmentRunner
from hrm_edge.bundle import open_bundle
from hrm_edge.continuous import ContinuousACT, Finished
from hrm_edge.runtimes.solver import GraphSolver
from hrm_edge.serving.protocol import SOLVER_INPUTS, SOLVER_OUTPUTS, RequestError, parse_request
from hrm_edge.serving.triton_repo import SOLVER_FILE

RESCHEDULE = None  # `IterativeLoop.step`'s outcome for a puzzle still in flight


@dataclass(frozen=True)
class Arrival:
    """One request of a batch: its sequence key (Triton's correlation id) and, read only for a key
    not seen before, its input tensors (`hrm_edge.serving.protocol`, one puzzle)."""

    key: Hashable
    inputs: Callable[[], dict[str, np.ndarray]]
    cancelled: bool = False


class IterativeLoop:
    """The bookkeeping of hrm_iterative, without Triton: a `ContinuousACT` whose keys are sequence
    keys. `step(batch)` admits the batch's new puzzles, runs one segment for every puzzle in flight
    and returns, per arrival, its `Finished` result, an exception (answered as an error; the
    sequence ends) or `RESCHEDULE`.

    A puzzle in flight whose request is not in a batch still advances (rows are independent); its
    result waits for its request. seq_len, vocab_size: the model's; model_ids: original puzzle ids ->
    the graph's (`Bundle.model_puzzle_ids`)."""

    def __init__(self, runner: SegmentRunner, slots: int, seq_len: int, vocab_size: int,
                 model_ids: Callable[[np.ndarray], np.ndarray] = lambda ids: ids) -> None:
        self.runner, self.slots, self.seq_len, self.vocab_size = runner, slots, seq_len, vocab_size
        self.model_ids = model_ids
        self.loop = ContinuousACT(runner, slots)
        self._live: set[Hashable] = set()  # keys queued or in flight whose request awaits an answer
        self._done: dict[Hashable, Finished] = {}  # halted, answered when their request comes next

    @property
    def in_flight(self) -> int:
        """Sequences admitted and not answered yet."""
        return len(self._live)

    def _admit(self, arrival: Arrival) -> None:
        req = parse_request(arrival.inputs(), self.seq_len, self.vocab_size)
        if len(req.tokens) != 1:
            raise RequestError(f"a request to this model holds 1 puzzle, got {len(req.tokens)}")
        try:
            ids = self.model_ids(req.puzzle_ids)
        except Exception as exc:  # an id the bundle does not hold
            raise RequestError(str(exc)) from None
        self.loop.submit([arrival.key], req.tokens, ids, req.halt_mode, req.threshold, req.max_steps)
        self._live.add(arrival.key)

    def step(self, batch: list[Arrival]) -> list[Finished | BaseException | None]:
        out: list[Finished | BaseException | None] = [RESCHEDULE] * len(batch)
        for i, arrival in enumerate(batch):
            if arrival.cancelled:  # its row (if admitted) runs on until it halts; the result is dropped
                self._live.discard(arrival.key)
                self._done.pop(arrival.key, None)
                out[i] = RequestError("the request was cancelled")
            elif arrival.key not in self._live:
                try:
                    self._admit(arrival)
                except Exception as exc:
                    out[i] = exc
        if not self.loop.idle:
            try:
                finished = self.loop.step()
            except BaseException as exc:  # a runtime failure fails every puzzle in flight
                self.loop = ContinuousACT(self.runner, self.slots)
                self._live.clear()
                self._done.clear()
                return [exc if o is RESCHEDULE else o for o in out]
            self._done.update((f.key, f) for f in finished if f.key in self._live)
        for i, arrival in enumerate(batch):
            if out[i] is RESCHEDULE and arrival.key in self._done:
                out[i] = self._done.pop(arrival.key)
                self._live.discard(arrival.key)
        return out


def _solver_info(args: dict[str, str]) -> tuple[Path, dict[str, Any]]:
    here = Path(args["model_repository"]) / args["model_version"]
    return here, json.loads((here / SOLVER_FILE).read_text())


class TritonPythonModel:
    """hrm_iterative's Python-backend entry points (see the module docstring)."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb

        self.pb = pb
        here, info = _solver_info(args)
        engine = info.get("engine")  # relative to the version directory, or absolute
        bundle = open_bundle(here / info["bundle"])
        solver = GraphSolver(bundle, info["graph"], info["runtime"], threads=info.get("threads"),
                             engine=str(here / engine) if engine else None)
        self.loop = IterativeLoop(solver.segment_runner, info["slots"], int(bundle.config["seq_len"]),
                                  int(bundle.config["vocab_size"]), bundle.model_puzzle_ids)

    def _inputs(self, request: Any) -> Callable[[], dict[str, np.ndarray]]:
        def read() -> dict[str, np.ndarray]:
            tensors = {n: self.pb.get_input_tensor_by_name(request, n) for n in SOLVER_INPUTS}
            return {n: t.as_numpy() for n, t in tensors.items() if t is not None}

        return read

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self.pb
        outcomes = self.loop.step([Arrival(r.correlation_id(), self._inputs(r), r.is_cancelled()) for r in requests])
        responses: list[Any] = []
        for request, outcome in zip(requests, outcomes, strict=True):
            if outcome is RESCHEDULE:
                request.set_release_flags(pb.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
                responses.append(None)
            elif isinstance(outcome, BaseException):
                responses.append(pb.InferenceResponse(output_tensors=[], error=pb.TritonError(str(outcome))))
            else:
                values = (outcome.prediction[None], np.array([outcome.steps], np.int64),
                          np.array([outcome.q_halt], np.float32), np.array([outcome.q_continue], np.float32))
                responses.append(pb.InferenceResponse(
                    output_tensors=[pb.Tensor(n, v) for n, v in zip(SOLVER_OUTPUTS, values, strict=True)]))
        return responses


class FrontModel:
    """hrm_solver of the iterative variant: the shipped wire protocol over hrm_iterative (module
    docstring). Each puzzle of a request is one BLS request; the answers are put back in order."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb

        self.pb = pb
        _, info = _solver_info(args)
        self.model, self.seq_len, self.vocab_size = info["iterative_model"], info["seq_len"], info["vocab_size"]

    async def execute(self, requests: list[Any]) -> list[Any]:
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def _one(self, request: Any) -> Any:
        pb = self.pb
        tensors = {n: pb.get_input_tensor_by_name(request, n) for n in SOLVER_INPUTS}
        try:
            req = parse_request({n: t.as_numpy() for n, t in tensors.items() if t is not None}, self.seq_len,
                                self.vocab_size)
            answers = await asyncio.gather(*(self._puzzle(req.tokens[i:i + 1], req.puzzle_ids[i:i + 1], req.max_steps,
                                                          req.halt_mode, req.threshold)
                                             for i in range(len(req.tokens))))
        except Exception as exc:
            return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(str(exc)))
        # per-puzzle scalars come back as [1, 1] (hrm_iterative's dims [1] before its reshape)
        rows = {n: np.concatenate([a[n].reshape(1, -1) for a in answers]) for n in SOLVER_OUTPUTS}
        return pb.InferenceResponse(output_tensors=[pb.Tensor(n, v if len(SOLVER_OUTPUTS[n][1]) == 2 else v.reshape(-1))
                                                    for n, v in rows.items()])

    async def _puzzle(self, tokens: np.ndarray, puzzle_ids: np.ndarray, max_steps: int, halt_mode: int,
                      threshold: float) -> dict[str, np.ndarray]:
        pb = self.pb
        feeds = {"tokens": tokens, "puzzle_ids": puzzle_ids[:, None], "max_steps": np.array([[max_steps]], np.int64),
                 "halt_mode": np.array([[halt_mode]], np.int64), "threshold": np.array([[threshold]], np.float32)}
        request = pb.InferenceRequest(model_name=self.model, requested_output_names=list(SOLVER_OUTPUTS),
                                      inputs=[pb.Tensor(n, np.ascontiguousarray(a)) for n, a in feeds.items()])
        response = await request.async_exec()
        if response.has_error():
            raise RequestError(response.error().message())
        return {n: pb.get_output_tensor_by_name(response, n).as_numpy() for n in SOLVER_OUTPUTS}

"""ONNX Runtime runners for the graphs of `hrm_edge.contract` (numpy + onnxruntime only).

This module, and everything it imports, must run on a device without torch (a Jetson bundle):
it imports numpy, onnxruntime and the torch-free `hrm_edge.act` / `hrm_edge.errors`, never
torch and never the `onnx` package.

Sessions come from `hrm_edge.runtimes.ort.loader.make_session`; the tensor names from `hrm_edge.contract`.

- `OrtSegmentRunner`: the `SegmentRunner` of `hrm_edge.act` over the segment graph (or the
  segment graph taking x plus the embed graph); drive it with `run_act`.
- `OrtUnrolledRunner` + `run_act_unrolled`: the K-unrolled graph; halting is decided every K
  segments, and a puzzle that wants to halt at step s inside a chunk is reported with its step-s
  prediction and q values, so steps and predictions equal the segment runner's.
- `run_act_loop_graph`: the whole-ACT-loop graph (one call per batch).

Carry placement: on the CPU EP the carry is numpy. On CUDA/TensorRT EPs (or with
`io_binding=True`) inputs and the carry are OrtValues bound on the device with IOBinding, so the
carry stays there between segments and only q_halt/q_continue (and, for the unrolled graph, the
small per-segment argmax) come back each call; logits are copied to the host only when asked
for. Shrinking the batch (`keep`) round-trips the carry through the host once per halting event.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnxruntime as ort

from hrm_edge.act import HaltingPolicy, SolveResult
from hrm_edge.contract import HALT_MODES, LOOP_INPUTS, ORT_FLOAT_TYPES, SEGMENT_OUTPUTS, UNROLLED_OUTPUTS
from hrm_edge.errors import PolicyError
from hrm_edge.runtimes.ort.loader import GPU_PROVIDERS, OnnxModelError

# ----------------------------------------------------------------------------------------------
# runners over the segment and K-unrolled graphs


def _int64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int64)


class _CarryRunner:
    """Shared by the segment and unrolled runners: feeds, the carry, IOBinding and compaction."""

    _outputs: tuple[str, ...] = SEGMENT_OUTPUTS
    _kind = "segment"

    def __init__(self, session: ort.InferenceSession, h_init: np.ndarray, l_init: np.ndarray,
                 total_len: int | None = None, embed_session: ort.InferenceSession | None = None,
                 io_binding: bool | None = None, device_id: int = 0) -> None:
        self.session = session
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = tuple(o.name for o in session.get_outputs())
        if not set(self._outputs) <= set(outputs) or "z_H" not in inputs or "z_L" not in inputs:
            raise OnnxModelError(f"{type(self).__name__}: the session is not a {self._kind} graph "
                                 f"(inputs {list(inputs)}, outputs {list(outputs)})")
        self._takes_x = "x" in inputs
        if self._takes_x and embed_session is None:
            raise OnnxModelError(f"{type(self).__name__}: this graph takes x (exported with embed_inside=False): "
                                 "pass embed_session=<the embed graph's session>")
        self.embed_session = embed_session
        self._z_dtype = np.dtype(ORT_FLOAT_TYPES.get(inputs["z_H"].type, "float32"))
        h_init, l_init = np.asarray(h_init).reshape(-1), np.asarray(l_init).reshape(-1)
        shape = inputs["z_H"].shape
        if total_len is None and not isinstance(shape[1], int):
            raise OnnxModelError(f"{type(self).__name__}: the graph's carry length is {shape[1]!r}: pass total_len")
        self.total_len = int(total_len if total_len is not None else shape[1])
        self.hidden_size = h_init.shape[0]
        if l_init.shape != h_init.shape or (isinstance(shape[2], int) and shape[2] != self.hidden_size):
            raise OnnxModelError(f"{type(self).__name__}: initial carry of size {h_init.shape}/{l_init.shape} "
                                 f"does not match the graph's carry {shape}")
        self._h_init, self._l_init = h_init.astype(self._z_dtype), l_init.astype(self._z_dtype)
        on_gpu = session.get_providers()[0] in GPU_PROVIDERS
        self.io_binding = on_gpu if io_binding is None else bool(io_binding)
        self._device = ("cuda", device_id) if on_gpu else ("cpu", 0)
        self._host: dict[str, np.ndarray] = {}  # per-batch inputs (tokens/puzzle_ids or x), host copy
        self._feeds: dict[str, Any] = {}  # what is fed: numpy, or OrtValues on the device
        self._z: tuple[Any, Any] | None = None
        self._lazy: dict[str, Any] = {}  # outputs fetched only on demand (logits)
        self._lazy_host: dict[str, np.ndarray] = {}

    # -- device helpers
    def _put(self, a: np.ndarray) -> Any:
        if not self.io_binding:
            return a
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), *self._device)

    @staticmethod
    def _get(v: Any) -> np.ndarray:
        return v.numpy() if isinstance(v, ort.OrtValue) else v

    # -- lifecycle
    def _start(self, tokens: np.ndarray, puzzle_ids: np.ndarray) -> None:
        tokens, puzzle_ids = _int64(tokens), _int64(puzzle_ids)
        if tokens.ndim != 2 or puzzle_ids.shape != (tokens.shape[0],):
            raise ValueError(f"tokens must be [B, S] and puzzle_ids [B]; got {tokens.shape} and {puzzle_ids.shape}")
        if self._takes_x:
            x = self.embed_session.run(["x"], {"tokens": tokens, "puzzle_ids": puzzle_ids})[0]
            self._host = {"x": np.ascontiguousarray(x)}
        else:
            self._host = {"tokens": tokens, "puzzle_ids": puzzle_ids}
        self._feeds = {k: self._put(v) for k, v in self._host.items()}
        shape = (tokens.shape[0], self.total_len, self.hidden_size)
        self._z = (self._put(np.ascontiguousarray(np.broadcast_to(self._h_init, shape))),
                   self._put(np.ascontiguousarray(np.broadcast_to(self._l_init, shape))))
        self._lazy, self._lazy_host = {}, {}

    def _run(self, extra: dict[str, np.ndarray], host: tuple[str, ...], lazy: tuple[str, ...]) -> dict[str, np.ndarray]:
        if self._z is None:
            raise RuntimeError("call start() before running segments")
        z_H, z_L = self._z
        if not self.io_binding:
            names = ("z_H_out", "z_L_out", *host, *lazy)
            values = self.session.run(list(names), {**self._feeds, "z_H": z_H, "z_L": z_L, **extra})
            out = dict(zip(names, values, strict=True))
            self._z = (out["z_H_out"], out["z_L_out"])
            self._lazy = {k: out[k] for k in lazy}
            self._lazy_host = dict(self._lazy)
            return {k: out[k] for k in host}
        binding = self.session.io_binding()
        for name, value in {**self._feeds, "z_H": z_H, "z_L": z_L}.items():
            binding.bind_ortvalue_input(name, value)
        for name, value in extra.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        device_outputs = ("z_H_out", "z_L_out", *lazy)
        for name in device_outputs:
            binding.bind_output(name, *self._device)
        for name in host:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        values = binding.get_outputs()
        out = dict(zip((*device_outputs, *host), values, strict=True))
        self._z = (out["z_H_out"], out["z_L_out"])
        self._lazy = {k: out[k] for k in lazy}
        self._lazy_host = {}
        return {k: out[k].numpy() for k in host}

    def _fetch(self, name: str) -> np.ndarray:
        if name not in self._lazy_host:
            if name not in self._lazy:
                raise RuntimeError("no segment has run since start()")
            self._lazy_host[name] = self._get(self._lazy[name])
        return self._lazy_host[name]

    def keep(self, rows: np.ndarray) -> None:
        """Shrink the active batch to these rows (sorted indices into the current active rows)."""
        rows = np.asarray(rows, np.int64)
        self._host = {k: np.ascontiguousarray(v[rows]) for k, v in self._host.items()}
        self._feeds = {k: self._put(v) for k, v in self._host.items()}
        if self._z is not None:
            self._z = tuple(self._put(np.ascontiguousarray(self._get(z)[rows])) for z in self._z)
        lazy_host = {k: self._fetch(k)[rows] for k in self._lazy}
        self._lazy, self._lazy_host = dict(lazy_host), lazy_host


class OrtSegmentRunner(_CarryRunner):
    """`SegmentRunner` over the segment graph: one graph call per ACT segment.

    session: the segment graph (inputs tokens, puzzle_ids, z_H, z_L; or x, z_H, z_L with
    `embed_session` the embed graph's session, run once per batch). h_init, l_init: float32 [D]
    (`hrm_edge.export.graphs.export_initial_carry`); total_len: P (default: from the graph).
    io_binding: keep the carry on the device (default: when the session's first EP is a GPU one).
    """

    def start(self, tokens: np.ndarray, puzzle_ids: np.ndarray) -> None:
        self._start(tokens, puzzle_ids)

    def step(self) -> tuple[np.ndarray, np.ndarray]:
        out = self._run({}, ("q_halt", "q_continue"), ("logits",))
        return out["q_halt"].astype(np.float32), out["q_continue"].astype(np.float32)

    def predictions(self, rows: np.ndarray) -> np.ndarray:
        return self._fetch("logits")[np.asarray(rows, np.int64)].argmax(-1).astype(np.int64)

    def logits(self, rows: np.ndarray) -> np.ndarray:
        return self._fetch("logits")[np.asarray(rows, np.int64)].astype(np.float32)


class OrtUnrolledRunner(_CarryRunner):
    """Runner over the K-unrolled graph: each `chunk()` runs K segments for the active rows.

    Same arguments as `OrtSegmentRunner`; K is read from the graph. Drive it with `run_act_unrolled`.
    """

    _outputs = UNROLLED_OUTPUTS
    _kind = "K-unrolled"

    def __init__(self, session: ort.InferenceSession, h_init: np.ndarray, l_init: np.ndarray,
                 total_len: int | None = None, embed_session: ort.InferenceSession | None = None,
                 io_binding: bool | None = None, device_id: int = 0) -> None:
        super().__init__(session, h_init, l_init, total_len, embed_session, io_binding, device_id)
        k = next(o.shape[0] for o in session.get_outputs() if o.name == "q_halt")
        if not isinstance(k, int) or "halted" not in {i.name for i in session.get_inputs()}:
            raise OnnxModelError(f"OrtUnrolledRunner: the session is not a K-unrolled graph (q_halt shape {k})")
        self.k = k

    def start(self, tokens: np.ndarray, puzzle_ids: np.ndarray) -> None:
        self._start(tokens, puzzle_ids)
        self._batch = len(_int64(puzzle_ids))

    def chunk(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run K segments; (q_halt [K,b], q_continue [K,b] fp32, preds [K,b,S] int64)."""
        out = self._run({"halted": np.zeros(self._batch, bool)}, ("q_halt", "q_continue", "preds"), ("logits",))
        return out["q_halt"].astype(np.float32), out["q_continue"].astype(np.float32), out["preds"].astype(np.int64)

    def last_logits(self, rows: np.ndarray) -> np.ndarray:
        """fp32 [len(rows), S, V]: logits of the last segment of the last chunk."""
        return self._fetch("logits")[np.asarray(rows, np.int64)].astype(np.float32)

    def keep(self, rows: np.ndarray) -> None:
        super().keep(rows)
        self._batch = len(rows)


def _check_batch(tokens: np.ndarray, puzzle_ids: np.ndarray, max_steps: int) -> tuple[np.ndarray, np.ndarray]:
    tokens, puzzle_ids = _int64(tokens), _int64(puzzle_ids)
    if tokens.ndim != 2 or puzzle_ids.shape != (tokens.shape[0],):
        raise ValueError(f"tokens must be [B, S] and puzzle_ids [B]; got {tokens.shape} and {puzzle_ids.shape}")
    if max_steps < 1:
        raise PolicyError(f"max_steps must be >= 1, got {max_steps}")
    return tokens, puzzle_ids


def run_act_unrolled(runner: OrtUnrolledRunner, tokens: np.ndarray, puzzle_ids: np.ndarray, policy: HaltingPolicy,
                     max_steps: int, record_steps: bool = False) -> SolveResult:
    """The ACT loop over a K-unrolled runner: halting decided every K segments, reported per step.

    Rows that want to halt at step s inside a chunk keep running to the chunk's end (their later
    segments are discarded) and are reported with step s's prediction and q values, so the result
    equals `run_act` with a segment runner under the same policy. The last chunk may run past
    `max_steps`; those segments are ignored. Per-step logits are not available from this graph."""
    tokens, puzzle_ids = _check_batch(tokens, puzzle_ids, max_steps)
    n, seq = tokens.shape
    result = SolveResult(predictions=np.zeros((n, seq), np.int64), steps=np.zeros(n, np.int32),
                         q_halt=np.zeros(n, np.float32), q_continue=np.zeros(n, np.float32))
    if record_steps:
        result.step_predictions = np.zeros((max_steps, n, seq), np.int64)
        result.step_q_halt = np.full((max_steps, n), np.nan, np.float32)
        result.step_q_continue = np.full((max_steps, n), np.nan, np.float32)
    active = np.arange(n)  # original index of each active row
    runner.start(tokens, puzzle_ids)
    base = 0
    while len(active):
        q_halt, q_continue, preds = runner.chunk()
        running = np.ones(len(active), bool)  # rows (of this chunk) not yet halted
        for j in range(runner.k):
            step = base + j + 1
            if step > max_steps or not running.any():
                break
            rows = np.flatnonzero(running)
            idx = active[rows]
            if record_steps:
                result.step_predictions[step - 1, idx] = preds[j, rows]
                result.step_q_halt[step - 1, idx] = q_halt[j, rows]
                result.step_q_continue[step - 1, idx] = q_continue[j, rows]
            halted = policy.halts(q_halt[j, rows], q_continue[j, rows]) | (step >= max_steps)
            done = rows[halted]
            result.predictions[active[done]] = preds[j, done]
            result.steps[active[done]] = step
            result.q_halt[active[done]] = q_halt[j, done]
            result.q_continue[active[done]] = q_continue[j, done]
            running[done] = False
        base += runner.k
        if not running.any():
            break
        runner.keep(np.flatnonzero(running))
        active = active[running]
    return result


# ----------------------------------------------------------------------------------------------
# the whole-loop graph


def run_act_loop_graph(session: ort.InferenceSession, tokens: np.ndarray, puzzle_ids: np.ndarray,
                       policy: HaltingPolicy, max_steps: int) -> SolveResult:
    """Solve one batch with the ACT-loop graph (one session call); same result as `run_act`."""
    names = tuple(i.name for i in session.get_inputs())
    if set(names) != set(LOOP_INPUTS):
        raise OnnxModelError(f"run_act_loop_graph: the session is not an ACT-loop graph (inputs {list(names)})")
    tokens, puzzle_ids = _check_batch(tokens, puzzle_ids, max_steps)
    threshold = math.log(policy.threshold / (1.0 - policy.threshold)) if policy.kind == "threshold" else 0.0
    feeds = {"tokens": tokens, "puzzle_ids": puzzle_ids, "max_steps": np.array(max_steps, np.int64),
             "halt_mode": np.array(HALT_MODES[policy.kind], np.int64), "threshold": np.array(threshold, np.float32)}
    preds, steps, q_halt, q_continue = session.run(["preds", "steps", "q_halt", "q_continue"], feeds)
    return SolveResult(predictions=preds.astype(np.int64), steps=steps.astype(np.int32),
                       q_halt=q_halt.astype(np.float32), q_continue=q_continue.astype(np.float32))

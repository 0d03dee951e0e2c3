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

Where the carry lives between segments (`io_binding`, see `OrtSegmentRunner`):

- "pingpong" (the default on the CPU EP): host buffers bound once per batch with IOBinding. The
  carry sits in two buffer pairs that swap roles every segment (one is read, the other written),
  and every other output has its own buffer, so a segment allocates and copies nothing; only
  q_halt/q_continue (and, for the unrolled graph, the small per-segment argmax) are copied out.
- "device" (the default on CUDA/TensorRT EPs): inputs and the carry are OrtValues on the device,
  so the carry stays there between segments; logits are copied to the host only when asked for.
- "host" (`io_binding=False`): plain `session.run` on numpy arrays, any EP.

All three give bit-identical outputs on the CPU EP (same kernels on the same inputs). Shrinking
the batch (`keep`) copies the kept rows once per halting event (through the host on a device);
growing it (`admit`, for `hrm_edge.continuous`) appends rows with the initial carry the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort

from hrm_edge.act import HaltingPolicy, SolveResult, halt_rule
from hrm_edge.contract import (
    LOOP_INPUTS,
    LOOP_OUTPUTS,
    ORT_FLOAT_TYPES,
    SEGMENT_INPUTS,
    SEGMENT_OUTPUTS,
    UNROLLED_OUTPUTS,
)
from hrm_edge.errors import PolicyError
from hrm_edge.runtimes.ort.loader import GPU_PROVIDERS, OnnxModelError

CARRY_INPUTS = SEGMENT_INPUTS[2:]  # z_H, z_L
CARRY_OUTPUTS = SEGMENT_OUTPUTS[:2]  # z_H_out, z_L_out: the next segment's z_H, z_L
SEGMENT_READ = SEGMENT_OUTPUTS[3:]  # q_halt, q_continue: copied to the host after every segment
UNROLLED_READ = UNROLLED_OUTPUTS[3:]  # q_halt, q_continue [K,B], preds [K,B,S]: after every chunk
# numpy dtypes of the ORT type strings a runner's outputs have
_NUMPY_TYPES = {**ORT_FLOAT_TYPES, "tensor(int64)": "int64", "tensor(bool)": "bool"}


def _int64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int64)


def _append(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """a with `rows` appended on axis 0 (one contiguous copy)."""
    return np.concatenate([a, rows.astype(a.dtype, copy=False)])


def _append_zeros(a: np.ndarray, n: int, axis: int = 0) -> np.ndarray:
    """a with n zero rows appended on `axis`: the undefined last-segment outputs of admitted rows."""
    shape = list(a.shape)
    shape[axis] = n
    return np.concatenate([a, np.zeros(shape, a.dtype)], axis=axis)


# ----------------------------------------------------------------------------------------------
# where the carry lives: host arrays, ping-pong host buffers, or device OrtValues


class _HostCarry:
    """`session.run` on numpy arrays: each segment allocates its outputs (any EP)."""

    mode = "host"

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self._feeds: dict[str, np.ndarray] = {}  # per-batch inputs (tokens/puzzle_ids or x)
        self._z: tuple[np.ndarray, np.ndarray] = (np.empty(0), np.empty(0))
        self._last: dict[str, np.ndarray] = {}  # the lazy outputs of the last segment

    def start(self, feeds: dict[str, np.ndarray], z_H: np.ndarray, z_L: np.ndarray) -> None:
        self._feeds, self._z, self._last = feeds, (z_H, z_L), {}

    def run(self, extra: dict[str, np.ndarray], host: tuple[str, ...], lazy: tuple[str, ...]) -> dict[str, Any]:
        names = (*CARRY_OUTPUTS, *host, *lazy)
        carry = dict(zip(CARRY_INPUTS, self._z, strict=True))
        values = self.session.run(list(names), {**self._feeds, **carry, **extra})
        out = dict(zip(names, values, strict=True))
        self._z = (out[CARRY_OUTPUTS[0]], out[CARRY_OUTPUTS[1]])
        self._last = {k: out[k] for k in lazy}
        return {k: out[k] for k in host}

    def fetch(self, name: str) -> np.ndarray:
        return self._last[name]

    def keep(self, rows: np.ndarray) -> None:
        self._feeds = {k: np.ascontiguousarray(v[rows]) for k, v in self._feeds.items()}
        self._z = (np.ascontiguousarray(self._z[0][rows]), np.ascontiguousarray(self._z[1][rows]))
        self._last = {k: v[rows] for k, v in self._last.items()}

    def admit(self, feeds: dict[str, np.ndarray], z_H: np.ndarray, z_L: np.ndarray) -> None:
        self._feeds = {k: _append(v, feeds[k]) for k, v in self._feeds.items()}
        self._z = (_append(self._z[0], z_H), _append(self._z[1], z_L))
        self._last = {k: _append_zeros(v, len(z_H)) for k, v in self._last.items()}


class _PingPongCarry:
    """CPU EP: every input and output in a host buffer bound once per batch with IOBinding. The
    carry's two buffer pairs swap roles every segment (two pre-built bindings), so a segment
    allocates and copies nothing; outputs are read from their buffers after the call.

    outputs: the bound outputs other than the carry, name -> (dims with None on the batch axis,
    numpy dtype)."""

    mode = "pingpong"

    def __init__(self, session: ort.InferenceSession, outputs: dict[str, tuple[tuple[int | None, ...], np.dtype]]
                 ) -> None:
        self.session, self._specs = session, outputs
        self._feeds: dict[str, np.ndarray] = {}
        self._z: list[tuple[np.ndarray, np.ndarray]] = []  # [read this segment, write this segment]
        self._out: dict[str, np.ndarray] = {}
        self._extra: dict[str, np.ndarray] = {}  # per-call inputs (the unrolled graph's `halted`)
        self._bindings: list[Any] = []
        self._cur = 0  # which binding runs next: 0 reads _z[0] and writes _z[1], 1 the reverse

    @staticmethod
    def supports(session: ort.InferenceSession, names: tuple[str, ...]
                 ) -> dict[str, tuple[tuple[int | None, ...], np.dtype]] | None:
        """The buffer specs of these outputs (besides the carry), or None where a buffer cannot be
        allocated before the call: a dynamic dimension besides the batch, an unexpected dtype, or a
        carry output whose type differs from the carry input's."""
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = {o.name: o for o in session.get_outputs()}
        if any(outputs[o].type != inputs[i].type for i, o in zip(CARRY_INPUTS, CARRY_OUTPUTS, strict=True)):
            return None
        specs = {}
        for name in names:
            dims = tuple(d if isinstance(d, int) else None for d in outputs[name].shape)
            if dims.count(None) != 1 or outputs[name].type not in _NUMPY_TYPES:
                return None
            specs[name] = (dims, np.dtype(_NUMPY_TYPES[outputs[name].type]))
        return specs

    def _allocate(self, batch: int) -> dict[str, np.ndarray]:
        return {name: np.empty(tuple(batch if d is None else d for d in dims), dtype)
                for name, (dims, dtype) in self._specs.items()}

    def start(self, feeds: dict[str, np.ndarray], z_H: np.ndarray, z_L: np.ndarray) -> None:
        self._feeds = feeds
        self._z = [(z_H, z_L), (np.empty_like(z_H), np.empty_like(z_L))]
        self._out = self._allocate(len(z_H))
        self._extra, self._bindings, self._cur = {}, [], 0

    def _bind(self) -> None:
        value = ort.OrtValue.ortvalue_from_numpy  # on the CPU: a view of the numpy buffer, no copy
        self._bindings = []
        for src, dst in ((0, 1), (1, 0)):
            binding = self.session.io_binding()
            carry = dict(zip(CARRY_INPUTS, self._z[src], strict=True))
            for name, array in {**self._feeds, **self._extra, **carry}.items():
                binding.bind_ortvalue_input(name, value(array))
            for name, array in {**dict(zip(CARRY_OUTPUTS, self._z[dst], strict=True)), **self._out}.items():
                binding.bind_ortvalue_output(name, value(array))
            self._bindings.append(binding)

    def run(self, extra: dict[str, np.ndarray], host: tuple[str, ...], lazy: tuple[str, ...]) -> dict[str, Any]:
        if extra.keys() != self._extra.keys() or any(v.shape != self._extra[k].shape for k, v in extra.items()):
            self._extra = {k: np.ascontiguousarray(v) for k, v in extra.items()}
            self._bindings = []
        else:
            for k, v in extra.items():
                np.copyto(self._extra[k], v)
        if not self._bindings:
            self._bind()
        self.session.run_with_iobinding(self._bindings[self._cur])
        self._cur ^= 1
        return {k: self._out[k].copy() for k in host}

    def fetch(self, name: str) -> np.ndarray:
        return self._out[name]

    def keep(self, rows: np.ndarray) -> None:
        current = self._z[self._cur]
        z_H, z_L = np.ascontiguousarray(current[0][rows]), np.ascontiguousarray(current[1][rows])
        self._feeds = {k: np.ascontiguousarray(v[rows]) for k, v in self._feeds.items()}
        # the outputs of the last segment stay readable for the kept rows (batch axis per output)
        self._out = {k: np.ascontiguousarray(np.take(v, rows, axis=self._specs[k][0].index(None)))
                     for k, v in self._out.items()}
        self._z = [(z_H, z_L), (np.empty_like(z_H), np.empty_like(z_L))]
        self._extra, self._bindings, self._cur = {}, [], 0

    def admit(self, feeds: dict[str, np.ndarray], z_H: np.ndarray, z_L: np.ndarray) -> None:
        n, current = len(z_H), self._z[self._cur]
        z_H, z_L = _append(current[0], z_H), _append(current[1], z_L)
        self._feeds = {k: _append(v, feeds[k]) for k, v in self._feeds.items()}
        self._out = {k: _append_zeros(v, n, self._specs[k][0].index(None)) for k, v in self._out.items()}
        self._z = [(z_H, z_L), (np.empty_like(z_H), np.empty_like(z_L))]
        self._extra, self._bindings, self._cur = {}, [], 0


class _DeviceCarry:
    """IOBinding with OrtValues on the session's device (CUDA, or the CPU when asked): the carry stays
    there between segments; `host` outputs come back every call, `lazy` ones only when fetched."""

    mode = "device"

    def __init__(self, session: ort.InferenceSession, device: tuple[str, int]) -> None:
        self.session, self._device = session, device
        self._host_feeds: dict[str, np.ndarray] = {}
        self._feeds: dict[str, Any] = {}
        self._z: tuple[Any, Any] = (None, None)
        self._lazy: dict[str, Any] = {}  # OrtValues of the last segment's lazy outputs
        self._lazy_host: dict[str, np.ndarray] = {}

    def _put(self, a: np.ndarray) -> Any:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), *self._device)

    def start(self, feeds: dict[str, np.ndarray], z_H: np.ndarray, z_L: np.ndarray) -> None:
        self._host_feeds = feeds
        self._feeds = {k: self._put(v) for k, v in feeds.items()}
        self._z = (self._put(z_H), self._put(z_L))
        self._lazy, self._lazy_host = {}, {}

    def run(self, extra: dict[str, np.ndarray], host: tuple[str, ...], lazy: tuple[str, ...]) -> dict[str, Any]:
        binding = self.session.io_binding()
        for name, value in {**self._feeds, **dict(zip(CARRY_INPUTS, self._z, strict=True))}.items():
            binding.bind_ortvalue_input(name, value)
        for name, value in extra.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        device_outputs = (*CARRY_OUTPUTS, *lazy)
        for name in device_outputs:
            binding.bind_output(name, *self._device)
        for name in host:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        out = dict(zip((*device_outputs, *host), binding.get_outputs(), strict=True))
        self._z = (out[CARRY_OUTPUTS[0]], out[CARRY_OUTPUTS[1]])
        self._lazy, self._lazy_host = {k: out[k] for k in lazy}, {}
        return {k: out[k].numpy() for k in host}

    def fetch(self, name: str) -> np.ndarray:
        if name not in self._lazy_host:
            self._lazy_host[name] = self._lazy[name].numpy()
        return self._lazy_host[name]

    def keep(self, rows: np.ndarray) -> None:
        self._host_feeds = {k: np.ascontiguousarray(v[rows]) for k, v in self._host_feeds.items()}
        self._feeds = {k: self._put(v) for k, v in self._host_feeds.items()}
        self._z = (self._put(self._z[0].numpy()[rows]), self._put(self._z[1].numpy()[rows]))
        self._lazy_host = {k: self.fetch(k)[rows] for k in {*self._lazy, *self._lazy_host}}
        self._lazy = {}

    def admit(self, feeds: dict[str, np.ndarray], z_H: np.ndarray, z_L: np.ndarray) -> None:
        self._host_feeds = {k: _append(v, feeds[k]) for k, v in self._host_feeds.items()}
        self._feeds = {k: self._put(v) for k, v in self._host_feeds.items()}
        self._z = (self._put(_append(self._z[0].numpy(), z_H)), self._put(_append(self._z[1].numpy(), z_L)))
        self._lazy_host = {k: _append_zeros(self.fetch(k), len(z_H)) for k in {*self._lazy, *self._lazy_host}}
        self._lazy = {}


# ----------------------------------------------------------------------------------------------
# runners over the segment and K-unrolled graphs


class _CarryRunner:
    """Shared by the segment and unrolled runners: graph checks, the per-batch feeds, the initial
    carry, and where the carry lives (`_HostCarry`, `_PingPongCarry`, `_DeviceCarry`)."""

    _outputs: tuple[str, ...] = SEGMENT_OUTPUTS
    _kind = "segment"

    def __init__(self, session: ort.InferenceSession, h_init: np.ndarray, l_init: np.ndarray,
                 total_len: int | None = None, embed_session: ort.InferenceSession | None = None,
                 io_binding: bool | None = None, device_id: int = 0) -> None:
        self.session = session
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = tuple(o.name for o in session.get_outputs())
        if not set(self._outputs) <= set(outputs) or not set(CARRY_INPUTS) <= set(inputs):
            raise OnnxModelError(f"{type(self).__name__}: the session is not a {self._kind} graph "
                                 f"(inputs {list(inputs)}, outputs {list(outputs)})")
        self._takes_x = "x" in inputs
        if self._takes_x and embed_session is None:
            raise OnnxModelError(f"{type(self).__name__}: this graph takes x (exported with embed_inside=False): "
                                 "pass embed_session=<the embed graph's session>")
        self.embed_session = embed_session
        z_in = inputs[CARRY_INPUTS[0]]
        self._z_dtype = np.dtype(ORT_FLOAT_TYPES.get(z_in.type, "float32"))
        h_init, l_init = np.asarray(h_init).reshape(-1), np.asarray(l_init).reshape(-1)
        shape = z_in.shape
        if total_len is None and not isinstance(shape[1], int):
            raise OnnxModelError(f"{type(self).__name__}: the graph's carry length is {shape[1]!r}: pass total_len")
        self.total_len = int(total_len if total_len is not None else shape[1])
        self.hidden_size = h_init.shape[0]
        if l_init.shape != h_init.shape or (isinstance(shape[2], int) and shape[2] != self.hidden_size):
            raise OnnxModelError(f"{type(self).__name__}: initial carry of size {h_init.shape}/{l_init.shape} "
                                 f"does not match the graph's carry {shape}")
        self._h_init, self._l_init = h_init.astype(self._z_dtype), l_init.astype(self._z_dtype)
        self._carry = self._place_carry(io_binding, device_id)
        self._started = False

    def _place_carry(self, io_binding: bool | None, device_id: int) -> Any:
        on_gpu = self.session.get_providers()[0] in GPU_PROVIDERS
        if io_binding is False:
            return _HostCarry(self.session)
        if io_binding is None and not on_gpu:
            specs = _PingPongCarry.supports(self.session, tuple(n for n in self._outputs if n not in CARRY_OUTPUTS))
            return _PingPongCarry(self.session, specs) if specs is not None else _HostCarry(self.session)
        return _DeviceCarry(self.session, ("cuda", device_id) if on_gpu else ("cpu", 0))

    @property
    def carry_mode(self) -> str:
        """Where the carry lives between segments: "pingpong", "device" or "host" (module docstring)."""
        return self._carry.mode

    @property
    def io_binding(self) -> bool:
        """Whether segments run through IOBinding ("pingpong" or "device")."""
        return self._carry.mode != "host"

    def _new_rows(self, tokens: np.ndarray, puzzle_ids: np.ndarray
                  ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """The feeds (tokens/puzzle_ids, or x from the embed graph) and the initial carry z_H, z_L
        [n, P, D] of n new rows."""
        tokens, puzzle_ids = _int64(tokens), _int64(puzzle_ids)
        if tokens.ndim != 2 or puzzle_ids.shape != (tokens.shape[0],):
            raise ValueError(f"tokens must be [B, S] and puzzle_ids [B]; got {tokens.shape} and {puzzle_ids.shape}")
        if self._takes_x:
            x = self.embed_session.run(["x"], {"tokens": tokens, "puzzle_ids": puzzle_ids})[0]
            feeds = {"x": np.ascontiguousarray(x)}
        else:
            feeds = {"tokens": tokens, "puzzle_ids": puzzle_ids}
        shape = (tokens.shape[0], self.total_len, self.hidden_size)
        return (feeds, np.ascontiguousarray(np.broadcast_to(self._h_init, shape)),
                np.ascontiguousarray(np.broadcast_to(self._l_init, shape)))

    def _start(self, tokens: np.ndarray, puzzle_ids: np.ndarray) -> None:
        self._carry.start(*self._new_rows(tokens, puzzle_ids))
        self._started, self._ran = True, False

    def _run(self, extra: dict[str, np.ndarray], host: tuple[str, ...], lazy: tuple[str, ...]) -> dict[str, Any]:
        if not self._started:
            raise RuntimeError("call start() before running segments")
        out = self._carry.run(extra, host, lazy)
        self._ran = True
        return out

    def _fetch(self, name: str) -> np.ndarray:
        if not self._started or not self._ran:
            raise RuntimeError("no segment has run since start()")
        return self._carry.fetch(name)

    def keep(self, rows: np.ndarray) -> None:
        """Shrink the active batch to these rows (sorted indices into the current active rows)."""
        self._carry.keep(np.asarray(rows, np.int64))


class OrtSegmentRunner(_CarryRunner):
    """`SegmentRunner` over the segment graph: one graph call per ACT segment.

    session: the segment graph (inputs tokens, puzzle_ids, z_H, z_L; or x, z_H, z_L with
    `embed_session` the embed graph's session, run once per batch). h_init, l_init: float32 [D]
    (`hrm_edge.export.graphs.export_initial_carry`); total_len: P (default: from the graph).
    io_binding: where the carry lives between segments (module docstring): None (default) ping-pong
    host buffers on the CPU EP, device OrtValues when the session's first EP is a GPU one; True
    device OrtValues on any EP (on the CPU EP: the GPU code path, run on the host); False plain
    `session.run`. device_id: the CUDA device of the device OrtValues.
    """

    def start(self, tokens: np.ndarray, puzzle_ids: np.ndarray) -> None:
        self._start(tokens, puzzle_ids)

    def admit(self, tokens: np.ndarray, puzzle_ids: np.ndarray) -> None:
        """Append rows with the initial carry after the active ones (`hrm_edge.act.SegmentRunner.admit`)."""
        if not self._started:
            raise RuntimeError("call start() before admit()")
        self._carry.admit(*self._new_rows(tokens, puzzle_ids))

    def step(self) -> tuple[np.ndarray, np.ndarray]:
        out = self._run({}, SEGMENT_READ, ("logits",))
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
        out = self._run({"halted": np.zeros(self._batch, bool)}, UNROLLED_READ, ("logits",))
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
    mode, threshold = halt_rule(policy)
    feeds = {"tokens": tokens, "puzzle_ids": puzzle_ids, "max_steps": np.array(max_steps, np.int64),
             "halt_mode": np.array(mode, np.int64), "threshold": np.array(threshold, np.float32)}
    out = dict(zip(LOOP_OUTPUTS, session.run(list(LOOP_OUTPUTS), feeds), strict=True))
    return SolveResult(predictions=out["preds"].astype(np.int64), steps=out["steps"].astype(np.int32),
                       q_halt=out["q_halt"].astype(np.float32), q_continue=out["q_continue"].astype(np.float32))

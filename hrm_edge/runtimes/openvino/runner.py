"""`OvSegmentRunner`: the `SegmentRunner` of `hrm_edge.act` on an OpenVINO compiled segment graph
(numpy + openvino only; the compiled models come from `hrm_edge.runtimes.openvino.loader`).

Where the carry lives: two infer requests of one compiled model take turns. The carry outputs of
one request are the next segment's inputs of the other, shared without a copy, so a segment
copies only q_halt/q_continue out (logits are read from the last request when asked for). Shrinking
the batch (`keep`) copies the kept rows once per halting event.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hrm_edge.contract import SEGMENT_INPUTS, SEGMENT_OUTPUTS, SEGMENT_X_INPUTS
from hrm_edge.runtimes.openvino.loader import OpenVinoModelError

CARRY_INPUTS = SEGMENT_INPUTS[2:]  # z_H, z_L
CARRY_OUTPUTS = SEGMENT_OUTPUTS[:2]  # z_H_out, z_L_out: the next segment's z_H, z_L


def _port_names(ports: Any) -> dict[str, Any]:
    return {name: p for p in ports for name in p.get_names()}


class OvSegmentRunner:
    """`SegmentRunner` over an OpenVINO compiled segment graph: one infer call per ACT segment.

    compiled: the segment graph (inputs tokens, puzzle_ids, z_H, z_L; or x, z_H, z_L with `embed`
    the compiled embed graph, run once per batch). h_init, l_init: float32 [D]; total_len: P (the
    carry length; default: from the graph)."""

    def __init__(self, compiled: Any, h_init: np.ndarray, l_init: np.ndarray, total_len: int | None = None,
                 embed: Any = None) -> None:
        inputs, outputs = _port_names(compiled.inputs), _port_names(compiled.outputs)
        self._takes_x = set(SEGMENT_X_INPUTS) <= set(inputs)
        wanted = SEGMENT_X_INPUTS if self._takes_x else SEGMENT_INPUTS
        if not set(wanted) <= set(inputs) or not set(SEGMENT_OUTPUTS) <= set(outputs):
            raise OpenVinoModelError(f"OvSegmentRunner: not a segment graph (inputs {sorted(inputs)}, "
                                     f"outputs {sorted(outputs)})")
        if self._takes_x and embed is None:
            raise OpenVinoModelError("OvSegmentRunner: this graph takes x: pass embed=<the compiled embed graph>")
        self.compiled, self.embed = compiled, embed
        z_in = inputs[CARRY_INPUTS[0]]
        self._z_dtype = np.dtype(z_in.get_element_type().to_dtype())
        dims = z_in.get_partial_shape()
        if total_len is None and not dims[1].is_static:
            raise OpenVinoModelError("OvSegmentRunner: the graph's carry length is dynamic: pass total_len")
        self.total_len = int(total_len if total_len is not None else dims[1].get_length())
        h_init, l_init = np.asarray(h_init).reshape(-1), np.asarray(l_init).reshape(-1)
        if l_init.shape != h_init.shape or (dims[2].is_static and dims[2].get_length() != h_init.shape[0]):
            raise OpenVinoModelError(f"OvSegmentRunner: initial carry of size {h_init.shape}/{l_init.shape} "
                                     f"does not match the graph's carry {dims}")
        self.hidden_size = h_init.shape[0]
        self._h_init, self._l_init = h_init.astype(self._z_dtype), l_init.astype(self._z_dtype)
        self._requests = [compiled.create_infer_request() for _ in range(2)]
        self._cur = 0
        self._feeds: dict[str, np.ndarray] = {}
        self._z: tuple[np.ndarray, np.ndarray] = (np.empty(0), np.empty(0))
        self._logits: np.ndarray | None = None  # the last segment's logits (a view into its request)
        self._started = False

    def start(self, tokens: np.ndarray, puzzle_ids: np.ndarray) -> None:
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        puzzle_ids = np.ascontiguousarray(puzzle_ids, dtype=np.int64)
        if tokens.ndim != 2 or puzzle_ids.shape != (tokens.shape[0],):
            raise ValueError(f"tokens must be [B, S] and puzzle_ids [B]; got {tokens.shape} and {puzzle_ids.shape}")
        feeds = {"tokens": tokens, "puzzle_ids": puzzle_ids}
        if self._takes_x:
            x = self.embed.create_infer_request().infer(feeds)["x"]
            feeds = {"x": np.ascontiguousarray(x)}
        self._feeds = feeds
        shape = (tokens.shape[0], self.total_len, self.hidden_size)
        self._z = (np.ascontiguousarray(np.broadcast_to(self._h_init, shape)),
                   np.ascontiguousarray(np.broadcast_to(self._l_init, shape)))
        self._logits, self._started = None, True

    def step(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._started:
            raise RuntimeError("call start() before running segments")
        request = self._requests[self._cur]
        self._cur ^= 1
        request.infer({**self._feeds, **dict(zip(CARRY_INPUTS, self._z, strict=True))}, share_inputs=True)
        self._z = (request.get_tensor(CARRY_OUTPUTS[0]).data, request.get_tensor(CARRY_OUTPUTS[1]).data)
        self._logits = request.get_tensor("logits").data
        return (request.get_tensor("q_halt").data.astype(np.float32),
                request.get_tensor("q_continue").data.astype(np.float32))

    def _last_logits(self) -> np.ndarray:
        if self._logits is None:
            raise RuntimeError("no segment has run since start()")
        return self._logits

    def predictions(self, rows: np.ndarray) -> np.ndarray:
        return self._last_logits()[np.asarray(rows, np.int64)].argmax(-1).astype(np.int64)

    def logits(self, rows: np.ndarray) -> np.ndarray:
        return self._last_logits()[np.asarray(rows, np.int64)].astype(np.float32)

    def keep(self, rows: np.ndarray) -> None:
        """Shrink the active batch to these rows (copies: the kept rows leave the requests' buffers)."""
        rows = np.asarray(rows, np.int64)
        self._feeds = {k: np.ascontiguousarray(v[rows]) for k, v in self._feeds.items()}
        self._z = (np.ascontiguousarray(self._z[0][rows]), np.ascontiguousarray(self._z[1][rows]))
        if self._logits is not None:
            self._logits = np.ascontiguousarray(self._logits[rows])

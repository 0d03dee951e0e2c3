"""A `SegmentRunner` whose segments run elsewhere: each `step` is one call `infer(feeds) -> outputs` on
the segment graph's tensors (contract names). In the Triton repository's solver model, `infer` is a
BLS request to the segment model (onnxruntime or tensorrt backend); the carry makes the round trip
through the solver's host memory every segment."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hrm_edge.contract import SEGMENT_INPUTS, SEGMENT_OUTPUTS

SegmentCall = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class BlsSegmentRunner:
    """`hrm_edge.act.SegmentRunner` over `infer`: h_init, l_init fp32 [D]; total_len P; carry_dtype the
    segment graph's carry type (float32 or float16)."""

    def __init__(self, infer: SegmentCall, h_init: np.ndarray, l_init: np.ndarray, total_len: int,
                 carry_dtype: str = "float32") -> None:
        self.infer = infer
        self._init = [np.asarray(a, np.float32).reshape(-1).astype(carry_dtype) for a in (h_init, l_init)]
        self.total_len = total_len
        self._tokens = np.zeros((0, 0), np.int64)
        self._ids = np.zeros(0, np.int64)
        self._z: list[np.ndarray] = []
        self._logits = np.zeros((0, 0, 0), np.float32)

    def _carry(self, n: int) -> list[np.ndarray]:
        return [np.ascontiguousarray(np.broadcast_to(a, (n, self.total_len, a.shape[0]))) for a in self._init]

    def start(self, tokens: np.ndarray, puzzle_ids: np.ndarray) -> None:
        self._tokens = np.ascontiguousarray(tokens, np.int64)
        self._ids = np.ascontiguousarray(puzzle_ids, np.int64)
        self._z = self._carry(len(self._ids))
        self._logits = np.zeros((0, 0, 0), np.float32)

    def admit(self, tokens: np.ndarray, puzzle_ids: np.ndarray) -> None:
        n = len(puzzle_ids)
        self._tokens = np.concatenate([self._tokens, np.asarray(tokens, np.int64)])
        self._ids = np.concatenate([self._ids, np.asarray(puzzle_ids, np.int64)])
        self._z = [np.concatenate([z, init]) for z, init in zip(self._z, self._carry(n), strict=True)]
        if self._logits.size:
            self._logits = np.concatenate([self._logits, np.zeros((n, *self._logits.shape[1:]), self._logits.dtype)])

    def step(self) -> tuple[np.ndarray, np.ndarray]:
        out = self.infer(dict(zip(SEGMENT_INPUTS, (self._tokens, self._ids, *self._z), strict=True)))
        self._z = [out[SEGMENT_OUTPUTS[0]], out[SEGMENT_OUTPUTS[1]]]
        self._logits = out["logits"]
        # per-row scalars come back as [n, 1] (the segment config's dims [1] before its reshape)
        return (out["q_halt"].astype(np.float32).reshape(-1), out["q_continue"].astype(np.float32).reshape(-1))

    def predictions(self, rows: np.ndarray) -> np.ndarray:
        return self._logits[np.asarray(rows, np.int64)].argmax(-1).astype(np.int64)

    def logits(self, rows: np.ndarray) -> np.ndarray:
        return self._logits[np.asarray(rows, np.int64)].astype(np.float32)

    def keep(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, np.int64)
        self._tokens, self._ids = self._tokens[rows], self._ids[rows]
        self._z = [np.ascontiguousarray(z[rows]) for z in self._z]
        self._logits = self._logits[rows]

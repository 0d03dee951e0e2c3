"""PyTorch reference runtime: the `SegmentRunner` every other runtime is compared against.

The carry stays on the model's device between segments; the input embedding is computed
once per batch (and once per admitted row) and shrunk together with the carry when puzzles halt.
"""

from __future__ import annotations

import numpy as np
import torch

from hrm_edge.model.hrm import HRM


class TorchSegmentRunner:
    """Runs `HRM.reason` + `HRM.heads` segment by segment on `device` in the model's compute dtype."""

    def __init__(self, model: HRM, device: str | torch.device = "cpu") -> None:
        self.model = model.eval()
        self.device = torch.device(device)
        self._z_H = self._z_L = self._x = self._logits = None

    @torch.inference_mode()
    def start(self, tokens: np.ndarray, puzzle_ids: np.ndarray) -> None:
        t = torch.from_numpy(np.ascontiguousarray(tokens, np.int64)).to(self.device)
        p = torch.from_numpy(np.ascontiguousarray(puzzle_ids, np.int64)).to(self.device)
        self._x = self.model.embed(t, p)
        self._z_H, self._z_L = self.model.initial_carry(t.shape[0], self.device)

    @torch.inference_mode()
    def step(self) -> tuple[np.ndarray, np.ndarray]:
        self._z_H, self._z_L = self.model.reason(self._z_H, self._z_L, self._x)
        self._logits, q_halt, q_continue = self.model.heads(self._z_H)
        return q_halt.cpu().numpy(), q_continue.cpu().numpy()

    @torch.inference_mode()
    def predictions(self, rows: np.ndarray) -> np.ndarray:
        idx = torch.from_numpy(np.asarray(rows, np.int64)).to(self.device)
        return self._logits.index_select(0, idx).argmax(-1).cpu().numpy().astype(np.int64)

    @torch.inference_mode()
    def logits(self, rows: np.ndarray) -> np.ndarray:
        idx = torch.from_numpy(np.asarray(rows, np.int64)).to(self.device)
        return self._logits.index_select(0, idx).float().cpu().numpy()

    @torch.inference_mode()
    def keep(self, rows: np.ndarray) -> None:
        idx = torch.from_numpy(np.asarray(rows, np.int64)).to(self.device)
        self._z_H = self._z_H.index_select(0, idx)
        self._z_L = self._z_L.index_select(0, idx)
        self._x = self._x.index_select(0, idx)
        self._logits = self._logits.index_select(0, idx)

    @torch.inference_mode()
    def admit(self, tokens: np.ndarray, puzzle_ids: np.ndarray) -> None:
        t = torch.from_numpy(np.ascontiguousarray(tokens, np.int64)).to(self.device)
        p = torch.from_numpy(np.ascontiguousarray(puzzle_ids, np.int64)).to(self.device)
        z_H, z_L = self.model.initial_carry(t.shape[0], self.device)
        self._x = torch.cat([self._x, self.model.embed(t, p)])
        self._z_H, self._z_L = torch.cat([self._z_H, z_H]), torch.cat([self._z_L, z_L])
        if self._logits is not None:  # the admitted rows have no last segment yet: zeros
            self._logits = torch.cat([self._logits, self._logits.new_zeros((t.shape[0], *self._logits.shape[1:]))])

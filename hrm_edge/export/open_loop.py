"""Open-loop parity: one segment at a time from the SAME input carry.

Closed-loop parity lets each runtime run its own ACT loop, which is right for trained models
but meaningless for random weights: a random HRM is chaotic (a 1e-6 perturbation grows 3-4x
per segment). Here the PyTorch reference runs the ACT loop, and at every step t the candidate
graph gets the reference's carry of step t and must reproduce the reference's segment outputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hrm_edge.model.hrm import RecurrentModel


@torch.inference_mode()
def open_loop_errors(model: RecurrentModel, session: Any, tokens: np.ndarray, puzzle_ids: np.ndarray,
                     steps: int, model_puzzle_ids: np.ndarray | None = None,
                     embed_session: Any = None) -> list[dict[str, float]]:
    """Per step t = 1..steps: max-abs difference of logits, q values, z_H and z_L between the
    reference segment and the ONNX segment graph `session`, both fed the reference carry of step t-1.
    `embed_session`: the embed graph, for a segment graph that takes x instead of tokens/puzzle_ids."""
    model = model.eval()
    t = torch.from_numpy(np.asarray(tokens, np.int64))
    p = torch.from_numpy(np.asarray(puzzle_ids, np.int64))
    ids = np.asarray(model_puzzle_ids if model_puzzle_ids is not None else puzzle_ids, np.int64)
    z_H, z_L = model.initial_carry(len(t))
    inputs = {"tokens": t.numpy(), "puzzle_ids": ids}
    if embed_session is not None:
        inputs = {"x": embed_session.run(["x"], inputs)[0]}
    out = []
    for step in range(1, steps + 1):
        feeds = {**inputs, "z_H": z_H.float().numpy(), "z_L": z_L.float().numpy()}
        got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
        z_H, z_L, logits, q_halt, q_cont = model.segment(z_H, z_L, t, p)
        ref = {"z_H_out": z_H, "z_L_out": z_L, "logits": logits, "q_halt": q_halt, "q_continue": q_cont}
        row: dict[str, float] = {"step": step}
        for name, value in ref.items():
            row[name] = float(np.abs(got[name].astype(np.float32) - value.float().numpy()).max())
        row["logits_scale"] = float(logits.abs().max())
        out.append(row)
    return out

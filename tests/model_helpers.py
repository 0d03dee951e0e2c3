"""Small models for tests: a seeded tiny HRM/TRM whose q-head halts puzzles at different steps."""

from __future__ import annotations

import torch

from hrm_edge.model import create_model
from hrm_edge.model.config import preset_config


def spread_q_head(model: torch.nn.Module) -> torch.nn.Module:
    """Re-draw the q-head (N(0, 0.3) weights, zero bias) so that random-weight puzzles halt at
    different ACT steps instead of all at the first or the last; returns `model`."""
    with torch.no_grad():
        model.inner.q_head.weight.normal_(0, 0.3)
        model.inner.q_head.bias.zero_()
    return model


def q_model(preset: str = "sudoku-tiny", seed: int = 3, **overrides) -> torch.nn.Module:
    """`preset` (fp32, with `overrides`) seeded with `seed`, its q-head spread, in eval mode."""
    torch.manual_seed(seed)
    cfg = preset_config(preset, forward_dtype="float32", **overrides)
    return spread_q_head(create_model(cfg, compute_dtype="float32")).eval()

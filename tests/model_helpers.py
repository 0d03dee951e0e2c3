"""Small models for tests: a seeded tiny HRM/TRM whose q-head halts puzzles at different steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hrm_edge.model import create_model
from hrm_edge.model.checkpoint import save_checkpoint
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


def export_tiny_bundle(root: Path, *export_args: str) -> Path:
    """Export a seeded (seed 0) fp32 sudoku-tiny HRM to `root/bundle` with `hrm-edge export ... --golden 4
    EXPORT_ARGS`; returns the bundle directory (`root/tiny.pt` holds the checkpoint)."""
    from hrm_edge.cli.main import main

    torch.manual_seed(0)
    ckpt = save_checkpoint(root / "tiny.pt", create_model(preset_config("sudoku-tiny", forward_dtype="float32")),
                           "sudoku")
    with pytest.raises(SystemExit) as exc:
        main(["export", str(ckpt), "-o", str(root / "bundle"), "--golden", "4", *export_args])
    assert exc.value.code == 0
    return root / "bundle"

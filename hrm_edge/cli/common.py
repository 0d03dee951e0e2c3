"""Pieces shared by the CLI modules."""

from __future__ import annotations

from typing import Any

DTYPES = ("float32", "bfloat16", "float16")


def load_for_cli(ckpt: str, task: str | None, seq_len: int | None) -> Any:
    """`load_checkpoint` with torch imported only when a command needs it."""
    from hrm_edge.model.checkpoint import load_checkpoint

    return load_checkpoint(ckpt, seq_len=seq_len, task=task)

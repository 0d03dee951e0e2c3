"""Pieces shared by the CLI modules."""

from __future__ import annotations

from typing import Any

from hrm_edge.errors import HrmEdgeError

DTYPES = ("float32", "bfloat16", "float16")


def load_for_cli(ckpt: str, task: str | None, seq_len: int | None) -> Any:
    """`load_checkpoint` with torch imported only when a command needs it; a `task` whose puzzles do
    not fit the model (another seq_len, token ids beyond its vocabulary) is refused here, before any
    work, instead of failing inside the model."""
    from hrm_edge.model.checkpoint import load_checkpoint
    from hrm_edge.puzzles.codecs import get_codec

    ck = load_checkpoint(ckpt, seq_len=seq_len, task=task)
    if task is not None:
        codec = get_codec(task)
        if codec.seq_len != ck.config.seq_len:
            raise HrmEdgeError(f"task {task}: {ckpt} does not fit: puzzles have {codec.seq_len} tokens, "
                               f"the checkpoint expects {ck.config.seq_len}")
        if codec.vocab_size > ck.config.vocab_size:
            raise HrmEdgeError(f"task {task}: {ckpt} does not fit: puzzles use token ids below {codec.vocab_size}, "
                               f"the checkpoint's vocabulary has {ck.config.vocab_size}")
    return ck


def torch_device(name: str) -> str:
    """Check that torch can compute on device `name` (cpu, cuda, cuda:1, mps ...) before a model is
    loaded; returns it. HrmEdgeError for a malformed name, an absent device, or `meta` (holds no data)."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise HrmEdgeError(f"--device {name!r}: {str(exc).splitlines()[0]}") from None
    if device.type == "meta":
        raise HrmEdgeError("--device meta holds no data and cannot run a model: use cpu or cuda")
    try:
        torch.zeros(1, device=device)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise HrmEdgeError(f"--device {name!r} is not usable here: {str(exc).splitlines()[0]}") from None
    return name

"""Issue 21, session 20: can rotations or clipping bring the HRM 6x6 demo's per-row int8 sites under its noise floor?

A PyTorch simulation in the style of `scripts/int8_row_scales.py`: forward hooks make every Linear call an
int8 site (weights symmetric int8 per output channel, round to nearest; activations symmetric int8 with one
scale per row and call, |max| / 127: the shipped per-row form). No SmoothQuant and no GPTQ, so each variant is
compared on the same footing. Every variant runs the closed loop on the validation puzzles under `q` against the
ORIGINAL checkpoint's PyTorch fp32 rollout, gated with the INT8 gates. Variants:

- "weights" / "activations" / "both": which half of the rounding breaks the loop (the other half in float).
- "R1", "R1+R2": offline rotations that leave the fp32 model exact (QuaRot/SpinQuant's R1 and R2): the residual
  stream times a signed Hadamard matrix Q [D, D] (HRM's RMSNorm has no weight, so norm(x Q) = norm(x) Q; every
  weight reading the stream becomes W Q, every weight writing it Q^T W, the embeddings and H_init / L_init x Q),
  and per head the value rows and the o_proj columns by a signed Hadamard [Dh, Dh]. They make the inputs of
  qkv, gate_up, o_proj, lm_head and q_head more uniform across channels; down_proj's input is untouched.
- "hadamard-B-sS": an online block-diagonal Hadamard (block B, random signs from seed S) at every down_proj input,
  x H against H^T W (QuaRot's R4; it would cost a float matmul per down_proj site in a graph).
- "clip-C": activation scales C * |max| / 127, values clipped to +-127.

    python -m scripts.int8_rotation [DEMO] [--val 256] [--out bench/latest/session20-rotation]

Appends to OUT/rotation.json (one record per demo).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hrm_edge.act import HaltingPolicy
from hrm_edge.model.runner import TorchSegmentRunner
from hrm_edge.quant.fakequant import int8_weight
from hrm_edge.quant.search import ClosedLoop
from scripts.int8_noise_floor import BATCH, GATES, closed_loop, linears
from scripts.int8_row_scales import KEYS, load_demo, save_record

VARIANTS = ("weights", "activations", "both", "R1", "R1+R2", "hadamard-32-s1", "hadamard-32-s2",
            "hadamard-512-s1", "hadamard-512-s2", "clip-0.9", "clip-0.8")


def signed_hadamard(n: int, seed: int | None) -> torch.Tensor:
    """An orthogonal [n, n] matrix D H / sqrt(n): Sylvester's Hadamard matrix H (n a power of 2) with its rows
    signed at random from `seed` (D = diag(+-1); seed None: D = I); fp64."""
    h = np.array([[1.0]])
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    if h.shape[0] != n:
        raise ValueError(f"no Sylvester Hadamard matrix of size {n}")
    signs = np.ones(n) if seed is None else np.random.default_rng(seed).choice([-1.0, 1.0], n)
    return torch.from_numpy(signs[:, None] * h / np.sqrt(n))


def rotated(model: torch.nn.Module, per_head: bool, seed: int = 0) -> torch.nn.Module:
    """A copy of an HRM whose residual stream is rotated (R1) and, with `per_head`, whose values are rotated
    per head (R2); the same function as `model` up to float rounding (module docstring)."""
    m = copy.deepcopy(model)
    inner, cfg = m.inner, m.config
    D, heads = cfg.hidden_size, cfg.num_heads
    dh = D // heads
    q, qh = signed_hadamard(D, seed), signed_hadamard(dh, seed + 1)

    def reads(lin: torch.nn.Module) -> None:
        lin.weight.data = (lin.weight.data.double() @ q).float()

    def writes(lin: torch.nn.Module) -> None:
        lin.weight.data = (q.T @ lin.weight.data.double()).float()

    with torch.no_grad():
        emb = inner.embed_tokens.embedding_weight
        emb.data = (emb.data.double() @ q).float()
        pe = inner.puzzle_emb.weights
        pe.copy_((pe.double().view(pe.shape[0], -1, D) @ q).view(pe.shape).float())
        for init in (inner.H_init, inner.L_init):
            init.copy_((init.double() @ q).float())
        reads(inner.lm_head)
        reads(inner.q_head)
        for level in (inner.H_level, inner.L_level):
            for block in level.layers:
                attn, mlp = block.self_attn, block.mlp
                reads(attn.qkv_proj)
                writes(attn.o_proj)
                reads(mlp.gate_up_proj)
                writes(mlp.down_proj)
                if per_head:
                    w = attn.qkv_proj.weight.data.double()  # [3D, D]; rows 2D.. are v, head-major
                    w[2 * D:] = torch.einsum("ij,hjd->hid", qh.T, w[2 * D:].view(heads, dh, D)).reshape(D, D)
                    attn.qkv_proj.weight.data = w.float()
                    o = attn.o_proj.weight.data.double().view(D, heads, dh)  # columns head-major
                    attn.o_proj.weight.data = torch.einsum("ohj,jk->ohk", o, qh).reshape(D, D).float()
    return m


def _q8_rows(x: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    """Per-row symmetric int8 then dequantize, scale clip * |max| / 127, values clipped to +-127."""
    s = (clip * x.abs().amax(-1, keepdim=True)).clamp_min(1e-12) / 127
    return torch.round(x / s).clamp(-127, 127) * s


@contextlib.contextmanager
def int8_sites(model: torch.nn.Module, weights: bool = True, activations: bool = True, clip: float = 1.0,
               hadamard: tuple[int, int] | None = None) -> Iterator[None]:
    """Every Linear call as a simulated int8 site; `hadamard` (block, seed): the down_proj sites read x H
    against H^T W (module docstring)."""
    handles = []
    for name, module in linears(model):
        w = module.weight.detach().float()
        h = None
        if hadamard is not None and "down_proj" in name:
            block, seed = hadamard
            h = torch.block_diag(*[signed_hadamard(block, 1000 * seed + k) for k in range(w.shape[1] // block)]).float()
            w = w @ h
        wq = int8_weight(w) if weights else w

        def hook(_m: torch.nn.Module, args: tuple, y: torch.Tensor, wq: torch.Tensor = wq,
                 h: torch.Tensor | None = h) -> torch.Tensor:
            x = args[0].float()
            if h is not None:
                x = x @ h
            return torch.nn.functional.linear(_q8_rows(x, clip) if activations else x, wq).to(y.dtype)

        handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _loop_for(model: torch.nn.Module, reference: ClosedLoop) -> ClosedLoop:
    """The reference loop's puzzles and ORIGINAL rollout, with `model`'s own initial carry (rotated models)."""
    inner = model.inner
    return ClosedLoop(reference.tokens, reference.puzzle_ids, reference.labels, reference.reference,
                      inner.H_init.detach().float().numpy(), inner.L_init.detach().float().numpy(),
                      model.config.total_len, reference.policy, reference.max_steps, GATES, BATCH, 1)


def _metrics(ev: dict[str, Any]) -> dict[str, Any]:
    return {**{k: ev["metrics"][k] for k in KEYS}, "passed": ev["passed"]}


def run(model: torch.nn.Module, loop: ClosedLoop, variant: str) -> dict[str, Any]:
    """Closed-loop metrics of one variant (VARIANTS) against the original's rollout."""
    if variant.startswith("R1"):
        m = rotated(model, per_head=variant == "R1+R2")
        rloop = _loop_for(m, loop)
        fp32 = _metrics(rloop.evaluate_runner(TorchSegmentRunner(m)))
        with int8_sites(m):
            return {**_metrics(rloop.evaluate_runner(TorchSegmentRunner(m))), "rotated_fp32": fp32}
    kwargs: dict[str, Any] = {}
    if variant in ("weights", "activations"):
        kwargs = {"weights": variant == "weights", "activations": variant == "activations"}
    elif variant.startswith("hadamard-"):
        _, block, seed = variant.split("-")
        kwargs = {"hadamard": (int(block), int(seed[1:]))}
    elif variant.startswith("clip-"):
        kwargs = {"clip": float(variant[5:])}
    with int8_sites(model, **kwargs):
        return _metrics(loop.evaluate_runner(TorchSegmentRunner(model)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo", nargs="?", default="sudoku6-demo")
    ap.add_argument("--val", type=int, default=256)
    ap.add_argument("--out", type=Path, default=Path("bench/latest/session20-rotation"))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, _calib, val, steps = load_demo(args.demo)
    n = min(args.val, len(val.inputs))
    loop = closed_loop(model, val.inputs[:n].astype(np.int64), val.puzzle_ids[:n].astype(np.int64), val.labels[:n],
                       HaltingPolicy("q"), steps)
    rec: dict[str, Any] = {"puzzles": n, "policy": "q", "reference": "the original checkpoint, PyTorch fp32"}
    for variant in args.variants.split(","):
        rec[variant] = run(model, loop, variant)
        print(args.demo, variant, json.dumps(rec[variant]), flush=True)
    save_record(args.out / "rotation.json", args.demo, rec)


if __name__ == "__main__":
    main()

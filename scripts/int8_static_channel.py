"""Issue 21, session 19: STATIC int8 activation scales per hidden channel at the TRM token-MLP sites.

Session 12 found what breaks per-tensor int8 on the maze demo: the token MLP (`mlp_t`) multiplies a
[batch, hidden, position] tensor whose rows (one per hidden channel) differ ~160x in scale, and one
scale for the tensor rounds the small rows away. The shipped cpu graph fixes this with a scale per row
computed per call (dynamic, `hrm_edge.quant.row_scales`), which TensorRT's explicit-quantization form
cannot express, and which costs the cpu graph its per-row preamble (Abs, ReduceMax, Div) at every site.

The row axis of the token MLP's input is NOT its contraction axis (it contracts over positions), so a
calibrated per-channel scale c[d] commutes with the matmul:

    x @ W  ==  c * (round(x / c / s) * s) @ W      (c: [hidden, 1], s: one static scale)

i.e. a per-tensor static Q/DQ of x / c with the output multiplied by c, a form TensorRT builds and ORT
runs without a per-call reduction. Simulated here, plain (RTN int8 weights per output channel,
symmetric int8 activations, round half to even; no SmoothQuant, no GPTQ), as
`scripts/int8_row_scales.py` does. Scales are calibrated as |max| over the calibration puzzles' reference
rollout (every segment), per site (a module's call within a segment), per hidden channel at the token-MLP
sites. Modes:

- "static-tensor": every site one static scale (the tensorrt flavour's form);
- "static-chan": token-MLP sites static per hidden channel, the rest static per tensor;
- "static-row": every 3-d site input static per row of its non-contraction axis (hidden channel at the
  token-MLP sites, position elsewhere), 2-d inputs (the q head's) one static scale;
- "static-row-qf": "static-row" with the q head in float;
- "static-chan+row": token-MLP sites static per hidden channel, the rest dynamic per row (per token);
- "row": every site dynamic per row (the shipped cpu form).

Each mode: the closed loop on the validation puzzles under `q` against the ORIGINAL's PyTorch fp32 rollout,
with the INT8 gates.

    python -m scripts.int8_static_channel DEMO [VAL_PUZZLES] [--calib 256] [--out bench/latest/session19-static-channel]
"""
from __future__ import annotations

import argparse
import contextlib
import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hrm_edge.act import HaltingPolicy
from hrm_edge.model.runner import TorchSegmentRunner
from hrm_edge.quant.fakequant import int8_weight, linear_calls
from scripts.int8_noise_floor import closed_loop, linears, reference_carries
from scripts.int8_row_scales import load_demo, save_record

MODES = ("static-tensor", "static-chan", "static-row", "static-row-qf", "static-chan+row", "row")
KEYS = ("puzzles", "solved_agreement", "halting_agreement", "accuracy_drop")


def q8(t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 (-127..127), round half to even, dequantized; `scale` broadcasts against t."""
    s = scale.clamp_min(1e-12) / 127
    return torch.round(t / s).clamp(-127, 127) * s


def token_mlp(name: str) -> bool:
    return ".mlp_t." in name


class Calls:
    """Per module, the index of its current call within a segment (every segment calls each Linear the
    same number of times, so a running count modulo that number)."""

    def __init__(self, per_segment: dict[str, int]) -> None:
        self.per_segment = per_segment
        self.count: dict[str, int] = defaultdict(int)

    def next(self, name: str) -> int:
        i = self.count[name] % self.per_segment[name]
        self.count[name] += 1
        return i


@contextlib.contextmanager
def removed(handles: list) -> Iterator[None]:
    """Remove these hook handles when the block ends."""
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def calibrate(model: torch.nn.Module, x: torch.Tensor, carries: list, per_segment: dict[str, int]
              ) -> dict[tuple[str, int], torch.Tensor]:
    """|max| of every site's input over the calibration carries: per row of a 3-d input ([rows, 1]: the
    hidden channel at the token-MLP sites, the position elsewhere), a scalar for a 2-d input."""
    amax: dict[tuple[str, int], torch.Tensor] = {}
    calls = Calls(per_segment)

    def hook(_m: torch.nn.Module, args: tuple, name: str) -> None:
        a = args[0].float().abs()
        v = a.amax(dim=(0, 2)).unsqueeze(-1) if a.dim() == 3 else a.amax()
        key = (name, calls.next(name))
        amax[key] = torch.maximum(amax[key], v) if key in amax else v

    with removed([m.register_forward_pre_hook(lambda m, a, n=n: hook(m, a, n)) for n, m in linears(model)]):
        for z_H, z_L in carries:
            model.heads(model.reason(z_H, z_L, x)[0])
    return amax


@contextlib.contextmanager
def int8(model: torch.nn.Module, mode: str, amax: dict[tuple[str, int], torch.Tensor],
         per_segment: dict[str, int]) -> Iterator[None]:
    """Every Linear call computes as the simulated int8 site of `mode` (see the module docstring)."""
    calls = Calls(per_segment)
    handles = []
    for name, module in linears(model):
        wq = int8_weight(module.weight.detach().float())

        def hook(_m: torch.nn.Module, args: tuple, y: torch.Tensor, wq: torch.Tensor = wq, name: str = name
                 ) -> torch.Tensor:
            x = args[0].float()
            i = calls.next(name)
            if mode == "static-row-qf" and name.endswith("q_head"):
                return y
            if mode == "row" or (mode == "static-chan+row" and not token_mlp(name)):
                scale = x.abs().amax(-1, keepdim=True)
            elif mode.startswith("static-row") or (token_mlp(name) and mode != "static-tensor"):
                scale = amax[(name, i)]
            else:
                scale = amax[(name, i)].amax()
            return torch.nn.functional.linear(q8(x, scale), wq).to(y.dtype)

        handles.append(module.register_forward_hook(hook))
    with removed(handles):
        yield


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo")
    ap.add_argument("val_puzzles", type=int, nargs="?", default=256)
    ap.add_argument("--calib", type=int, default=256, help="calibration puzzles for the static scales")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--out", type=Path, default=Path("bench/latest/session19-static-channel"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, calib, val, steps = load_demo(args.demo)
    amax: dict[tuple[str, int], torch.Tensor] = {}
    per_segment = linear_calls(model)
    for lo in range(0, min(args.calib, len(calib.inputs)), 64):
        x, carries = reference_carries(model, torch.from_numpy(calib.inputs[lo:lo + 64].astype(np.int64)),
                                       torch.from_numpy(calib.puzzle_ids[lo:lo + 64].astype(np.int64)), steps)
        for k, v in calibrate(model, x, carries, per_segment).items():
            amax[k] = torch.maximum(amax[k], v) if k in amax else v
    def spread(token: bool) -> float | None:
        s = [float(v.max() / v.clamp_min(1e-12).min()) for k, v in amax.items()
             if v.numel() > 1 and token_mlp(k[0]) == token]
        return float(np.median(s)) if s else None

    rec: dict[str, Any] = {"calib_puzzles": args.calib, "sites": len(amax),
                           "token_mlp_sites": sum(token_mlp(k[0]) for k in amax),
                           "row_amax_spread_median": {"token_mlp": spread(True), "other": spread(False)}}
    print(args.demo, json.dumps(rec), flush=True)
    n = min(args.val_puzzles, len(val.inputs))
    tokens, ids = val.inputs[:n].astype(np.int64), val.puzzle_ids[:n].astype(np.int64)
    loop = closed_loop(model, tokens, ids, val.labels[:n], HaltingPolicy("q"), steps)
    for mode in args.modes:
        with int8(model, mode, amax, per_segment):
            ev = loop.evaluate_runner(TorchSegmentRunner(model))
        rec[mode] = {**{key: ev["metrics"][key] for key in KEYS}, "passed": ev["passed"]}
        print(args.demo, mode, json.dumps(rec[mode]), flush=True)
    save_record(args.out / "static_channel.json", args.demo, rec)


if __name__ == "__main__":
    main()

"""Issue 21, session 12: per-tensor vs per-row int8 activation scales, simulated in PyTorch.

A plain int8 simulation installed as forward hooks on every Linear call of the model (the INT8 graph's
MatMul sites): weights per output channel, symmetric int8; activations symmetric int8 with a scale
computed per call, either one scale for the whole input tensor ("tensor", what DynamicQuantizeLinear
does) or one per row of the matmul input ("row": per token for the channel MLPs and attention
projections, per (batch, hidden channel) row for the TRM token MLP, `mlp_t`, which mixes positions);
"row-mlp_t" uses rows on the token-MLP sites only. Round to nearest; no SmoothQuant, no GPTQ: this
isolates the activation scale's granularity.

Measured per mode: the accumulated per-site error of one segment from the reference carries (as
`scripts/int8_noise_floor.py` measures it; 32 calibration puzzles, every step), beside fresh relative
noise of 1e-2; then the closed loop on the validation puzzles under `q` against the ORIGINAL's PyTorch
fp32 rollout with the INT8 gates.

    python -m scripts.int8_row_scales DEMO [VAL_PUZZLES] [--out bench/latest/session12-row-scales]

Appends to OUT/row_scales.json (one record per demo).
"""
from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hrm_edge.act import HaltingPolicy
from hrm_edge.model.checkpoint import load_checkpoint
from hrm_edge.model.runner import TorchSegmentRunner
from hrm_edge.puzzles.datasets import calib_data_dir, load_puzzle_set
from hrm_edge.quant.fakequant import int8_weight
from scripts.int8_noise_floor import closed_loop, linears, perturbed, reference_carries, site_errors

MODES = ("tensor", "row", "row-mlp_t")
KEYS = ("puzzles", "solved_agreement", "halting_agreement", "accuracy_drop")


def q8(t: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Symmetric int8 activation, round to nearest, dequantized; one scale (|max| / 127) for the tensor or
    per slice along `dim`."""
    amax = t.abs().amax() if dim is None else t.abs().amax(dim, keepdim=True)
    s = amax.clamp_min(1e-12) / 127
    return torch.round(t / s).clamp(-127, 127) * s


@contextlib.contextmanager
def int8(model: torch.nn.Module, mode: str) -> Iterator[None]:
    """Every Linear call computes as the simulated int8 site of `mode` (see the module docstring)."""
    handles = []
    for name, module in linears(model):
        wq = int8_weight(module.weight.detach().float())
        per_row = mode == "row" or (mode == "row-mlp_t" and ".mlp_t." in name)

        def hook(_m: torch.nn.Module, args: tuple, y: torch.Tensor, wq: torch.Tensor = wq,
                 per_row: bool = per_row) -> torch.Tensor:
            return torch.nn.functional.linear(q8(args[0].float(), -1 if per_row else None), wq).to(y.dtype)

        handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def load_demo(name: str) -> tuple[torch.nn.Module, Any, Any, int]:
    """(the demo checkpoint's model in fp32, eval mode; its calibration and validation puzzles; its
    halt_max_steps)."""
    ck = load_checkpoint(f"checkpoints/{name}/model.pt")
    model = ck.model.set_compute_dtype("float32").eval()
    sets = [load_puzzle_set(calib_data_dir(ck.task), split=split) for split in ("calib", "val")]
    return model, *sets, int(ck.config.halt_max_steps)


def save_record(path: Path, key: str, rec: dict[str, Any]) -> None:
    """Set `key` to `rec` in the JSON object at `path` (created with its folder when missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[key] = rec
    path.write_text(json.dumps(results, indent=1, default=float))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo")
    ap.add_argument("val_puzzles", type=int, nargs="?", default=256)
    ap.add_argument("--out", type=Path, default=Path("bench/latest/session12-row-scales"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, calib, val, steps = load_demo(args.demo)
    k = 32
    x, carries = reference_carries(model, torch.from_numpy(calib.inputs[:k].astype(np.int64)),
                                   torch.from_numpy(calib.puzzle_ids[:k].astype(np.int64)), steps)
    rec: dict[str, Any] = {"open_loop_puzzles": k, "noise_1e-2_median": float(np.median(
        site_errors(model, x, carries, lambda: perturbed(model, 1e-2, 0))))}
    for mode in MODES:
        e = site_errors(model, x, carries, lambda mode=mode: int8(model, mode))
        rec[f"open_loop_{mode}"] = {"first": float(e[0]), "median": float(np.median(e)), "max": float(e.max())}
    n = min(args.val_puzzles, len(val.inputs))
    tokens, ids = val.inputs[:n].astype(np.int64), val.puzzle_ids[:n].astype(np.int64)
    loop = closed_loop(model, tokens, ids, val.labels[:n], HaltingPolicy("q"), steps)
    for mode in MODES:
        with int8(model, mode):
            ev = loop.evaluate_runner(TorchSegmentRunner(model))
        rec[f"closed_loop_{mode}"] = {**{key: ev["metrics"][key] for key in KEYS}, "passed": ev["passed"]}
        print(args.demo, mode, json.dumps(rec[f"closed_loop_{mode}"]), flush=True)
    save_record(args.out / "row_scales.json", args.demo, rec)


if __name__ == "__main__":
    main()

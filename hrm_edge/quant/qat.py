"""Quantization-aware fine-tuning (QAT): `hrm-edge qat CKPT -o OUT` and `hrm-edge export --int8 --qat-steps N`.

A short fine-tune of a trained checkpoint with the project's trainer (`hrm_edge.train.trainer`:
deep supervision over ACT segments, one-step gradient, the checkpoint's own halting rule and loss)
towards the ORIGINAL model's outputs (`hrm_edge.quant.distill`: token distributions, halting logits and the
outgoing carry of a frozen fp32 teacher run from the student's own carry; the task loss optionally, with
a weight) while every Linear call computes as the INT8 graph will (`hrm_edge.quant.fakequant`): per-channel
symmetric int8 weights and, per flavour, uint8 activations quantized per call (cpu, the dynamic
default; with `activation_scale="row"`, symmetric int8 with one scale per row and call, as
`hrm_edge.quant.row_scales` exports it) or symmetric int8 activations with calibrated scales
(tensorrt), SmoothQuant on the SwiGLU down projection as the exporter folds it, the carry path and
the halting head's input included. Gradients pass the rounding straight through.

Data: the training distribution only -- generated Sudoku puzzles (a pool in OUT/pool.npz from which
every calibration and validation puzzle of calib_data/<task> is removed) or generated mazes that are
none of the shipped mazes up to symmetry; never the calibration or validation puzzles.
Static activation scales (tensorrt) are calibrated once, on `calib_batches` training batches run
through every ACT step of the starting checkpoint, and kept for the whole run (OUT/qat_spec.pt, so a
resumed run quantizes identically). The INT8 graph is then exported from the fine-tuned checkpoint by
the ordinary pipeline (`hrm_edge.quant.quantize`), whose calibration sets the scales the graph ships.

Resume: the trainer's state (weights, optimizer, RNGs, the in-flight ACT batch) is saved every
`checkpoint_every` steps and on Ctrl-C / SIGTERM in OUT/train_state.pt; running again with
`resume=True` continues where it stopped and ends with the same weights as an uninterrupted run.
The fine-tuned checkpoint OUT/model.pt carries the source card plus a `qat` section (flavour, steps,
data, learning rate, minutes, the source checkpoint's sha256).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hrm_edge.errors import HrmEdgeError
from hrm_edge.quant.distill import Distiller, DistillWeights
from hrm_edge.quant.fakequant import S8, ActQuant, SiteQuant, linear_calls
from hrm_edge.quant.quantize import DEFAULT_SMOOTH_ALPHA, normalize_target, settings_for

SPEC_FILE = "qat_spec.pt"
STATE_FILE = "train_state.pt"


class QatError(HrmEdgeError):
    """A QAT run that cannot start (unsupported task, a finished or foreign run directory)."""


@dataclass(frozen=True, kw_only=True)
class QatConfig:
    """flavour: "cpu" | "tensorrt" (the INT8 graph the fine-tune simulates); activation_scale: "tensor" |
    "row" (the graph's activation scales, `hrm_edge.quant.row_scales`); steps: optimizer steps in all
    (a resumed run stops there too); lr: peak learning rate after `warmup_steps`; batch_size: ACT slots;
    calib_batches: training batches whose activations set the static scales; smooth_alpha: SmoothQuant
    strength (the exporter's default; None: off); distill: the objective's weights (None: the trainer's
    task loss alone, the checkpoint's recipe); pool_size: generated Sudoku pool; checkpoint_every:
    steps between saved states; max_minutes: wall-time cap; seed: data and init of the batch."""

    flavour: str = "cpu"
    activation_scale: str = "tensor"
    steps: int = 200
    lr: float = 1e-5
    batch_size: int = 32
    warmup_steps: int = 10
    calib_batches: int = 4
    smooth_alpha: float | None = DEFAULT_SMOOTH_ALPHA
    distill: DistillWeights | None = dataclasses.field(default_factory=DistillWeights)
    pool_size: int = 500
    checkpoint_every: int = 25
    max_minutes: float = 120.0
    seed: int = 0


# ----------------------------------------------------------------------------------------------
# data


def training_sampler(task: str, run_dir: Path, pool_size: int, seed: int) -> tuple[Any, str]:
    """(sampler, description) of the training distribution of `task`, never a calib_data puzzle."""
    from hrm_edge.puzzles.datasets import calib_data_dir, load_puzzle_set
    from hrm_edge.train.data import MazeSampler, SudokuPool, SudokuSampler, generated_pool

    shipped = calib_data_dir(task)
    sets = [load_puzzle_set(shipped, split=s) for s in ("calib", "val") if (shipped / f"{s}.txt").exists()]
    rng = np.random.default_rng(seed)
    if task in ("sudoku", "sudoku6"):
        path = run_dir / "pool.npz"
        if path.exists():
            pool = SudokuPool.load(path)
        else:
            box = (3, 3) if task == "sudoku" else (2, 3)
            pool = generated_pool(pool_size, box, seed=seed + 1)
            held_out = {bytes(np.asarray(p, np.int8) - 1) for s in sets for p in s.inputs}
            keep = [i for i, p in enumerate(pool.puzzles) if bytes(p.astype(np.int8)) not in held_out]
            pool = SudokuPool(pool.puzzles[keep], pool.solutions[keep], pool.box)
            pool.save(path)
        return SudokuSampler(pool, rng), (f"{len(pool.puzzles)} generated {task} puzzles (seed {seed + 1}), "
                                          f"augmented; calib_data calib/val puzzles removed")
    if task == "maze" or task.startswith("maze:"):
        from hrm_edge.puzzles.maze_gen import maze_symmetry_key

        size = int(task.split(":")[1]) if ":" in task else 30
        manifest = shipped / "MANIFEST.json"
        bands = (json.loads(manifest.read_text()).get("generator", {}).get("path_length_bands")
                 if manifest.exists() else None) or [[1, size * size]]
        exclude = {maze_symmetry_key(m) for s in sets for m in s.inputs}
        return (MazeSampler(size, rng, [tuple(b) for b in bands], exclude),
                f"generated {size}x{size} mazes, path-length bands {bands}, none of the shipped mazes")
    raise QatError(f"QAT fine-tunes Sudoku (sudoku, sudoku6) and maze checkpoints; this one is {task!r}")


# ----------------------------------------------------------------------------------------------
# the quantizers


@torch.no_grad()
def site_absmax(model: nn.Module, tokens: np.ndarray) -> dict[str, list[torch.Tensor]]:
    """Per Linear module and call, the per-channel |max| [in] of its input over every ACT segment
    (halt_max_steps, the fixed policy) of these puzzles."""
    calls = linear_calls(model)
    stats: dict[str, list[torch.Tensor | None]] = {n: [None] * c for n, c in calls.items()}
    counters = dict.fromkeys(calls, 0)
    modules = dict(model.named_modules())

    def hook(name: str) -> Callable[..., None]:
        def record(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            i = counters[name] % calls[name]
            counters[name] += 1
            m = args[0].detach().abs().float().reshape(-1, args[0].shape[-1]).amax(0)
            old = stats[name][i]
            stats[name][i] = m if old is None else torch.maximum(old, m)
        return record

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in calls]
    try:
        device = next(model.parameters()).device
        t = torch.from_numpy(np.ascontiguousarray(tokens, np.int64)).to(device)
        x = model.embed(t, torch.zeros(len(t), dtype=torch.long, device=device))
        z_H, z_L = model.initial_carry(len(t), device)
        for _ in range(model.config.halt_max_steps):
            z_H, z_L = model.reason(z_H, z_L, x)
            model.heads(z_H)
    finally:
        for h in handles:
            h.remove()
    return {n: [s for s in v if s is not None] for n, v in stats.items()}


def smoothing(model: nn.Module, absmax: dict[str, list[torch.Tensor]], alpha: float) -> dict[str, torch.Tensor]:
    """SmoothQuant divisors of every SwiGLU down projection, as `hrm_edge.quant.quantize.smooth_swiglu`
    computes them: s_j = amax_j^alpha / wmax_j^(1 - alpha), clipped to [1e-3, 1e3]."""
    modules = dict(model.named_modules())
    out = {}
    for name, per_call in absmax.items():
        if not name.endswith("mlp.down_proj"):
            continue
        amax = torch.stack(per_call).amax(0)
        wmax = modules[name].weight.detach().abs().float().amax(0)  # torch layout [out, in]: per input channel
        s = amax.clamp_min(1e-5).pow(alpha) / wmax.clamp_min(1e-5).pow(1.0 - alpha)
        out[name] = s.clamp(1e-3, 1e3)
    return out


def qat_spec(flavour: str, absmax: dict[str, list[torch.Tensor]], smooth: dict[str, torch.Tensor],
             activation_scale: str = "tensor") -> list[SiteQuant]:
    """The quantizers of a QAT run: every Linear call, weights int8 per channel, activations per flavour
    and `activation_scale` ("tensor" | "row": the same per-row int8 in both flavours)."""
    flavour = normalize_target(flavour)
    settings_for(flavour, activation_scale=activation_scale)  # refuses an unknown scale
    spec = []
    for name, per_call in absmax.items():
        s = smooth.get(name)
        for call, amax in enumerate(per_call):
            if activation_scale == "row":
                act = ActQuant("row")
            elif flavour == "cpu":
                act = ActQuant("dynamic")
            else:
                top = float((amax / s).max() if s is not None else amax.max())
                act = ActQuant("static", max(top, 1e-8) / 127.0, 0, S8)
            spec.append(SiteQuant(name, call, f"{name}#{call}", act, int8_weight=True, smooth=s))
    return spec


# ----------------------------------------------------------------------------------------------
# the run


@dataclass
class QatResult:
    checkpoint: Path  # OUT/model.pt, the fine-tuned checkpoint
    steps: int
    seconds: float
    card: dict[str, Any]


def run_qat(ck: Any, out_dir: str | Path, cfg: QatConfig, *, resume: bool = False, progress: bool = True,
            log: Callable[[str], None] | None = None) -> QatResult:
    """Fine-tune `ck` (a loaded `Checkpoint`) with fake quantization into OUT (see the module docstring)."""
    from hrm_edge.model import create_model
    from hrm_edge.model.checkpoint import save_checkpoint
    from hrm_edge.quant.fakequant import fake_quant
    from hrm_edge.train.trainer import TrainConfig, Trainer

    log = log or (lambda m: None)
    flavour = normalize_target(cfg.flavour)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_path, spec_path = out / STATE_FILE, out / SPEC_FILE
    if state_path.exists() and not resume:
        raise QatError(f"{out} holds a QAT run already: resume it, or choose another output directory")
    task = ck.task
    sampler, data = training_sampler(task, out, cfg.pool_size, cfg.seed)
    mcfg = dataclasses.replace(ck.config, forward_dtype="float32")
    tcfg = TrainConfig(task=task, batch_size=cfg.batch_size, lr=cfg.lr, puzzle_emb_lr=cfg.lr, weight_decay=0.0,
                       warmup_steps=cfg.warmup_steps, max_steps=cfg.steps, max_minutes=cfg.max_minutes,
                       eval_every=cfg.checkpoint_every, checkpoint_every=cfg.checkpoint_every, seed=cfg.seed,
                       threads=torch.get_num_threads(), start_givens=0, min_givens=0,
                       extra={"qat": flavour, "source": ck.provenance.get("sha256")})
    loss_fn = None
    if cfg.distill is not None:
        teacher = create_model(mcfg, compute_dtype="float32")
        teacher.load_state_dict(ck.model.state_dict())
        loss_fn = Distiller(teacher, cfg.distill)
    trainer = Trainer(mcfg, tcfg, sampler, out, val=None, loss_fn=loss_fn)
    trainer.model.load_state_dict(ck.model.state_dict())
    if resume and spec_path.exists():
        saved = torch.load(spec_path, weights_only=True)
        if saved["flavour"] != flavour or saved.get("activation_scale", "tensor") != cfg.activation_scale:
            raise QatError(f"{out} is a {saved['flavour']} QAT run with {saved.get('activation_scale', 'tensor')} "
                           "activation scales; resume it with those")
        absmax, smooth = saved["absmax"], saved["smooth"]
    else:
        tokens, _, _ = sampler.sample(cfg.calib_batches * cfg.batch_size, 0, mcfg.seq_len)
        absmax = site_absmax(trainer.model.eval(), tokens)
        smooth = smoothing(trainer.model, absmax, cfg.smooth_alpha) if cfg.smooth_alpha else {}
        torch.save({"flavour": flavour, "activation_scale": cfg.activation_scale, "absmax": absmax,
                    "smooth": smooth}, spec_path)
    if resume and state_path.exists():
        trainer.load_state_dict(torch.load(state_path, weights_only=True))
        log(f"QAT: resumed {out} at step {trainer.step} of {cfg.steps}")
    spec = qat_spec(flavour, absmax, smooth, cfg.activation_scale)
    done = trainer.step
    log(f"QAT ({flavour}): {cfg.steps - done} step(s) of {cfg.batch_size} ACT slots on {data}; "
        f"{len(spec)} fake-quantized sites; objective: {'distillation' if cfg.distill else 'task loss'}")
    t0 = time.perf_counter()
    trainer.model.train()
    with fake_quant(trainer.model, spec):
        trainer.fit(progress=progress)
    seconds = time.perf_counter() - t0
    card = dict(ck.card or {})
    objective = (f"distillation from the original fp32 model ({dataclasses.asdict(cfg.distill)})"
                 if cfg.distill is not None else "the checkpoint's task loss")
    card["qat"] = {"flavour": flavour, "activation_scale": cfg.activation_scale, "steps": trainer.step, "data": data,
                   "objective": objective, "lr": cfg.lr,
                   "batch_size": cfg.batch_size, "minutes": round(trainer.elapsed / 60, 2),
                   "sites": len(spec), "smooth_alpha": cfg.smooth_alpha,
                   "source_sha256": ck.provenance.get("sha256"), "source_path": ck.provenance.get("path")}
    model = trainer.model.eval()
    path = out / "model.pt"
    save_checkpoint(path, model, task, provenance={"trained_by": "hrm-edge qat", "step": trainer.step}, card=card)
    log(f"QAT: {trainer.step} step(s) in total, {seconds:.0f} s this run; wrote {path}")
    return QatResult(path, trainer.step, seconds, card)


__all__ = ["QatConfig", "QatError", "QatResult", "qat_spec", "run_qat", "site_absmax", "smoothing",
           "training_sampler"]

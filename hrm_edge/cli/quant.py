"""`hrm-edge qat`: quantization-aware fine-tuning of a checkpoint (`hrm_edge.quant.qat`)."""

from __future__ import annotations

import json

import click

from hrm_edge.cli.common import load_for_cli
from hrm_edge.files import check_output_dir


@click.command(name="qat")
@click.argument("ckpt", type=click.Path(exists=True))
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Run directory: the fine-tuned OUTPUT/model.pt, its resume state and log.")
@click.option("--flavour", type=click.Choice(["cpu", "tensorrt"]), default="cpu", show_default=True,
              help="The INT8 graph to simulate: cpu (uint8 activations per call) or tensorrt (int8, zero point 0).")
@click.option("--activation-scale", type=click.Choice(["tensor", "row"]), default="tensor", show_default=True,
              help="one activation scale per tensor (cpu: per call; tensorrt: calibrated), or one per row and "
                   "call as `export --int8-activation-scale row` builds it.")
@click.option("--steps", type=click.IntRange(1), default=200, show_default=True, help="Optimizer steps in all.")
@click.option("--lr", type=float, default=1e-5, show_default=True,
              help="Peak learning rate (AdamW); 1e-4 moved the halting head (bench/latest/session8-qat).")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help="ACT slots per step.")
@click.option("--objective", type=click.Choice(["distill", "task"]), default="distill", show_default=True,
              help="distill: match the original fp32 model's token distributions, halting logits and carry "
                   "(what the INT8 gate measures); task: the checkpoint's own training loss.")
@click.option("--task-weight", type=click.FloatRange(0), default=0.0, show_default=True,
              help="With --objective distill: weight of the task loss added to the distillation terms.")
@click.option("--pool-size", type=click.IntRange(1), default=500, show_default=True,
              help="Generated Sudoku puzzles in the training pool.")
@click.option("--checkpoint-every", type=click.IntRange(1), default=25, show_default=True)
@click.option("--minutes", type=float, default=120.0, show_default=True, help="Wall-time cap of this call.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--task", help="Task, if the checkpoint does not record it.")
@click.option("--resume", is_flag=True, help="Continue the run in OUTPUT.")
@click.option("--progress/--no-progress", default=True)
def qat(ckpt: str, output: str, flavour: str, activation_scale: str, steps: int, lr: float, batch_size: int,
        objective: str, task_weight: float, pool_size: int,
        checkpoint_every: int, minutes: float, seed: int, task: str | None, resume: bool, progress: bool) -> None:
    """Fine-tune CKPT with fake quantization at the INT8 graph's sites (straight-through), on generated
    training puzzles; then `hrm-edge export OUTPUT/model.pt --int8` (the gate: `parity --checkpoint CKPT`)."""
    from hrm_edge.quant.distill import DistillWeights
    from hrm_edge.quant.qat import QatConfig, run_qat

    out = check_output_dir(output, "--output")
    ck = load_for_cli(ckpt, task, None)
    distill = DistillWeights(task=task_weight) if objective == "distill" else None
    cfg = QatConfig(flavour=flavour, activation_scale=activation_scale, steps=steps, lr=lr, batch_size=batch_size,
                    distill=distill, pool_size=pool_size,
                    checkpoint_every=checkpoint_every, max_minutes=minutes, seed=seed)
    try:
        result = run_qat(ck, out, cfg, resume=resume, progress=progress, log=lambda m: click.echo(m, err=True))
    except KeyboardInterrupt:
        click.echo(f"interrupted; state saved in {out} (add --resume to continue)", err=True)
        raise SystemExit(130) from None
    click.echo(json.dumps({"checkpoint": str(result.checkpoint), **result.card["qat"]}))

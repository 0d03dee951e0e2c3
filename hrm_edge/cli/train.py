"""`hrm-edge train` and `hrm-edge eval`: the training recipe and accuracy reports (need torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from hrm_edge.act import parse_policy
from hrm_edge.cli.common import DTYPES, load_for_cli, torch_device
from hrm_edge.errors import HrmEdgeError
from hrm_edge.files import check_output_dir
from hrm_edge.model.config import MAX_HALT_STEPS
from hrm_edge.puzzles.codecs import get_codec


@click.command(name="eval")
@click.argument("ckpt", type=click.Path(exists=True))
@click.option("--data", "data", required=True, type=click.Path(exists=True),
              help="Puzzle set directory (with MANIFEST.json) or one of its split files.")
@click.option("--split", default="val", show_default=True)
@click.option("--policy", "policies", multiple=True, help="Policies to run (default: fixed, q, threshold:0.9).")
@click.option("--max-steps", type=click.IntRange(1, MAX_HALT_STEPS),
              help="Segment cap (default: the model's halt_max_steps).")
@click.option("--scan-steps", type=click.IntRange(1), help="Length of the scaling curve (default 2x max steps).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--out", "out_dir", type=click.Path(), default="eval_out", show_default=True,
              help="Directory for eval.json and eval.png.")
def eval_cmd(ckpt: str, data: str, split: str, policies: tuple[str, ...], max_steps: int | None,
             scan_steps: int | None, device: str, dtype: str, batch_size: int, out_dir: str) -> None:
    """Accuracy of CKPT on a labelled set: per policy, per difficulty bucket, plus a scaling plot."""
    from hrm_edge.model.runner import TorchSegmentRunner
    from hrm_edge.puzzles.datasets import load_puzzle_set
    from hrm_edge.train.evaluate import DEFAULT_POLICIES, evaluate, plot_report

    for p in policies:
        parse_policy(p)
    out = check_output_dir(out_dir, "--out directory")
    device = torch_device(device)
    pset = load_puzzle_set(data, split=None if Path(data).is_file() else split)
    if pset.labels is None:
        raise HrmEdgeError(f"{data}: split {pset.split!r} has no labels to evaluate against")
    ck = load_for_cli(ckpt, pset.task, None)
    if ck.config.seq_len != pset.inputs.shape[1]:
        raise HrmEdgeError(f"{data}: puzzles have {pset.inputs.shape[1]} tokens, the checkpoint expects "
                           f"{ck.config.seq_len}")
    model = ck.model.to(device).set_compute_dtype(dtype)
    steps = max_steps or ck.config.halt_max_steps
    report = evaluate(TorchSegmentRunner(model, device), pset, steps, policies or DEFAULT_POLICIES, batch_size,
                      scan_steps)
    report.update(checkpoint=str(ckpt), data=str(data), runtime=f"torch {device} {dtype}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    plot_report(report, str(out / "eval.png"))
    click.echo(f"{pset.task} {pset.split}: {len(pset)} puzzles, max_steps {steps}, torch {device} {dtype}")
    click.echo(f"{'policy':<16}{'exact':>8}{'token':>8}{'valid':>8}{'segments':>10}{'>1 seg':>8}")
    for name, pol in report["policies"].items():
        click.echo(f"{name:<16}{100 * pol['exact']:>7.1f}%{100 * pol['token']:>7.1f}%{100 * pol['valid']:>7.1f}%"
                   f"{pol['mean_segments']:>10.2f}{100 * pol['more_than_one_segment']:>7.0f}%")
    first = next(iter(report["policies"].values()))
    click.echo("per bucket (" + ", ".join(report["policies"]) + "): exact %")
    for bucket in first["buckets"]:
        cells = "  ".join(f"{100 * report['policies'][p]['buckets'][bucket]['exact']:5.1f}" for p in report["policies"])
        click.echo(f"  {bucket:<34} n={first['buckets'][bucket]['count']:<4} {cells}")
    click.echo(f"wrote {out / 'eval.json'} and {out / 'eval.png'}")


@click.command()
@click.option("--family", type=click.Choice(["hrm", "trm"]), default="hrm", show_default=True,
              help="Model family; picks the family's demo preset when --preset is not given.")
@click.option("--preset", help="Model config preset (default sudoku-demo, or trm-sudoku-demo for --family trm).")
@click.option("--set", "overrides", multiple=True, help="Model config override FIELD=VALUE (repeatable).")
@click.option("--run-dir", required=True, type=click.Path(), help="Directory for checkpoints, logs, resume state.")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue from RUN_DIR/train_state.pt.")
@click.option("--minutes", type=float, default=60.0, show_default=True, help="Wall-clock budget of this call.")
@click.option("--max-steps", type=click.IntRange(1), default=10_000_000)
@click.option("--cooldown-steps", type=click.IntRange(0), default=0, show_default=True,
              help="Decay the LR linearly to 5% over the last N steps before --max-steps (0: constant LR).")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--loss", type=click.Choice(["stablemax", "softmax"]), default="stablemax", show_default=True)
@click.option("--pool", "pool_file", type=click.Path(exists=True),
              help="Puzzle list to build the training pool from (default: generated puzzles).")
@click.option("--pool-size", type=int, default=3000, show_default=True, help="Generated pool size.")
@click.option("--pool-givens", type=int, default=0, show_default=True,
              help="Givens of generated pool puzzles (0 = minimal); the curriculum never goes below.")
@click.option("--pool-attempts", type=int, default=3, show_default=True,
              help="Generator retries per pool puzzle when --pool-givens is unreachable.")
@click.option("--val", "val_file", type=click.Path(exists=True), help="Labelled validation set (default calib_data).")
@click.option("--start-givens", type=int, help="Curriculum start (default 3/4 of the cells).")
@click.option("--min-givens", type=int, default=0, show_default=True, help="Curriculum floor (0 = pool puzzles).")
@click.option("--curriculum-acc", type=float, default=0.8, show_default=True,
              help="Running exact accuracy at which the givens floor drops by one.")
@click.option("--hard-fraction", type=float, default=0.25, show_default=True,
              help="Share of new puzzles drawn from the whole givens range.")
@click.option("--eval-every", type=int, default=500, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=0, help="torch threads (0 = torch default).")
@click.option("--compile/--no-compile", default=False, show_default=True, help="torch.compile the segment.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--progress/--no-progress", default=True)
def train(family: str, preset: str | None, overrides: tuple[str, ...], run_dir: str, resume: bool, minutes: float,
          max_steps: int, cooldown_steps: int, batch_size: int, lr: float, loss: str, pool_file: str | None,
          pool_size: int, pool_givens: int, pool_attempts: int, val_file: str | None,
          start_givens: int | None, min_givens: int, curriculum_acc: float, hard_fraction: float, eval_every: int,
          seed: int, threads: int, compile: bool,
          device: str, progress: bool) -> None:
    """Train an HRM or TRM on Sudoku or mazes with the official deep-supervision + ACT recipe (resumable)."""
    import torch

    from hrm_edge.model.checkpoint import guess_task
    from hrm_edge.model.config import preset_config
    from hrm_edge.train.trainer import TrainConfig, Trainer

    run = check_output_dir(run_dir, "--run-dir")
    device = torch_device(device)
    fields: dict[str, object] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.UsageError(f"--set {item!r}: expected FIELD=VALUE")
        fields[key] = yaml_scalar(value)
    preset = preset or ("trm-sudoku-demo" if family == "trm" else "sudoku-demo")
    mcfg = preset_config(preset, **fields)
    if mcfg.family != family:
        raise HrmEdgeError(f"preset {preset} is a {mcfg.family.upper()} config, not --family {family}")
    task = guess_task(mcfg.seq_len, mcfg.vocab_size)
    if threads:
        torch.set_num_threads(threads)
    run.mkdir(parents=True, exist_ok=True)
    if task in ("sudoku", "sudoku6"):
        sampler, val, data = _sudoku_data(task, run, val_file, pool_file, pool_size, pool_givens, pool_attempts,
                                          seed, progress)
    elif task == "maze" or (task or "").startswith("maze:"):
        sampler, val, data = _maze_data(task, val_file, seed)
    else:
        raise HrmEdgeError(f"training supports Sudoku (sudoku, sudoku6) and maze (maze:<n>) presets; {preset} "
                           f"looks like task {task!r}")
    codec = get_codec(task)
    n2 = codec.seq_len
    cfg = TrainConfig(task=task, batch_size=batch_size, lr=lr, loss=loss, max_steps=max_steps, max_minutes=minutes,
                      cooldown_steps=cooldown_steps,
                      eval_every=eval_every, checkpoint_every=eval_every, seed=seed, compile=compile,
                      threads=torch.get_num_threads(), start_givens=start_givens or (3 * n2) // 4,
                      min_givens=min_givens, curriculum_acc=curriculum_acc, hard_fraction=hard_fraction,
                      extra={"preset": preset, "overrides": list(overrides), **data})
    trainer = Trainer(mcfg, cfg, sampler, run, val=val, device=device)
    state = run / "train_state.pt"
    if resume and state.exists():
        trainer.load_state_dict(torch.load(state, map_location=device, weights_only=True))
        click.echo(f"resumed from {state} at step {trainer.step}", err=True)
    try:
        trainer.fit(progress=progress)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: fit() saved the state on the way out
        click.echo(f"interrupted at step {trainer.step}; state saved in {state} (run the same command to resume)",
                   err=True)
        raise SystemExit(130) from None
    last = trainer.history[-1] if trainer.history else {}
    click.echo(json.dumps({"step": trainer.step, "minutes": round(trainer.elapsed / 60, 1), **last}))


def _sudoku_data(task: str, run: Path, val_file: str | None, pool_file: str | None, pool_size: int,
                 pool_givens: int, pool_attempts: int, seed: int, progress: bool) -> tuple[Any, Any, dict[str, Any]]:
    """(sampler, val (inputs, labels) or None, card data) for Sudoku: a pool of unique puzzles in RUN/pool.npz,
    made once (from --pool or generated) without any calibration or validation puzzle."""
    from hrm_edge.puzzles.datasets import calib_data_dir
    from hrm_edge.train.data import SudokuPool, SudokuSampler, generated_pool, pool_from_texts, read_labelled

    codec = get_codec(task)
    calib_dir = calib_data_dir(task)
    val_path = Path(val_file) if val_file else calib_dir / "val.txt"
    val = read_labelled(val_path, codec) if val_path.exists() else None
    exclude = {codec.decode(t) for f in (calib_dir / "calib.txt", val_path) if f.exists()
               for t in read_labelled(f, codec)[0]}
    pool_path = run / "pool.npz"
    if pool_path.exists():
        pool = SudokuPool.load(pool_path)
    else:
        if pool_file:
            pool = pool_from_texts(codec.split(Path(pool_file).read_text()), codec.box, exclude=exclude,
                                   progress=progress)
        else:
            pool = generated_pool(pool_size, codec.box, seed=seed + 1, givens=pool_givens, attempts=pool_attempts,
                                  progress=progress)
        pool.save(pool_path)
    sampler = SudokuSampler(pool, np.random.default_rng(seed))
    return sampler, val, {"pool": str(pool_path), "pool_size": len(pool.puzzles)}


def _maze_data(task: str, val_file: str | None, seed: int) -> tuple[Any, Any, dict[str, Any]]:
    """(sampler, val, card data) for mazes: generated on the fly in the shipped set's path-length bands,
    never one of its calibration or validation mazes (up to symmetry)."""
    from hrm_edge.puzzles.datasets import calib_data_dir, load_puzzle_set
    from hrm_edge.puzzles.maze_gen import maze_symmetry_key
    from hrm_edge.train.data import MazeSampler

    size = int(task.split(":")[1]) if ":" in task else 30
    shipped = calib_data_dir(task)
    sets = [load_puzzle_set(shipped, split=s) for s in ("calib", "val") if (shipped / f"{s}.txt").exists()]
    if val_file:
        sets.append(load_puzzle_set(Path(val_file), split=None))
    val_set = sets[-1] if sets else None
    exclude = {maze_symmetry_key(m) for pset in sets for m in pset.inputs}
    manifest = shipped / "MANIFEST.json"
    bands = (json.loads(manifest.read_text()).get("generator", {}).get("path_length_bands")
             if manifest.exists() else None) or [[1, size * size]]
    sampler = MazeSampler(size, np.random.default_rng(seed), [tuple(b) for b in bands], exclude)
    val = (val_set.inputs, val_set.labels) if val_set is not None and val_set.labels is not None else None
    return sampler, val, {"mazes": f"generated {size}x{size}, path-length bands {bands}, dihedral augmentation",
                          "excluded": len(exclude)}


def yaml_scalar(text: str) -> object:
    """Parse a --set value as YAML (ints, floats, strings)."""
    import yaml

    return yaml.safe_load(text)



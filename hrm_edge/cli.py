"""`hrm-edge` command line. Every user error prints one line `error: ...` and exits non-zero.

Commands that need torch import it inside the command, so commands that work on a
bundle keep working on devices without torch.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click
import numpy as np

from hrm_edge.act import parse_policy
from hrm_edge.errors import HrmEdgeError
from hrm_edge.puzzles.base import PuzzleError, get_codec

DTYPES = ("float32", "bfloat16", "float16")


def _read_puzzle_texts(codec, puzzle: tuple[str, ...], file: str | None) -> list[str]:
    texts: list[str] = []
    for p in puzzle:
        texts.extend(codec.split(p))
    if file is not None:
        data = sys.stdin.read() if file == "-" else Path(file).read_text()
        texts.extend(codec.split(data))
    if not texts:
        raise click.UsageError("no puzzles given: use --puzzle TEXT, --file PATH or --file - (stdin)")
    return texts


def _load(ckpt: str, task: str | None, seq_len: int | None):
    from hrm_edge.checkpoint import load_checkpoint

    return load_checkpoint(ckpt, seq_len=seq_len, task=task)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hrm-edge")
def cli() -> None:
    """Deploy Hierarchical Reasoning Model (HRM) checkpoints: solve, inspect, convert, train."""


@cli.command()
@click.argument("ckpt", type=click.Path(exists=True))
@click.option("--task", help="Puzzle codec: sudoku, sudoku6, maze, maze:<n>, arc (default: from the checkpoint).")
@click.option("--puzzle", multiple=True, help="A puzzle as text (repeatable).")
@click.option("--file", "file", type=str, help="File with puzzles, one per line or blank-line separated; - = stdin.")
@click.option("--policy", default="q", show_default=True, help="Halting policy: fixed | q | threshold:<p>.")
@click.option("--max-steps", type=click.IntRange(1), help="Segment cap (default: the model's halt_max_steps).")
@click.option("--device", default="cpu", show_default=True, help="torch device: cpu, cuda, cuda:1 ...")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--seq-len", type=click.IntRange(1), help="seq_len for official checkpoints without dataset.json.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per puzzle instead of grids.")
def solve(ckpt: str, task: str | None, puzzle: tuple[str, ...], file: str | None, policy: str,
          max_steps: int | None, device: str, dtype: str, batch_size: int, seq_len: int | None,
          as_json: bool) -> None:
    """Solve puzzles with the PyTorch reference model of CKPT."""

    from hrm_edge.act import solve_in_batches
    from hrm_edge.runtimes.torch_runtime import TorchSegmentRunner

    halting = parse_policy(policy)
    ck = _load(ckpt, task, seq_len)
    task = task or ck.task
    if task is None:
        raise click.UsageError("the checkpoint does not say its task: pass --task")
    codec = get_codec(task)
    if codec.seq_len != ck.config.seq_len:
        raise HrmEdgeError(f"task {task!r} has seq_len {codec.seq_len}, the checkpoint expects {ck.config.seq_len}")
    texts = _read_puzzle_texts(codec, puzzle, file)
    tokens = np.stack([codec.encode(t, index=i + 1) for i, t in enumerate(texts)])
    try:
        model = ck.model.to(device).set_compute_dtype(dtype)
    except (RuntimeError, AssertionError) as exc:
        raise HrmEdgeError(f"cannot use device {device!r}: {str(exc).splitlines()[0]}") from None
    runner = TorchSegmentRunner(model, device)
    steps = max_steps or ck.config.halt_max_steps
    t0 = time.perf_counter()
    result = solve_in_batches(runner, tokens, np.zeros(len(tokens), np.int64), halting, steps, batch_size)
    elapsed = time.perf_counter() - t0
    solved = 0
    for i in range(len(texts)):
        ok = bool(codec.check(tokens[i], result.predictions[i]))
        solved += ok
        record = {"index": i + 1, "puzzle": codec.decode(tokens[i]), "solution": codec.decode(result.predictions[i]),
                  "valid": ok, "segments": int(result.steps[i]), "q_halt": float(result.q_halt[i]),
                  "q_continue": float(result.q_continue[i])}
        if as_json:
            click.echo(json.dumps(record))
            continue
        click.echo(f"# puzzle {i + 1}: {'VALID' if ok else 'INVALID'} solution, {record['segments']} segment(s)")
        click.echo(codec.format_grid(result.predictions[i]))
        click.echo()
    summary = {"puzzles": len(texts), "valid": solved, "policy": str(halting), "max_steps": steps,
               "mean_segments": float(result.steps.mean()), "seconds": round(elapsed, 4),
               "ms_per_puzzle": round(1000 * elapsed / len(texts), 2), "device": device, "dtype": dtype}
    if as_json:
        click.echo(json.dumps({"summary": summary}))
    else:
        click.echo(f"{solved}/{len(texts)} valid, mean {summary['mean_segments']:.2f} segments, "
                   f"{elapsed:.2f} s ({summary['ms_per_puzzle']} ms/puzzle, {device} {dtype}, policy {halting})")


@cli.command()
@click.argument("ckpt", type=click.Path(exists=True))
@click.option("--task", help="Task, for official checkpoints without dataset.json.")
@click.option("--seq-len", type=click.IntRange(1), help="seq_len for official checkpoints without dataset.json.")
@click.option("--json", "as_json", is_flag=True)
def info(ckpt: str, task: str | None, seq_len: int | None, as_json: bool) -> None:
    """Print the config, parameter count, task and provenance of CKPT."""
    ck = _load(ckpt, task, seq_len)
    data = {"task": ck.task, "parameters": ck.model.parameter_count(),
            "segment_gflop_batch1": round(ck.config.segment_flops(1) / 1e9, 3),
            "config": ck.config.to_dict(), "provenance": ck.provenance, "card": ck.card}
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    click.echo(f"task:        {ck.task}")
    click.echo(f"parameters:  {data['parameters']:,}")
    click.echo(f"segment:     {data['segment_gflop_batch1']} GFLOP at batch 1")
    click.echo("config:")
    for k, v in ck.config.to_dict().items():
        click.echo(f"  {k}: {v}")
    click.echo("provenance:")
    for k, v in ck.provenance.items():
        click.echo(f"  {k}: {v}")
    if ck.card:
        click.echo("card:")
        for k, v in ck.card.items():
            click.echo(f"  {k}: {v}")


@cli.command()
@click.argument("src", type=click.Path(exists=True))
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Output .pt (single file) or .safetensors (+ .json config).")
@click.option("--task", help="Task, stored in the file (and used for seq_len if no dataset.json).")
@click.option("--seq-len", type=click.IntRange(1), help="seq_len for official checkpoints without dataset.json.")
def convert(src: str, output: str, task: str | None, seq_len: int | None) -> None:
    """Convert an official training checkpoint (directory or step_<N>) into one hrm-edge file."""
    from hrm_edge.checkpoint import save_checkpoint

    if not output.endswith((".pt", ".safetensors")):
        raise click.UsageError("--output must end in .pt or .safetensors")
    ck = _load(src, task, seq_len)
    out = save_checkpoint(output, ck.model, ck.task, provenance={"converted_from": ck.provenance}, card=ck.card)
    click.echo(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {ck.model.parameter_count():,} parameters, "
               f"task {ck.task})")


@cli.command()
@click.argument("preset")
@click.option("-o", "--output", required=True, type=click.Path())
@click.option("--seed", type=int, default=0, show_default=True)
def init(preset: str, output: str, seed: int) -> None:
    """Write a seeded, UNTRAINED model of a named config (sudoku-27m, sudoku-demo, sudoku-tiny).

    Random weights are for speed measurements and plumbing tests only: a random HRM is
    chaotic and solves nothing.
    """
    import torch

    from hrm_edge.checkpoint import guess_task, save_checkpoint
    from hrm_edge.model.config import preset_config
    from hrm_edge.model.hrm import HRM

    config = preset_config(preset)
    torch.manual_seed(seed)
    model = HRM(config)
    task = guess_task(config.seq_len, config.vocab_size)
    out = save_checkpoint(output, model, task, provenance={"init": preset, "seed": seed},
                          card={"weights": f"random (seed {seed}); untrained, for speed tests only"})
    click.echo(f"wrote {out}: preset {preset}, {model.parameter_count():,} parameters, untrained")


@cli.command(name="eval")
@click.argument("ckpt", type=click.Path(exists=True))
@click.option("--data", "data", required=True, type=click.Path(exists=True),
              help="Puzzle set directory (with MANIFEST.json) or one of its split files.")
@click.option("--split", default="val", show_default=True)
@click.option("--policy", "policies", multiple=True, help="Policies to run (default: fixed, q, threshold:0.9).")
@click.option("--max-steps", type=click.IntRange(1), help="Segment cap (default: the model's halt_max_steps).")
@click.option("--scan-steps", type=click.IntRange(1), help="Length of the scaling curve (default 2x max steps).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--out", "out_dir", type=click.Path(), default="eval_out", show_default=True,
              help="Directory for eval.json and eval.png.")
def eval_cmd(ckpt: str, data: str, split: str, policies: tuple[str, ...], max_steps: int | None,
             scan_steps: int | None, device: str, dtype: str, batch_size: int, out_dir: str) -> None:
    """Accuracy of CKPT on a labelled set: per policy, per difficulty bucket, plus a scaling plot."""
    from hrm_edge.evaluate import DEFAULT_POLICIES, evaluate, plot_report
    from hrm_edge.puzzles.datasets import load_puzzle_set
    from hrm_edge.runtimes.torch_runtime import TorchSegmentRunner

    for p in policies:
        parse_policy(p)
    pset = load_puzzle_set(data, split=None if Path(data).is_file() else split)
    if pset.labels is None:
        raise HrmEdgeError(f"{data}: split {pset.split!r} has no labels to evaluate against")
    ck = _load(ckpt, pset.task, None)
    if ck.config.seq_len != pset.inputs.shape[1]:
        raise HrmEdgeError(f"{data}: puzzles have {pset.inputs.shape[1]} tokens, the checkpoint expects "
                           f"{ck.config.seq_len}")
    model = ck.model.to(device).set_compute_dtype(dtype)
    steps = max_steps or ck.config.halt_max_steps
    report = evaluate(TorchSegmentRunner(model, device), pset, steps, policies or DEFAULT_POLICIES, batch_size,
                      scan_steps)
    report.update(checkpoint=str(ckpt), data=str(data), runtime=f"torch {device} {dtype}")
    out = Path(out_dir)
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


@cli.command()
@click.option("--preset", default="sudoku-demo", show_default=True, help="Model config preset.")
@click.option("--set", "overrides", multiple=True, help="Model config override FIELD=VALUE (repeatable).")
@click.option("--run-dir", required=True, type=click.Path(), help="Directory for checkpoints, logs, resume state.")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue from RUN_DIR/train_state.pt.")
@click.option("--minutes", type=float, default=60.0, show_default=True, help="Wall-clock budget of this call.")
@click.option("--max-steps", type=click.IntRange(1), default=10_000_000)
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
@click.option("--eval-every", type=int, default=500, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=0, help="torch threads (0 = torch default).")
@click.option("--compile/--no-compile", default=False, show_default=True, help="torch.compile the segment.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--progress/--no-progress", default=True)
def train(preset: str, overrides: tuple[str, ...], run_dir: str, resume: bool, minutes: float, max_steps: int,
          batch_size: int, lr: float, loss: str, pool_file: str | None, pool_size: int, pool_givens: int,
          pool_attempts: int, val_file: str | None,
          start_givens: int | None, min_givens: int, eval_every: int, seed: int, threads: int, compile: bool,
          device: str, progress: bool) -> None:
    """Train an HRM on Sudoku with the official deep-supervision + ACT recipe (resumable)."""
    import torch

    from hrm_edge.checkpoint import guess_task
    from hrm_edge.model.config import preset_config
    from hrm_edge.train import TrainConfig, Trainer
    from hrm_edge.train_data import SudokuPool, SudokuSampler, generated_pool, pool_from_texts, read_labelled

    fields: dict[str, object] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.UsageError(f"--set {item!r}: expected FIELD=VALUE")
        fields[key] = yaml_scalar(value)
    mcfg = preset_config(preset, **fields)
    task = guess_task(mcfg.seq_len, mcfg.vocab_size)
    if task not in ("sudoku", "sudoku6"):
        raise HrmEdgeError(f"training supports sudoku and sudoku6 presets; {preset} looks like task {task!r}")
    codec = get_codec(task)
    box = codec.box
    if threads:
        torch.set_num_threads(threads)
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    calib_dir = Path(__file__).resolve().parents[1] / "calib_data" / task
    val_path = Path(val_file) if val_file else calib_dir / "val.txt"
    val = read_labelled(val_path, codec) if val_path.exists() else None
    exclude = {codec.decode(t) for f in (calib_dir / "calib.txt", val_path) if f.exists()
               for t in read_labelled(f, codec)[0]}
    pool_path = run / "pool.npz"
    if pool_path.exists():
        pool = SudokuPool.load(pool_path)
    else:
        if pool_file:
            pool = pool_from_texts(codec.split(Path(pool_file).read_text()), box, exclude=exclude, progress=progress)
        else:
            pool = generated_pool(pool_size, box, seed=seed + 1, givens=pool_givens, attempts=pool_attempts,
                                  progress=progress)
        pool.save(pool_path)
    n2 = codec.seq_len
    cfg = TrainConfig(task=task, batch_size=batch_size, lr=lr, loss=loss, max_steps=max_steps, max_minutes=minutes,
                      eval_every=eval_every, checkpoint_every=eval_every, seed=seed, compile=compile,
                      threads=torch.get_num_threads(), start_givens=start_givens or (3 * n2) // 4,
                      min_givens=min_givens, extra={"preset": preset, "overrides": list(overrides),
                                                    "pool": str(pool_path), "pool_size": len(pool.puzzles)})
    sampler = SudokuSampler(pool, np.random.default_rng(seed))
    trainer = Trainer(mcfg, cfg, sampler, run, val=val, device=device)
    state = run / "train_state.pt"
    if resume and state.exists():
        trainer.load_state_dict(torch.load(state, map_location=device, weights_only=True))
        click.echo(f"resumed from {state} at step {trainer.step}", err=True)
    trainer.fit(progress=progress)
    last = trainer.history[-1] if trainer.history else {}
    click.echo(json.dumps({"step": trainer.step, "minutes": round(trainer.elapsed / 60, 1), **last}))


def yaml_scalar(text: str) -> object:
    """Parse a --set value as YAML (ints, floats, strings)."""
    import yaml

    return yaml.safe_load(text)


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the click group and turns every error into one line and an exit code."""
    try:
        code = cli.main(args=argv, prog_name="hrm-edge", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except (HrmEdgeError, PuzzleError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("HRM_EDGE_DEBUG"):
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        click.echo(f"error: internal error {type(exc).__name__}: {first} (HRM_EDGE_DEBUG=1 shows a traceback)",
                   err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()

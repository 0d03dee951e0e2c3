"""`hrm-edge` command line. Every user error prints one line `error: ...` and exits non-zero.

Commands that need torch import it inside the command, so commands that work on a
bundle keep working on devices without torch.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

import click
import numpy as np

from hrm_edge.act import TickingRunner, parse_policy
from hrm_edge.cli.common import DTYPES, load_for_cli, torch_device
from hrm_edge.cli.streaming import (
    SEGMENT_BAR_STEPS,
    SolveProgress,
    encoded_batches,
    open_puzzle_file,
    puzzle_sources,
)
from hrm_edge.errors import HrmEdgeError
from hrm_edge.files import check_output_file
from hrm_edge.model.config import MAX_HALT_STEPS
from hrm_edge.puzzles.base import PuzzleError
from hrm_edge.puzzles.codecs import get_codec
from hrm_edge.runtimes.solver import RUNTIMES


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hrm-edge")
def cli() -> None:
    """Deploy Hierarchical Reasoning Model (HRM) checkpoints: solve, inspect, convert, train."""


def _torch_solver(ckpt: str, task: str | None, seq_len: int | None, device: str, dtype: str):
    """(task, seq_len, default policy, max_steps, solve(tokens, policy, steps, batch, tick) -> SolveResult,
    label) for a checkpoint; `tick()` is called after every segment."""
    from hrm_edge.act import solve_in_batches
    from hrm_edge.model.runner import TorchSegmentRunner

    device = torch_device(device)
    ck = load_for_cli(ckpt, task, seq_len)
    try:
        model = ck.model.to(device).set_compute_dtype(dtype)
    except (RuntimeError, AssertionError) as exc:
        raise HrmEdgeError(f"cannot use device {device!r}: {str(exc).splitlines()[0]}") from None
    runner = TorchSegmentRunner(model, device)

    def run(tokens: np.ndarray, policy, steps: int, batch: int, tick):
        return solve_in_batches(TickingRunner(runner, tick), tokens, np.zeros(len(tokens), np.int64), policy,
                                steps, batch)

    return task or ck.task, ck.config.seq_len, "q", ck.config.halt_max_steps, run, f"torch {device} {dtype}"


def _bundle_solver(path: str, graph: str | None, runtime: str, engine: str | None):
    """The same for a bundle, on ONNX Runtime or TensorRT (no torch)."""
    from hrm_edge.act import solve_in_batches
    from hrm_edge.bundle import open_bundle
    from hrm_edge.runtimes.solver import GraphSolver, default_graph

    b = open_bundle(path)
    graph = graph or default_graph(b, runtime)
    solver = GraphSolver(b, graph, runtime, engine=engine)

    def run(tokens: np.ndarray, policy, steps: int, batch: int, tick):
        ids = np.zeros(len(tokens), np.int64)
        if solver.segment_runner is None:  # unrolled and loop graphs: no per-segment hook
            return solver.solve(tokens, ids, policy, steps, batch)
        return solve_in_batches(TickingRunner(solver.segment_runner, tick), tokens, b.model_puzzle_ids(ids), policy,
                                steps, batch)

    halting = b.manifest.need_halting()
    return b.task, int(b.config["seq_len"]), halting.default_policy, halting.max_steps, run, f"{runtime} {graph}"


def _server_solver(path: str, url: str):
    """The same for a bundle served at `url` (`hrm-edge serve`, or Triton with its repository): the bundle's
    manifest gives the task and defaults, the server solves."""
    from hrm_edge.bundle import open_bundle
    from hrm_edge.serving.client import RemoteSolver

    b = open_bundle(path)
    remote = RemoteSolver(url)
    note = remote.check_bundle(b.manifest.digest, int(b.config["seq_len"]), path)
    if note:
        click.echo(f"note: {note}", err=True)

    def run(tokens: np.ndarray, policy, steps: int, batch: int, tick):
        return remote.solve(tokens, np.zeros(len(tokens), np.int64), policy, steps, batch)

    halting = b.manifest.need_halting()
    return b.task, int(b.config["seq_len"]), halting.default_policy, halting.max_steps, run, f"server {url}"


@cli.command()
@click.argument("model", type=click.Path(exists=True))
@click.option("--task", help="Puzzle codec: sudoku, sudoku6, maze, maze:<n>, arc (default: from the model).")
@click.option("--puzzle", multiple=True, help="A puzzle as text (repeatable).")
@click.option("--file", "file", type=str,
              help="File with puzzles, one per line or blank-line separated; - = stdin. Read, solved and printed "
                   "a batch at a time; a bad puzzle stops solving there: the results before it are printed, then "
                   "one error line names its line number (exit 1).")
@click.option("--policy", help="Halting policy: fixed | q | threshold:<p> (default: a bundle's halting.default_policy; "
              "checkpoints: q).")
@click.option("--max-steps", type=click.IntRange(1, MAX_HALT_STEPS),
              help="Segment cap (default: a bundle's halting.max_steps; checkpoints: halt_max_steps).")
@click.option("--device", default="cpu", show_default=True, help="torch device (checkpoints): cpu, cuda, cuda:1 ...")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True, help="(checkpoints)")
@click.option("--runtime", type=click.Choice(RUNTIMES), default="ort", show_default=True, help="(bundles)")
@click.option("--graph", help="Bundle graph (default: the fastest for the runtime; ORT CPU: segment.int8-cpufused, "
              "else segment.int8-cpu, when most of its sites are int8, else segment.fp32-cpufused, else "
              "segment.fp32; trt: segment.fp16).")
@click.option("--engine", type=click.Path(exists=True), help="TensorRT engine (bundles, runtime trt).")
@click.option("--server", help="Solve on the solver model served at this URL (http://HOST:PORT or grpc://HOST:PORT; "
              "`hrm-edge serve` or Triton); MODEL is the bundle it serves.")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True,
              help="Puzzles solved (and held in memory) at a time.")
@click.option("--seq-len", type=click.IntRange(1), help="seq_len for official checkpoints without dataset.json.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object per puzzle instead of grids, then one {\"summary\": ...} object.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr: puzzles solved, and segments of the batch when --max-steps > "
                   f"{SEGMENT_BAR_STEPS} (default: when stderr is a terminal).")
def solve(model: str, task: str | None, puzzle: tuple[str, ...], file: str | None, policy: str | None,
          max_steps: int | None, device: str, dtype: str, runtime: str, graph: str | None, engine: str | None,
          server: str | None, batch_size: int, seq_len: int | None, as_json: bool, progress: bool | None) -> None:
    """Solve puzzles with MODEL: a checkpoint (PyTorch reference) or an exported bundle directory
    (ONNX Runtime or TensorRT; needs no torch). Results stream out a batch at a time, in input order."""
    halting = parse_policy(policy) if policy else None  # explicit options win over the model's defaults
    if not puzzle and file is None:
        raise click.UsageError("no puzzles given: use --puzzle TEXT, --file PATH or --file - (stdin)")
    opened = open_puzzle_file(file) if file is not None else None
    if opened is not None and opened[1] != "stdin":
        click.get_current_context().call_on_close(opened[0].close)
    is_bundle = Path(model).is_dir() and (Path(model) / "manifest.json").is_file()
    if server is not None:
        if not is_bundle:
            raise click.UsageError("--server: MODEL must be the bundle the server serves")
        found_task, model_seq, default_policy, default_steps, run, label = _server_solver(model, server)
    elif is_bundle:
        found_task, model_seq, default_policy, default_steps, run, label = _bundle_solver(model, graph, runtime,
                                                                                          engine)
    else:
        found_task, model_seq, default_policy, default_steps, run, label = _torch_solver(model, task, seq_len,
                                                                                         device, dtype)
    halting = halting or parse_policy(default_policy)
    task = task or found_task
    if task is None:
        raise click.UsageError("the model does not say its task: pass --task")
    codec = get_codec(task)
    if codec.seq_len != model_seq:
        raise HrmEdgeError(f"task {task!r} has seq_len {codec.seq_len}, the model expects {model_seq}")
    steps = max_steps or default_steps
    bar = SolveProgress(sys.stderr.isatty() if progress is None else progress, steps)
    count = solved = segments = 0
    elapsed = 0.0
    try:
        for tokens in encoded_batches(codec, puzzle_sources(codec, puzzle, opened), batch_size):
            bar.new_batch()
            t0 = time.perf_counter()
            result = run(tokens, halting, steps, batch_size, bar.segment)
            elapsed += time.perf_counter() - t0
            lines = []
            for i in range(len(tokens)):
                ok = bool(codec.check(tokens[i], result.predictions[i]))
                solved += ok
                count += 1
                record = {"index": count, "puzzle": codec.decode(tokens[i]),
                          "solution": codec.decode(result.predictions[i]), "valid": ok,
                          "segments": int(result.steps[i]), "q_halt": float(result.q_halt[i]),
                          "q_continue": float(result.q_continue[i])}
                if as_json:
                    lines.append(json.dumps(record))
                else:
                    lines += [f"# puzzle {count}: {'VALID' if ok else 'INVALID'} solution, "
                              f"{record['segments']} segment(s)", codec.format_grid(result.predictions[i]), ""]
            segments += int(result.steps.sum())
            click.echo("\n".join(lines))
            bar.solved(len(tokens))
    finally:
        bar.close()
    if count == 0:
        raise click.UsageError("no puzzles found in the input")
    summary = {"puzzles": count, "valid": solved, "policy": str(halting), "max_steps": steps,
               "mean_segments": segments / count, "seconds": round(elapsed, 4),
               "ms_per_puzzle": round(1000 * elapsed / count, 2), "runtime": label}
    if as_json:
        click.echo(json.dumps({"summary": summary}))
    else:
        click.echo(f"{solved}/{count} valid, mean {summary['mean_segments']:.2f} segments, "
                   f"{elapsed:.2f} s ({summary['ms_per_puzzle']} ms/puzzle, {label}, policy {halting})")


@cli.command()
@click.argument("ckpt", type=click.Path(exists=True))
@click.option("--task", help="Task, for official checkpoints without dataset.json.")
@click.option("--seq-len", type=click.IntRange(1), help="seq_len for official checkpoints without dataset.json.")
@click.option("--json", "as_json", is_flag=True)
def info(ckpt: str, task: str | None, seq_len: int | None, as_json: bool) -> None:
    """Print the config, parameter count, task and provenance of CKPT."""
    ck = load_for_cli(ckpt, task, seq_len)
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
    from hrm_edge.model.checkpoint import save_checkpoint

    if not output.endswith((".pt", ".safetensors")):
        raise click.UsageError("--output must end in .pt or .safetensors")
    check_output_file(output)
    ck = load_for_cli(src, task, seq_len)
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

    from hrm_edge.model import create_model
    from hrm_edge.model.checkpoint import guess_task, save_checkpoint
    from hrm_edge.model.config import preset_config

    check_output_file(output)
    config = preset_config(preset)
    torch.manual_seed(seed)
    model = create_model(config)
    task = guess_task(config.seq_len, config.vocab_size)
    out = save_checkpoint(output, model, task, provenance={"init": preset, "seed": seed},
                          card={"weights": f"random (seed {seed}); untrained, for speed tests only"})
    click.echo(f"wrote {out}: preset {preset}, {model.parameter_count():,} parameters, untrained")


def _register_commands() -> None:
    from hrm_edge.cli import bench, trt
    from hrm_edge.cli import bundle as cli_bundle
    from hrm_edge.cli import quant as cli_quant
    from hrm_edge.cli import serve as cli_serve
    from hrm_edge.cli import train as cli_train

    for command in (cli_train.eval_cmd, cli_train.train, cli_bundle.export_cmd, cli_bundle.verify,
                    cli_bundle.parity, cli_bundle.keygen, trt.build, trt.check_trt, bench.bench, cli_quant.qat,
                    cli_serve.serve, cli_serve.triton_repo):
        cli.add_command(command)


_register_commands()


# OS errors a user's environment causes (permissions, full disks, closed pipes, wrong kinds of
# path), reported as user errors; any other OSError is a bug.
USER_OS_ERRORS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG,
                            errno.EPIPE, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EMFILE,
                            errno.ENFILE, errno.EIO})


def _os_error_line(exc: OSError) -> str:
    """The one-line message of a user-caused OSError; a write to stdout (no file name) says so and
    points stdout at /dev/null, so that the interpreter's final flush does not fail again."""
    if exc.filename is not None:
        return f"{exc.strerror}: {exc.filename}"
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return f"cannot write the output: {exc.strerror or exc}"


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the click group and turns every error into one line and an exit code:
    1 for errors a user can cause (bad input, unusable paths, a full disk), 130 for an interrupt,
    2 only for bugs ("internal error")."""
    try:
        code = cli.main(args=argv, prog_name="hrm-edge", standalone_mode=False)
        sys.stdout.flush()
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:  # usage errors too: exit 1, not click's 2 (kept for bugs)
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(1)
    except (HrmEdgeError, PuzzleError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except ModuleNotFoundError as exc:
        if exc.name != "torch":  # the device side (verify, solve on a bundle) runs without torch by design
            _internal_error(exc)
        click.echo("error: this command needs PyTorch, which is not installed (pip install 'hrm-edge[torch]'); "
                   "verify and solve on a bundle do not", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except OSError as exc:
        if exc.errno not in USER_OS_ERRORS or os.environ.get("HRM_EDGE_DEBUG"):
            _internal_error(exc)
        click.echo(f"error: {_os_error_line(exc)}", err=True)
        sys.exit(1)
    except Exception as exc:
        _internal_error(exc)
    sys.exit(code if isinstance(code, int) else 0)


def _internal_error(exc: BaseException) -> NoReturn:
    """A bug: one line and exit 2 (HRM_EDGE_DEBUG=1 re-raises it with its traceback)."""
    if os.environ.get("HRM_EDGE_DEBUG"):
        raise exc
    first = str(exc).splitlines()[0] if str(exc) else ""
    click.echo(f"error: internal error {type(exc).__name__}: {first} (HRM_EDGE_DEBUG=1 shows a traceback)",
               err=True)
    sys.exit(2)


if __name__ == "__main__":
    main()

"""`hrm-edge bench`: options of the benchmark suite (`hrm_edge.bench.suite` does the work)."""

from __future__ import annotations

import dataclasses
import signal
import sys
from pathlib import Path

import click

from hrm_edge.bench.configs import BASELINE, PEER_RUNTIMES, QUICK_RUNTIMES, Settings, runtimes
from hrm_edge.bench.pausing import PAUSE_PATTERN, Pauser
from hrm_edge.bench.prepare import resolve_model_arg, resolve_standard_models
from hrm_edge.bench.suite import DEFAULT_OUT, run_suite
from hrm_edge.errors import HrmEdgeError
from hrm_edge.files import check_output_dir


def _default_threads() -> int:
    from hrm_edge.runtimes.ort.loader import physical_cores

    return physical_cores()


@click.command(name="bench")
@click.argument("models", nargs=-1, type=click.Path(exists=True, path_type=Path))  # checkpoints or bundles
@click.option("--out", type=click.Path(path_type=Path), default=DEFAULT_OUT, show_default=True,
              help="Directory for bench.json, bench.md and the PNGs.")
@click.option("--cache", type=click.Path(path_type=Path), help="Exported graphs (default: <out>/cache).")
@click.option("--quick", is_flag=True, help="Batch 1, core runtimes, a few puzzles, short timings (smoke test).")
@click.option("--batch", "batches", multiple=True, type=click.IntRange(1), help="Batch sizes (default 1 and 16).")
@click.option("--runtime", "runtime_names", multiple=True, help="Runtime configurations (default: all; see docs).")
@click.option("--peers", is_flag=True, help="The peer rows (torch bf16/compile, OpenVINO) beside hrm-edge's CPU paths.")
@click.option("--policy", "policies", multiple=True, help="Halting policies (default: fixed and q).")
@click.option("--unroll", type=click.IntRange(2), default=4, show_default=True, help="K of the unrolled graphs.")
@click.option("--int8-graph", type=click.Path(exists=True, path_type=Path),
              help="An INT8 segment graph for the (single) model instead of the bench's dynamic INT8 fallback.")
@click.option("--puzzles", type=click.IntRange(1), help="Puzzles per end-to-end row (default: the whole val set).")
@click.option("--e2e-budget", type=float, default=500.0, show_default=True,
              help="Skip end-to-end rows above this many GFLOP of work (fixed policy); micro rows always run.")
@click.option("--seconds", "micro_seconds", type=float, help="Seconds per segment micro-benchmark (default 3).")
@click.option("--e2e-seconds", type=float, default=60.0, show_default=True,
              help="Cap per end-to-end row and policy: past it the row covers the puzzles solved so far.")
@click.option("--threads", type=click.IntRange(1), help="Threads per runtime (default: physical cores).")
@click.option("--rounds", type=click.IntRange(1), help="Interleaved measurement rounds (default 3, --quick 1).")
@click.option("--profile/--no-profile", default=None, help="ORT per-op profile at batch 1 (default: on, off --quick).")
@click.option("--pause-training", is_flag=True,
              help=f"SIGSTOP local '{PAUSE_PATTERN}' processes while each worker runs (resumed after).")
@click.option("--pause", "pause_patterns", multiple=True, help="Also pause processes whose command line has this text.")
@click.option("--pause-max", type=click.FloatRange(5, 180), default=150, show_default=True,
              help="Longest pause in seconds (a watchdog resumes the processes).")
@click.option("--quiet-wait", type=click.FloatRange(0), default=0, show_default=True,
              help="Before each worker, wait up to this many seconds for other processes to go quiet.")
def bench(models: tuple[Path, ...], out: Path, cache: Path | None, quick: bool, batches: tuple[int, ...],
          runtime_names: tuple[str, ...], peers: bool, policies: tuple[str, ...], unroll: int, int8_graph: Path | None,
          puzzles: int | None, e2e_budget: float, micro_seconds: float | None, e2e_seconds: float,
          threads: int | None, rounds: int | None,
          profile: bool | None, pause_training: bool, pause_patterns: tuple[str, ...], pause_max: float,
          quiet_wait: float) -> None:
    """Benchmark the CPU runtimes on MODELS (checkpoints, or bundles whose source checkpoint is here;
    default: the standard suite, the Sudoku demo checkpoint and a seeded sudoku-27m) against
    PyTorch eager fp32 with the fixed policy."""
    from hrm_edge.act import parse_policy

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks (resume, close workers)
    cache = cache or out / "cache"
    for folder, what in ((out, "--out directory"), (cache, "--cache directory")):
        check_output_dir(folder, what)  # before any measurement
    known = runtimes(unroll)
    names = runtime_names or (PEER_RUNTIMES if peers else QUICK_RUNTIMES if quick else tuple(known))
    bad = [n for n in names if n not in known]
    if bad:
        raise click.UsageError(f"unknown runtime(s) {', '.join(bad)}; known: {', '.join(known)}")
    if BASELINE not in names:
        names = (BASELINE, *names)
    policies = policies or ("fixed", "q")
    for p in policies:
        parse_policy(p)
    if "fixed" not in policies:
        policies = ("fixed", *policies)
    paths = list(models) or resolve_standard_models(cache)
    if not paths:
        raise HrmEdgeError("no model to benchmark")
    if int8_graph is not None and len(paths) != 1:
        raise click.UsageError("--int8-graph needs exactly one model")
    resolved = [resolve_model_arg(Path(p)) for p in paths]
    paths = [r[0] for r in resolved]
    shipped = dict(resolved)
    if int8_graph is not None:
        shipped = {paths[0]: dataclasses.replace(shipped[paths[0]], cpu=int8_graph)}
    settings = Settings(
        batches=batches or ((1,) if quick else (1, 16)), policies=tuple(policies), runtimes=tuple(names),
        unroll=unroll, micro_seconds=micro_seconds if micro_seconds is not None else (0.2 if quick else 3.0),
        e2e_puzzles=puzzles or (4 if quick else None), e2e_budget_gflop=e2e_budget,
        threads=threads or _default_threads(), quick=quick, profile=(not quick) if profile is None else profile,
        rounds=rounds or (1 if quick else 3),
        quiet_wait=0.0 if quick else quiet_wait, worker_timeout=900.0, e2e_seconds=e2e_seconds)
    patterns = tuple(pause_patterns) + ((PAUSE_PATTERN,) if pause_training else ())
    pauser = Pauser(patterns, pause_max)
    report = run_suite([Path(p) for p in paths], settings, out, cache, pauser, shipped)
    click.echo(f"wrote {out / 'bench.json'}, {out / 'bench.md'} and {len(report['plots'])} PNG(s) "
               f"in {report['seconds']} s")
    for key, t in report["targets"].items():
        if t is not None:
            click.echo(f"{'MET   ' if t['met'] else 'MISSED'} {key}: {t['value']} ({t['goal']})")

"""Issue 18's open question, measured: Triton's iterative sequence scheduling against the shipped
solver models, on the real tritonserver (the nvidia-pytriton wheel's, loopback), side by side.

One bundle (HRM 6x6 demo), one graph (segment.fp32, the one a BLS segment model can hold), one ONNX
Runtime thread, 16 slots, 8 request instances, policy q; every variant its own server, all started
before the first round. Variants (`hrm-edge triton-repo --segment-backend ...`):

- in-solver: what `hrm-edge serve` ships (hrm_solver runs the continuous loop and the segment);
- bls-python: hrm_solver's loop sends every segment by BLS to a Python-backend hrm_segment;
- iterative: hrm_solver (same wire) sends each puzzle to hrm_iterative, where Triton's iterative
  sequence batcher forms every segment's batch (`hrm_edge.serving.triton_iterative`);
- iterative-direct: the same server, the client calling hrm_iterative itself (one puzzle per
  request; no front hop): what the scheduling mechanism costs by itself.

Rounds interleave the variants (the order rotates each round); each round measures (a) batch-1
latency: one client, puzzles one at a time, and (b) load: 8 concurrent clients x 32 puzzles, one
puzzle per request: throughput and latency percentiles. Every answer is checked against a local
solve. CPU time per puzzle: the server's process tree (tritonserver and its backend stubs), from
/proc, over each phase. Triton's own statistics (executions vs inferences per model) show the
batches each model really ran. The machine's load (uptime) is kept with every round.

    python scripts/bench_iterative.py --out bench/latest/session10-iterative   # iterative.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from hrm_edge.act import halt_rule, parse_policy
from hrm_edge.bench.continuous import demo_bundle
from hrm_edge.bench.loadtest import server_statistics
from hrm_edge.bundle import open_bundle
from hrm_edge.puzzles.datasets import load_puzzle_set
from hrm_edge.runtimes.solver import GraphSolver
from hrm_edge.serving.client import RemoteSolver
from hrm_edge.serving.protocol import ITERATIVE_MODEL, SOLVER_MODEL, request_inputs
from hrm_edge.serving.triton_repo import write_repository
from hrm_edge.serving.tritonserver import TritonServer

ROOT = Path(__file__).resolve().parents[1]
GRAPH = "segment.fp32"
BACKENDS = {"in-solver": "in-solver", "bls-python": "python", "iterative": "iterative"}
TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` and its live descendants (from /proc)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / TICKS
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += times.get(p, 0.0)
        todo += [c for c, parent in parents.items() if parent == p]
    return total


def one_puzzle(variant: str, tokens: np.ndarray, ids: np.ndarray, i: int, steps: int) -> dict[str, np.ndarray]:
    """The request of puzzle i: the shipped wire, or hrm_iterative's (per-puzzle scalars [1, 1])."""
    mode, threshold = halt_rule(parse_policy("q"))
    feeds = request_inputs(tokens[i:i + 1], ids[i:i + 1], mode, threshold, steps)
    if variant == "iterative-direct":
        feeds = {n: a if n == "tokens" else a.reshape(1, 1) for n, a in feeds.items()}
    return feeds


def same(out: dict[str, np.ndarray], want: Any, i: int) -> bool:
    return bool((out["preds"].reshape(-1) == want.predictions[i]).all()
                and int(out["steps"].reshape(-1)[0]) == int(want.steps[i])
                and float(out["q_halt"].reshape(-1)[0]) == float(want.q_halt[i]))


def batch1(remote: RemoteSolver, variant: str, tokens: np.ndarray, ids: np.ndarray, want: Any, first: int,
           count: int, steps: int, pid: int) -> dict[str, Any]:
    ms, wrong = [], 0
    cpu0 = tree_cpu_s(pid)
    for k in range(count):
        i = (first + k) % len(tokens)
        t = time.perf_counter()
        out = remote.infer(one_puzzle(variant, tokens, ids, i, steps))
        ms.append(1e3 * (time.perf_counter() - t))
        wrong += not same(out, want, i)
    return {"ms": ms, "mismatched": wrong, "server_cpu_s": tree_cpu_s(pid) - cpu0}


def load(url: str, model: str, variant: str, tokens: np.ndarray, ids: np.ndarray, want: Any, clients: int,
         puzzles: int, steps: int, pid: int) -> dict[str, Any]:
    """`clients` threads, each its own client (made in its thread: tritonclient.http's greenlets), each
    sending its `puzzles` puzzles one per request; timed from when every client is connected."""
    ms: list[float] = []
    wrong = [0]
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        remote = RemoteSolver(url, model=model, timeout=120.0)
        ready.wait()
        for j in range(puzzles):
            i = (c * puzzles + j) % len(tokens)
            t = time.perf_counter()
            out = remote.infer(one_puzzle(variant, tokens, ids, i, steps))
            dt = 1e3 * (time.perf_counter() - t)
            with lock:
                ms.append(dt)
                wrong[0] += not same(out, want, i)
        remote.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for th in threads:
        th.start()
    ready.wait()
    cpu0, t0 = tree_cpu_s(pid), time.perf_counter()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    cpu = tree_cpu_s(pid) - cpu0
    return {"ms": ms, "wall_s": wall, "mismatched": wrong[0], "server_cpu_s": cpu}


def summary(runs: list[dict[str, Any]], puzzles_per_run: int) -> dict[str, Any]:
    ms = np.concatenate([r["ms"] for r in runs])
    out = {"requests": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
           "mean_ms": float(ms.mean()), "mismatched": int(sum(r["mismatched"] for r in runs)),
           "server_cpu_ms_per_puzzle": 1e3 * sum(r["server_cpu_s"] for r in runs) / (puzzles_per_run * len(runs))}
    if "wall_s" in runs[0]:
        rates = [puzzles_per_run / r["wall_s"] for r in runs]
        out.update({"puzzles_per_s": float(np.median(rates)), "puzzles_per_s_per_round": rates})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", help="The exported HRM 6x6 demo (default: exported under OUT).")
    p.add_argument("--out", default=str(ROOT / "bench" / "latest" / "session10-iterative"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch1", type=int, default=40, help="Sequential single-puzzle requests per variant and round.")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--puzzles", type=int, default=32, help="Puzzles per client in the load phase.")
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--instances", type=int, default=8, help="Requests in flight per solver model (request_threads).")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads.")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundle_dir = args.bundle or demo_bundle(out)
    bundle = open_bundle(bundle_dir)
    steps = bundle.manifest.need_halting().max_steps
    pset = load_puzzle_set(ROOT / "calib_data" / "sudoku6", "val")
    tokens, ids = pset.inputs, pset.puzzle_ids
    want = GraphSolver(bundle, GRAPH, threads=args.threads).solve(tokens, ids, parse_policy("q"), steps)
    machine = {"cpu_count": os.cpu_count(), "uptime_at_start": subprocess.run(["uptime"], capture_output=True,
                                                                             text=True).stdout.strip()}
    work = Path(tempfile.mkdtemp(prefix="bench-iterative-"))  # repositories and server logs (removed at the end)
    servers: dict[str, TritonServer] = {}
    remotes: dict[str, RemoteSolver] = {}
    variants = [*BACKENDS, "iterative-direct"]
    b1: dict[str, list] = {v: [] for v in variants}
    ld: dict[str, list] = {v: [] for v in variants}
    rounds = []
    try:
        for name, backend in BACKENDS.items():
            repo = write_repository(bundle.path, work / f"repo-{name}", graph=GRAPH, slots=args.slots,
                                    force=True, segment_backend=backend, threads=args.threads,
                                    request_threads=args.instances)
            servers[name] = TritonServer(repo, exit_timeout_s=2, log_path=work / f"{name}.log").start()
        servers["iterative-direct"] = servers["iterative"]
        for v in variants:
            remotes[v] = RemoteSolver(servers[v].http_url, model=ITERATIVE_MODEL if v == "iterative-direct"
                                      else SOLVER_MODEL, timeout=120.0)
            remotes[v].infer(one_puzzle(v, tokens, ids, 0, steps))  # warm-up: sessions, first shm regions
        for r in range(args.rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            load_avg = os.getloadavg()
            for v in order:
                pid = servers[v].proc.pid
                b1[v].append(batch1(remotes[v], v, tokens, ids, want, r * args.batch1, args.batch1, steps, pid))
                ld[v].append(load(servers[v].http_url, remotes[v].model, v, tokens, ids, want, args.clients,
                                  args.puzzles, steps, pid))
            rounds.append({"round": r, "order": order, "load_average_1_5_15_at_start": load_avg,
                           "load_average_1_5_15_at_end": os.getloadavg()})
            print(f"round {r}: " + ", ".join(f"{v} b1 p50 {np.median(b1[v][-1]['ms']):.1f} ms, "
                                             f"{args.clients * args.puzzles / ld[v][-1]['wall_s']:.0f}/s"
                                             for v in variants), file=sys.stderr)
        stats = {name: server_statistics(servers[name].http_port) for name in BACKENDS}
        batches = {name: _batches(servers[name].http_port) for name in BACKENDS}
    finally:
        for remote in remotes.values():
            remote.close()
        for name in BACKENDS:
            if name in servers:
                servers[name].stop()
        shutil.rmtree(work, ignore_errors=True)
    machine["uptime_at_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    report = {
        "bundle": str(bundle.path), "bundle_digest": bundle.manifest.digest, "graph": GRAPH, "policy": "q",
        "max_steps": steps, "threads": args.threads, "slots": args.slots, "instances": args.instances,
        "server": "tritonserver 2.51.0 (nvidia-pytriton wheel), loopback HTTP", "machine": machine,
        "rounds": rounds,
        "local_steps": {"mean": float(want.steps.mean()), "histogram": np.bincount(want.steps).tolist()},
        "batch1": {v: summary(b1[v], args.batch1) for v in variants},
        "load": {v: {"clients": args.clients, "puzzles_per_client": args.puzzles,
                     **summary(ld[v], args.clients * args.puzzles)} for v in variants},
        "tritonserver_statistics_mean_ms": stats, "executions": batches,
        "raw_ms": {"batch1": {v: [r["ms"] for r in b1[v]] for v in variants},
                   "load": {v: [r["ms"] for r in ld[v]] for v in variants}},
    }
    base_b1, base_ld = report["batch1"]["in-solver"], report["load"]["in-solver"]
    report["ratios_vs_in_solver"] = {
        v: {"batch1_p50": report["batch1"][v]["p50_ms"] / base_b1["p50_ms"],
            "load_throughput": report["load"][v]["puzzles_per_s"] / base_ld["puzzles_per_s"],
            "load_p50": report["load"][v]["p50_ms"] / base_ld["p50_ms"],
            "load_p99": report["load"][v]["p99_ms"] / base_ld["p99_ms"],
            "load_cpu_per_puzzle": report["load"][v]["server_cpu_ms_per_puzzle"] / base_ld["server_cpu_ms_per_puzzle"]}
        for v in variants}
    (out / "iterative.json").write_text(json.dumps(report, indent=1))
    for v in variants:
        a, b = report["batch1"][v], report["load"][v]
        print(f"{v:17s} batch-1 p50 {a['p50_ms']:6.2f} ms p99 {a['p99_ms']:6.2f} ms | load {b['puzzles_per_s']:6.1f}/s "
              f"p50 {b['p50_ms']:6.1f} ms p99 {b['p99_ms']:6.1f} ms, server CPU {b['server_cpu_ms_per_puzzle']:.1f} "
              f"ms/puzzle | mismatched {a['mismatched'] + b['mismatched']}")


def _batches(http_port: int) -> dict[str, dict[str, float]]:
    """Per model: executions, inferences (puzzle-rows for hrm_iterative, requests elsewhere) and their
    ratio, the mean batch an execution ran (Triton's statistics)."""
    import tritonclient.http as http

    client = http.InferenceServerClient(f"127.0.0.1:{http_port}")
    try:
        stats = client.get_inference_statistics()["model_stats"]
    finally:
        client.close()
    return {m["name"]: {"executions": int(m["execution_count"]), "inferences": int(m["inference_count"]),
                        "mean_batch": int(m["inference_count"]) / max(1, int(m["execution_count"]))} for m in stats}


if __name__ == "__main__":
    main()

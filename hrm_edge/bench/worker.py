"""One `hrm-edge bench` measurement in its own process: `python -m hrm_edge.bench.worker < job.json`.

ONNX Runtime's and PyTorch's thread pools interfere when both live in one process (spinning
workers of one steal the cores of the other), so the orchestrator (`hrm_edge.bench.suite`) runs every
runtime configuration in a fresh worker. The job is a JSON object on stdin; the result is one
JSON object on the last stdout line, after `RESULT_MARK`. Job kinds:

- "rows" (`--serve`, a persistent worker driven line by line, see `serve`): one runtime
  configuration of one model at one batch size: the per-segment latency (micro-benchmark of one
  segment call on a full batch) and, per halting policy, an end-to-end solve of a puzzle set
  (latency per batch, puzzles/s, mean segments, exact accuracy), measured in rounds;
- "peak": the machine's GEMM peaks: fp32 (torch and numpy matmul), bf16 (torch), int8 (an ORT
  `MatMulInteger` micro-graph, u8 x s8) and ORT's own fp32 MatMul, all on large GEMMs.
- "profile": ORT per-op-type profile of segment graphs (SessionOptions.enable_profiling).
- "profile-openvino": OpenVINO per-layer-type profile of segment graphs (performance counters).

Every timing window also records how much CPU other processes used meanwhile ("foreign" share
of all cores, from /proc/stat): on a shared machine a latency is only comparable with that.

ORT rows run the product runners (`hrm_edge.runtimes.ort.runner`: `OrtSegmentRunner`, whose CPU
carry ping-pongs between two IOBinding-bound buffers, `OrtUnrolledRunner`, `run_act_loop_graph`)
on sessions from `hrm_edge.runtimes.ort.loader.make_session`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

RESULT_MARK = "@@BENCH_RESULT@@ "
CLEAN_FOREIGN = 0.15  # a timing window is "clean" when other processes used < 15% of the cores


# ----------------------------------------------------------------------------------------------
# CPU contention meter


def _proc_stat() -> tuple[int, int] | None:
    """(busy jiffies, total jiffies) of all CPUs, or None where /proc/stat is absent."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


class CpuMeter:
    """Share of all cores used by *other* processes between `start()` and `stop()` (0..1)."""

    def __init__(self) -> None:
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self._t0 = self._s0 = self._o0 = None

    def start(self) -> None:
        self._s0, self._o0, self._t0 = _proc_stat(), _own_cpu(), time.perf_counter()

    def stop(self) -> float | None:
        s1, o1, t1 = _proc_stat(), _own_cpu(), time.perf_counter()
        if self._s0 is None or s1 is None or t1 - self._t0 <= 0:
            return None
        busy = (s1[0] - self._s0[0]) / self.hz
        foreign = busy - (o1 - self._o0)
        return float(min(1.0, max(0.0, foreign / (self.cpus * (t1 - self._t0)))))


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def foreign_load(seconds: float = 0.5) -> float | None:
    """Share of all cores used by other processes over the next `seconds`."""
    meter = CpuMeter()
    meter.start()
    time.sleep(seconds)
    return meter.stop()


def timed_loop(fn: Any, seconds: float, min_iters: int, max_iters: int, window: float = 0.06) -> dict[str, Any]:
    """Call fn() repeatedly for about `seconds` (between min_iters and max_iters calls).

    Returns per-call times (s) and, per call, the foreign CPU share of the window it ran in
    (windows group consecutive calls into >= `window` seconds, /proc/stat's resolution)."""
    times: list[float] = []
    shares: list[float | None] = []
    meter = CpuMeter()
    deadline = time.perf_counter() + seconds
    pending = 0
    meter.start()
    w_start = time.perf_counter()
    while len(times) < max_iters and (len(times) < min_iters or time.perf_counter() < deadline):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        pending += 1
        if time.perf_counter() - w_start >= window:
            share = meter.stop()
            shares += [share] * pending
            pending = 0
            meter.start()
            w_start = time.perf_counter()
    if pending:
        share = meter.stop()
        shares += [share] * pending
    return {"times": times, "foreign": shares}


def summarize(times: list[float], foreign: list[float | None], scale: float = 1.0) -> dict[str, Any]:
    """p50/p90/min in ms (each time divided by `scale`), the same over clean windows, contention."""
    t = np.asarray(times, np.float64) * 1e3 / scale
    f = np.asarray([np.nan if v is None else v for v in foreign], np.float64)
    clean = t[~(f >= CLEAN_FOREIGN)]  # unknown share (no /proc/stat) counts as clean
    out = {"p50": _r(np.median(t)), "p90": _r(np.percentile(t, 90)), "min": _r(t.min()), "iters": len(t),
           "clean_frac": _r(len(clean) / len(t)), "contention": _r(np.nanmean(f)) if np.isfinite(f).any() else None}
    out["clean_p50"] = _r(np.median(clean)) if len(clean) else None
    out["clean_p90"] = _r(np.percentile(clean, 90)) if len(clean) else None
    return out


def _r(v: float, digits: int = 4) -> float:
    v = float(v)
    if not math.isfinite(v) or v == 0:
        return v
    return round(v, max(0, digits - math.floor(math.log10(abs(v))) - 1))


# ----------------------------------------------------------------------------------------------
# the "rows" job


def _puzzles(spec: dict[str, Any]) -> Any:
    from hrm_edge.puzzles.datasets import load_puzzle_set

    path = Path(spec["path"])
    pset = load_puzzle_set(path, split=None if path.is_file() else spec.get("split", "val"))
    n = spec.get("limit")
    if n:
        reps = -(-n // len(pset.inputs))  # repeat a small set to reach n puzzles
        pset.inputs = np.concatenate([pset.inputs] * reps)[:n]
        pset.puzzle_ids = np.concatenate([pset.puzzle_ids] * reps)[:n]
        pset.labels = None if pset.labels is None else np.concatenate([pset.labels] * reps)[:n]
    return pset


class _Driver:
    """The runtime under test: `segment_call` (one segment on the full batch, for the
    micro-benchmark; returns the number of segments it ran) and `solve` (one batch, ACT loop)."""

    segments_per_call = 1

    def setup_micro(self, tokens: np.ndarray, puzzle_ids: np.ndarray) -> None:
        raise NotImplementedError

    def segment_call(self) -> None:
        raise NotImplementedError

    def solve(self, tokens: np.ndarray, puzzle_ids: np.ndarray, policy: Any, max_steps: int) -> Any:
        raise NotImplementedError


class _RunnerDriver(_Driver):
    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def setup_micro(self, tokens: np.ndarray, puzzle_ids: np.ndarray) -> None:
        self.runner.start(tokens, puzzle_ids)

    def segment_call(self) -> None:
        self.runner.step()

    def solve(self, tokens: np.ndarray, puzzle_ids: np.ndarray, policy: Any, max_steps: int) -> Any:
        from hrm_edge.act import run_act

        return run_act(self.runner, tokens, puzzle_ids, policy, max_steps)


class _UnrolledDriver(_Driver):
    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.segments_per_call = runner.k

    def setup_micro(self, tokens: np.ndarray, puzzle_ids: np.ndarray) -> None:
        self.runner.start(tokens, puzzle_ids)

    def segment_call(self) -> None:
        self.runner.chunk()

    def solve(self, tokens: np.ndarray, puzzle_ids: np.ndarray, policy: Any, max_steps: int) -> Any:
        from hrm_edge.runtimes.ort.runner import run_act_unrolled

        return run_act_unrolled(self.runner, tokens, puzzle_ids, policy, max_steps)


class _LoopDriver(_Driver):
    """The whole-ACT Loop graph: the micro-benchmark runs the loop for a fixed `micro_steps`
    segments and divides (it includes the loop's embedding and carry set-up once per call)."""

    def __init__(self, session: Any, micro_steps: int) -> None:
        self.session = session
        self.segments_per_call = micro_steps

    def setup_micro(self, tokens: np.ndarray, puzzle_ids: np.ndarray) -> None:
        from hrm_edge.act import parse_policy

        self._args = (tokens, puzzle_ids, parse_policy("fixed"), self.segments_per_call)

    def segment_call(self) -> None:
        from hrm_edge.runtimes.ort.runner import run_act_loop_graph

        run_act_loop_graph(self.session, *self._args)

    def solve(self, tokens: np.ndarray, puzzle_ids: np.ndarray, policy: Any, max_steps: int) -> Any:
        from hrm_edge.runtimes.ort.runner import run_act_loop_graph

        return run_act_loop_graph(self.session, tokens, puzzle_ids, policy, max_steps)


def _torch_driver(job: dict[str, Any]) -> _Driver:
    import torch

    from hrm_edge.model.checkpoint import load_checkpoint
    from hrm_edge.model.runner import TorchSegmentRunner

    torch.set_num_threads(job["threads"])
    model = load_checkpoint(job["checkpoint"]).model.float().eval()
    precision = job["precision"]
    if precision == "bf16":
        # weights stored in bf16 once (the model's CastedLinear would otherwise cast fp32 weights at
        # every use); RMSNorm, RoPE tables and the carry init stay fp32 as in the reference.
        for p in model.parameters():
            p.data = p.data.bfloat16()
        model.set_compute_dtype("bfloat16")
    else:
        model.set_compute_dtype("float32")
    if job.get("graph") == "compile":
        # torch.compile (inductor, default mode) of the two calls a segment makes; dynamic shapes, so
        # that shrinking the batch when puzzles halt does not recompile
        model.reason = torch.compile(model.reason, dynamic=True)
        model.heads = torch.compile(model.heads, dynamic=True)
    return _RunnerDriver(TorchSegmentRunner(model, "cpu"))


# OpenVINO inference precision of each bench precision (int8: the float sites in bf16)
OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "bf16"}


def _openvino_driver(job: dict[str, Any]) -> _Driver:
    from hrm_edge.runtimes.openvino.loader import compile_graph
    from hrm_edge.runtimes.openvino.runner import OvSegmentRunner

    g, threads = job["graphs"], job["threads"]
    hint = job.get("hint") or OPENVINO_HINTS[job["precision"]]
    carry = np.load(g["carry"])
    embed = compile_graph(g["embed"], "f32", threads=threads) if g.get("embed") else None
    runner = OvSegmentRunner(compile_graph(g["main"], hint, threads=threads), carry["H_init"], carry["L_init"],
                             job["total_len"], embed=embed)
    return _RunnerDriver(runner)


def _ort_driver(job: dict[str, Any]) -> _Driver:
    from hrm_edge.runtimes.ort.loader import make_embed_session, make_session
    from hrm_edge.runtimes.ort.runner import OrtSegmentRunner, OrtUnrolledRunner

    g = job["graphs"]
    threads, spin = job["threads"], job.get("spin", True)
    carry = np.load(g["carry"])
    h_init, l_init = carry["H_init"], carry["L_init"]
    session = make_session(g["main"], threads=threads, spin=spin)
    embed = make_embed_session(g["embed"]) if g.get("embed") else None  # as `solve` opens it
    variant = job["variant"]
    if variant == "segment":
        return _RunnerDriver(OrtSegmentRunner(session, h_init, l_init, job["total_len"], embed_session=embed))
    if variant == "unrolled":
        return _UnrolledDriver(OrtUnrolledRunner(session, h_init, l_init, job["total_len"], embed_session=embed))
    if variant == "loop":
        return _LoopDriver(session, job["max_steps"])
    raise ValueError(f"unknown graph variant {variant!r}")


class _SolverDriver(_Driver):
    """`hrm-edge solve BUNDLE`'s path: GraphSolver on the bundle's default graph for ORT on the CPU."""

    def __init__(self, solver: Any) -> None:
        self.solver = solver
        self.runner = solver.segment_runner

    def setup_micro(self, tokens: np.ndarray, puzzle_ids: np.ndarray) -> None:
        self.runner.start(tokens, self.solver.bundle.model_puzzle_ids(puzzle_ids))

    def segment_call(self) -> None:
        self.runner.step()

    def solve(self, tokens: np.ndarray, puzzle_ids: np.ndarray, policy: Any, max_steps: int) -> Any:
        return self.solver.solve(tokens, puzzle_ids, policy, max_steps, batch_size=len(tokens))


def _bundle_driver(job: dict[str, Any]) -> _Driver:
    from hrm_edge.bundle import open_bundle
    from hrm_edge.runtimes.solver import GraphSolver, default_graph

    bundle = open_bundle(job["bundle"])
    solver = GraphSolver(bundle, default_graph(bundle, "ort"), threads=job["threads"])
    if solver.segment_runner is None:
        raise ValueError(f"the bundle's default graph {solver.graph!r} is not a segment graph")
    return _SolverDriver(solver)


class RowsServer:
    """One runtime configuration, loaded once, measured in rounds on command (see `serve`).

    The orchestrator interleaves rounds of all configurations of a model and batch size, so
    that every configuration samples the same (time-varying) load of a shared machine."""

    def __init__(self, job: dict[str, Any]) -> None:
        t_load = time.perf_counter()
        self.job = job
        drivers = {"torch": _torch_driver, "bundle": _bundle_driver, "openvino": _openvino_driver}
        self.driver = drivers.get(job["runtime"], _ort_driver)(job)
        self.load_s = time.perf_counter() - t_load
        self.batch = job["batch"]
        self.pset = _puzzles(job["puzzles"])
        reps = -(-self.batch // len(self.pset.inputs))
        self.tokens = np.concatenate([self.pset.inputs] * reps)[:self.batch]
        self.ids = np.concatenate([self.pset.puzzle_ids] * reps)[:self.batch]
        self.times: list[float] = []
        self.foreign: list[float | None] = []
        self.e2e: dict[str, dict[str, Any]] = {}
        # warm up (allocations, ORT arena, oneDNN primitive caches)
        self.driver.setup_micro(self.tokens, self.ids)
        t0 = time.perf_counter()
        self.driver.segment_call()
        self.first_s = time.perf_counter() - t0
        warm_until = time.perf_counter() + min(1.0, 2 * self.first_s)
        self.warmup_calls = 1
        while self.warmup_calls < job["micro"].get("warmup", 2) or time.perf_counter() < warm_until:
            self.driver.segment_call()
            self.warmup_calls += 1

    def micro(self, seconds: float, min_iters: int, max_iters: int) -> dict[str, Any]:
        self.driver.segment_call()  # re-warm caches after the other configurations' rounds
        loop = timed_loop(self.driver.segment_call, seconds, min_iters, max_iters)
        self.times += loop["times"]
        self.foreign += loop["foreign"]
        return {"calls": len(loop["times"])}

    def solve_chunk(self, policy_name: str, chunk: int, chunks: int, max_seconds: float | None = None
                    ) -> dict[str, Any]:
        """Solve every `chunks`-th batch of the puzzle set starting at batch `chunk` (timed per batch);
        stop after `max_seconds` (the summary then covers the batches solved)."""
        from hrm_edge.act import parse_policy

        policy, n, b = parse_policy(policy_name), len(self.pset.inputs), self.batch
        acc = self.e2e.get(policy_name)
        if acc is None:  # one untimed batch first: a new batch shape pays allocations
            self.driver.solve(self.pset.inputs[:b], self.pset.puzzle_ids[:b], policy, self.job["max_steps"])
            acc = self.e2e[policy_name] = {"parts": {}, "times": [], "foreign": []}
        meter = CpuMeter()
        starts = list(range(0, n, b))[chunk::chunks]
        t_end = time.perf_counter() + max_seconds if max_seconds else math.inf
        done = 0
        for i in starts:
            if time.perf_counter() > t_end:
                acc["truncated"] = True
                break
            done += 1
            meter.start()
            t = time.perf_counter()
            acc["parts"][i] = self.driver.solve(self.pset.inputs[i:i + b], self.pset.puzzle_ids[i:i + b], policy,
                                                self.job["max_steps"])
            acc["times"].append(time.perf_counter() - t)
            acc["foreign"].append(meter.stop())
        return {"batches": done, "truncated": done < len(starts)}

    def summary(self) -> dict[str, Any]:
        from hrm_edge.act import concat_results

        out: dict[str, Any] = {"load_s": _r(self.load_s), "first_call_ms": _r(1e3 * self.first_s),
                               "warmup_calls": self.warmup_calls,
                               "segment": summarize(self.times, self.foreign, scale=self.driver.segments_per_call),
                               "segments_per_call": self.driver.segments_per_call, "policies": {}}
        for name, acc in self.e2e.items():
            if not acc["parts"]:
                continue
            starts = sorted(acc["parts"])
            res = concat_results([acc["parts"][i] for i in starts])
            rows = np.concatenate([np.arange(i, min(i + self.batch, len(self.pset.inputs))) for i in starts])
            n = len(rows)
            total = float(sum(acc["times"]))
            entry: dict[str, Any] = {
                "puzzles": n, "complete": not acc.get("truncated", False) and n == len(self.pset.inputs),
                "seconds": _r(total), "puzzles_per_s": _r(n / total),
                "batch_latency_ms": summarize(acc["times"], acc["foreign"]),
                "mean_segments": _r(float(res.steps.mean())),
                "segments_histogram": {int(k): int(v) for k, v in sorted(Counter(res.steps.tolist()).items())},
            }
            if self.pset.labels is not None:
                labels = self.pset.labels[rows]
                entry["exact_accuracy"] = _r(float((res.predictions == labels).all(-1).mean()))
                entry["token_accuracy"] = _r(float((res.predictions == labels).mean()))
            out["policies"][name] = entry
        return out


def serve() -> None:
    """`--serve`: the first stdin line is a "rows" job; each further line a command
    {"cmd": "micro", "seconds", "min_iters", "max_iters"} | {"cmd": "e2e", "policy", "chunk", "chunks"} |
    {"cmd": "summary"} | {"cmd": "quit"}; each gets one reply line (RESULT_MARK + JSON)."""

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(RESULT_MARK + json.dumps(obj) + "\n")
        sys.stdout.flush()

    try:
        server = RowsServer(json.loads(sys.stdin.readline()))
    except Exception as exc:  # reported to the orchestrator, which lists the row as an error
        reply({"error": f"{type(exc).__name__}: {exc}"[:400]})
        return
    reply({"ok": True, "load_s": _r(server.load_s)})
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "micro":
                reply(server.micro(cmd["seconds"], cmd.get("min_iters", 3), cmd.get("max_iters", 400)))
            elif cmd["cmd"] == "e2e":
                reply(server.solve_chunk(cmd["policy"], cmd["chunk"], cmd["chunks"], cmd.get("max_seconds")))
            elif cmd["cmd"] == "summary":
                reply(server.summary())
            else:
                reply({"ok": True})
                return
        except Exception as exc:
            reply({"error": f"{type(exc).__name__}: {exc}"[:400]})


# ----------------------------------------------------------------------------------------------
# the "peak" job


def _best_rate(fn: Any, flop: float, reps: int, seconds: float) -> tuple[float, float | None]:
    """Best GFLOP/s (or GOP/s) of fn over `reps`+ calls within ~`seconds`, and the contention."""
    fn()
    loop = timed_loop(fn, seconds, reps, 10_000)
    t = np.asarray(loop["times"])
    f = [v for v in loop["foreign"] if v is not None]
    return flop / t.min() / 1e9, (float(np.mean(f)) if f else None)


def run_peak(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from hrm_edge.runtimes.ort.loader import make_session

    threads, n, sec = job["threads"], job.get("n", 2048), job.get("seconds", 2.0)
    torch.set_num_threads(threads)
    out: dict[str, Any] = {"threads": threads, "n": n}
    flop = 2.0 * n**3
    a, b = torch.randn(n, n), torch.randn(n, n)
    out["torch_fp32_gflops"], out["torch_fp32_contention"] = _best_rate(lambda: torch.mm(a, b), flop, 3, sec)
    an, bn = a.numpy(), b.numpy()
    out["numpy_fp32_gflops"], out["numpy_fp32_contention"] = _best_rate(lambda: an @ bn, flop, 3, sec)
    a16, b16 = a.bfloat16(), b.bfloat16()
    out["torch_bf16_gflops"], out["torch_bf16_contention"] = _best_rate(lambda: torch.mm(a16, b16), flop, 3, sec)

    def session(nodes: list[Any], inputs: list[Any], inits: list[Any], out_type: int) -> Any:
        graph = helper.make_graph(nodes, "peak", inputs, [helper.make_tensor_value_info("y", out_type, None)], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        return make_session(model.SerializeToString(), threads=threads)

    rng = np.random.default_rng(0)
    x8 = rng.integers(0, 255, (n, n), dtype=np.uint8)
    w8 = rng.integers(-127, 127, (n, n), dtype=np.int8)
    s8 = session([helper.make_node("MatMulInteger", ["x", "w", "xz", "wz"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.UINT8, [n, n])],
                 [numpy_helper.from_array(w8, "w"), numpy_helper.from_array(np.array(128, np.uint8), "xz"),
                  numpy_helper.from_array(np.array(0, np.int8), "wz")], TensorProto.INT32)
    out["ort_int8_gops"], out["ort_int8_contention"] = _best_rate(lambda: s8.run(None, {"x": x8}), flop, 3, sec)
    x32 = rng.standard_normal((n, n), dtype=np.float32)
    s32 = session([helper.make_node("MatMul", ["x", "w"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
                  [numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "w")], TensorProto.FLOAT)
    out["ort_fp32_gflops"], out["ort_fp32_contention"] = _best_rate(lambda: s32.run(None, {"x": x32}), flop, 3, sec)
    out["fp32_peak_gflops"] = max(out["torch_fp32_gflops"], out["numpy_fp32_gflops"])
    out["bf16_peak_gflops"] = out["torch_bf16_gflops"]
    out["int8_peak_gops"] = out["ort_int8_gops"]
    return {k: (_r(v) if isinstance(v, float) else v) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# the "profile" job


def run_profile(job: dict[str, Any]) -> dict[str, Any]:
    """Per op type: kernel ms per run and share, for each graph in job["graphs"] (name -> path)."""
    import tempfile

    from hrm_edge.runtimes.ort.loader import make_session

    batch, threads, iters = job["batch"], job["threads"], job.get("iters", 10)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in job["graphs"].items():
            session = make_session(path, threads=threads, profile_prefix=str(Path(tmp) / "profile"))
            rng = np.random.default_rng(0)
            feeds = {}
            for i in session.get_inputs():
                shape = [batch if not isinstance(d, int) else d for d in i.shape]
                if "int64" in i.type:
                    feeds[i.name] = np.zeros(shape, np.int64)
                else:
                    feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
            for _ in range(3):
                session.run(None, feeds)
            session.end_profiling()
            session = make_session(path, threads=threads, profile_prefix=str(Path(tmp) / "profile"))
            meter = CpuMeter()
            meter.start()
            for _ in range(iters):
                session.run(None, feeds)
            contention = meter.stop()
            events = json.loads(Path(session.end_profiling()).read_text())
            by_op: Counter[str] = Counter()
            nodes: Counter[str] = Counter()
            runs = run_us = 0
            for e in events:
                if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
                    op = e["args"].get("op_name", "?")
                    by_op[op] += e["dur"]
                    nodes[op] += 1
                elif e.get("cat") == "Session" and e.get("name") == "model_run":
                    runs += 1
                    run_us += e["dur"]
            runs = max(runs, 1)
            kernels = sum(by_op.values())
            out[name] = {
                "run_ms": _r(run_us / runs / 1e3), "kernel_ms": _r(kernels / runs / 1e3), "runs": runs,
                "contention": None if contention is None else _r(contention),
                "nodes_per_run": int(sum(nodes.values()) / runs),
                "ops": {op: {"ms": _r(us / runs / 1e3), "share": _r(us / kernels), "nodes": nodes[op] // runs}
                        for op, us in by_op.most_common()},
            }
    return out


def main() -> None:
    if "--serve" in sys.argv[1:]:
        serve()
        return
    job = json.loads(sys.stdin.read())
    kind = job.get("kind")
    runs = {"peak": run_peak, "profile": run_profile}
    if kind not in runs:
        raise SystemExit(f"unknown job kind {kind!r}")
    result = runs[kind](job)
    sys.stdout.write(RESULT_MARK + json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""`hrm-edge bench`: speed and accuracy of every CPU runtime against the official behaviour.

The baseline of every comparison is the official behaviour: PyTorch eager fp32 running the
`fixed` policy to the model's `halt_max_steps`, measured in the same run, at the same batch size.
For each model, runtime configuration and batch size a worker process (`hrm_edge.bench.worker`)
measures the time of one segment on a full batch (p50/p90 over many calls) and, per halting
policy, an end-to-end solve of a puzzle set (latency per batch, puzzles/s, mean segments used,
exact accuracy). The machine's GEMM peaks (fp32, bf16, int8) are measured by the bench itself,
so a segment's achieved GOP/s is reported as a fraction of what this machine can do.

Runtime configurations (`RUNTIMES`; rows that cannot run are listed with the reason):

- torch-fp32 (the baseline), torch-bf16: `TorchSegmentRunner` (bf16: weights stored in bf16);
- ort-fp32: the portable standard-op segment graph as a bundle ships it (tokens in, embedding
  recomputed every segment), driven by `OrtSegmentRunner`;
- ort-fp32-cpufused[/unrolledK|/loop]: `hrm_edge.export.fuse` applied to the segment graph
  taking x (embedding once per batch) and driven by `OrtSegmentRunner` (on the CPU EP the carry
  ping-pongs between two IOBinding-bound buffers, never copied), or to the K-unrolled / whole-ACT
  `Loop` graphs (`OrtUnrolledRunner`, `run_act_loop_graph`);
- ort-int8 (+ @1t): when the model is given as a bundle with a `segment.int8-cpu` graph (or with
  `--int8-graph`), that graph fused after quantization; otherwise the bench's fallback, the
  product's CPU dynamic mode (`hrm_edge.quant.quantize.quantize_graph` with
  `settings_for("cpu", "dynamic")`: u8 activations, s8 per-channel weights, MatMul only) applied
  to the fused graph ("fuse, then quantize");
  ort-int8-shipped: the bundle's INT8 graph as shipped (unfused; skipped without one);
  ort-int8-qf: the other order on the fallback: quantize the standard graph (weight transposes
  folded first, so the quantizer sees MatMul weights as initializers), then fuse;
  ort-int8/unrolledK, ort-int8/loop: that quantized standard graph composed into the unrolled /
  Loop graph, then fused (the dynamic quantizer does not quantize inside a Loop body);
- *@1t: the same graph with one intra-op thread;
- torch-compile-fp32/-bf16: the same runner with `torch.compile` (inductor) of the model's segment calls;
- openvino-fp32/-bf16: `OvSegmentRunner` on the portable fp32 graph, precision hint f32 / bf16;
  openvino-int8: hrm-edge's static INT8 graph, OpenVINO's INT8 form (the bundle's
  `segment.int8-tensorrt`, else the bench's all-int8 static fallback on the portable graph) with its
  float sites in bf16; openvino-int8-nncf: NNCF post-training quantization of the
  portable graph (weight transposes folded) on hrm-edge's ACT-aware calibration samples
  (`hrm_edge.quant.openvino_nncf`); only when the `[openvino]` extra imports;
- tensorrt: only where TensorRT is installed (this CPU bench then lists it as skipped).

Graphs are exported once per checkpoint (sha256) into `<out>/cache`. `--pause-training` stops
the local training processes (`hrm-edge train`) with SIGSTOP while each worker runs (at most
`--pause-max` seconds at a time, resumed in a `finally` and by a detached watchdog) so they do
not share the cores with the measurement; every timing window also records the CPU share other
processes used ("contention"), and p50s over clean windows are reported next to the plain ones.

Outputs under `--out`: `bench.json` (schema in bench/README.md), `bench.md` (the tables) and per
model `<model>-latency_vs_batch.png`, `<model>-accuracy_vs_speed.png`, `<model>-segments_hist.png`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from hrm_edge.bench import log
from hrm_edge.bench.configs import BASELINE, Runtime, Settings, runtimes, skip_reason
from hrm_edge.bench.launch import Worker, run_worker
from hrm_edge.bench.pausing import Pauser, wait_quiet
from hrm_edge.bench.prepare import Model, ShippedInt8, prepare_model, puzzle_dir, puzzle_set, takes_x
from hrm_edge.bench.report import markdown_report, plot_report
from hrm_edge.bench.rows import add_ratios, rows_from, targets

DEFAULT_OUT = Path("bench/results")

SCHEMA = 1


def _job(model: Model, rt: Runtime, batch: int, s: Settings, e2e: bool, n_puzzles: int) -> dict[str, Any]:
    g = model.graphs
    job: dict[str, Any] = {
        "kind": "rows", "runtime": rt.engine, "precision": rt.precision, "variant": rt.variant, "graph": rt.graph,
        "batch": batch, "threads": rt.threads or s.threads, "policies": list(s.policies),
        "max_steps": model.max_steps,
        "checkpoint": str(model.checkpoint), "total_len": int(model.config.total_len), "e2e": e2e,
        "puzzles": {"path": str(puzzle_dir(model.task)), "split": "val", "limit": n_puzzles},
        "micro": {"seconds": s.micro_seconds, "min_iters": 2 if s.quick else 3, "max_iters": 400,
                  "warmup": 1 if s.quick else 2},
    }
    if rt.engine == "bundle":
        job["bundle"] = g["bundle"]
    if rt.engine == "ort":
        key = {("fp32", "standard"): "seg", ("fp32", "cpufused"): "fused", ("int8", "cpufused"): "int8",
               ("int8", "quantize-then-fuse"): "int8_qf", ("int8", "shipped"): "int8_shipped"}[(rt.precision, rt.graph)]
        if rt.variant == "unrolled":
            key = "unrolled_fused" if rt.precision == "fp32" else "unrolled_int8"
        elif rt.variant == "loop":
            key = "loop_fused" if rt.precision == "fp32" else "loop_int8"
        main = g[key]
        graphs = {"main": main, "carry": g["carry"]}
        if rt.variant != "loop" and takes_x(main):
            graphs["embed"] = g["embed"]
        job["graphs"] = graphs
    if rt.engine == "openvino":
        main = g[{"standard": "seg", "quantizer": "int8_openvino", "nncf": "int8_nncf"}[rt.graph]]
        job["graphs"] = {"main": main, "carry": g["carry"], **({"embed": g["embed"]} if takes_x(main) else {})}
    return job


def _rotate(items: list[Any], r: int) -> list[Any]:
    r %= max(1, len(items))
    return items[r:] + items[:r]


def measure_group(model: Model, batch: int, configs: list[Runtime], s: Settings, e2e: bool, n: int,
                  pauser: Pauser, peaks: dict[str, Any]) -> list[dict[str, Any]]:
    """All configurations of one model and batch size, loaded side by side in persistent workers
    and measured in interleaved rounds (rotating order), so each sees the same machine load."""
    log(f"bench: {model.name} batch {batch}: loading {len(configs)} configurations"
         f"{f', end to end on {n} puzzles' if e2e else ''} ...")
    workers: dict[str, Worker] = {}
    try:
        for rt in configs:  # all load in parallel (nothing is timed yet)
            workers[rt.name] = Worker(_job(model, rt, batch, s, e2e, n), s.worker_timeout)
        for name, w in workers.items():
            if "error" in w.wait_loaded():
                log(f"  {name}: {w.error}")
        names = [k for k, w in workers.items() if not w.error]
        rounds = s.rounds
        per_round = s.micro_seconds / rounds
        for r in range(rounds):
            if s.quiet_wait > 0:
                wait_quiet(s.quiet_wait)
            with pauser.paused():
                for name in _rotate(names, r):
                    workers[name].request({"cmd": "micro", "seconds": per_round, "min_iters": 1 if s.quick else 2,
                                           "max_iters": 400})
        if e2e:
            chunks = min(rounds, max(1, n // batch))
            for r in range(chunks):
                if s.quiet_wait > 0:
                    wait_quiet(s.quiet_wait)
                with pauser.paused():
                    for name in _rotate(names, r):
                        for policy in s.policies:
                            workers[name].request({"cmd": "e2e", "policy": policy, "chunk": r, "chunks": chunks,
                                                   "max_seconds": s.e2e_seconds / chunks})
        rows = []
        for rt in configs:
            res = workers[rt.name].request({"cmd": "summary"})
            if "error" not in res:
                seg = res["segment"]
                log(f"  {rt.name:32s} segment p50 {seg['p50']:9.3f} ms  p90 {seg['p90']:9.3f}  "
                     f"clean p50 {seg['clean_p50']}  contention {seg['contention']}")
            else:
                log(f"  {rt.name}: {res['error']}")
            rows.extend(rows_from(model, rt, batch, res, peaks, s.policies, s.threads))
        return rows
    finally:
        for w in workers.values():
            w.close()


def run_suite(paths: list[Path], s: Settings, out: Path, cache: Path, pauser: Pauser,
              shipped: dict[Path, ShippedInt8]) -> dict[str, Any]:
    t_start = time.time()
    rts = runtimes(s.unroll)
    chosen = [rts[n] for n in s.runtimes]
    need = {r.name for r in chosen}
    models = []
    for p in paths:
        log(f"bench: preparing {p} ...")
        models.append(prepare_model(p, cache, s.unroll, shipped.get(p, ShippedInt8()), need))
    from hrm_edge.bench.worker import foreign_load

    busy = foreign_load(1.0)
    if busy is not None and busy > 0.3 and s.threads > 1:
        log(f"bench: WARNING other processes use {100 * busy:.0f}% of the cores: with {s.threads} threads per "
             "runtime, latencies (PyTorch's above all) inflate several-fold; consider --pause-training or --threads 1")
    log("bench: measuring the GEMM peaks ...")
    peaks = run_worker({"kind": "peak", "threads": s.threads, "n": 256 if s.quick else 2048,
                        "seconds": 0.1 if s.quick else 2.0}, pauser, s.worker_timeout, s.quiet_wait)
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for model in models:
        n_set = len(puzzle_set(model.task, None).inputs)

        def work_gflop(n: int, m: Model = model) -> float:
            return m.config.segment_flops(1) * n * m.max_steps / 1e9

        for batch in s.batches:
            n = -(-(s.e2e_puzzles or n_set) // batch) * batch  # whole batches (a small set is repeated)
            if work_gflop(n) > s.e2e_budget_gflop:
                n = batch  # one batch, if that fits the budget
            e2e = work_gflop(n) <= s.e2e_budget_gflop
            configs = []
            for rt in chosen:
                reason = skip_reason(rt, "int8_shipped" in model.graphs)
                if reason:
                    skipped[f"{rt.name} @ {model.name}"] = reason
                elif rt.threads is not None and rt.threads == s.threads:
                    skipped[f"{rt.name} @ {model.name}"] = f"same as {rt.name.split('@')[0]} at --threads {s.threads}"
                elif rt.name == "ort-int8-qf" and batch > 1:
                    skipped[f"{rt.name} @ {model.name} batch {batch}"] = "fusion-order comparison runs at batch 1 only"
                elif rt.variant != "segment" and batch > 1 and model.config.segment_flops(batch) > 50e9:
                    skipped[f"{rt.name} @ {model.name} batch {batch}"] = (
                        "unrolled/Loop graphs save per-call overhead, negligible at this size: not measured")
                else:
                    configs.append(rt)
            rows.extend(measure_group(model, batch, configs, s, e2e, n, pauser, peaks))
    add_ratios(rows)
    profiles = {}
    if s.profile:
        for model in models:
            graphs = {"standard fp32": model.graphs["segx"], "cpufused fp32": model.graphs["fused"]}
            int8 = model.graphs["int8"]
            if Path(int8).is_file():  # a shipped INT8 graph embeds the tokens itself (one Gather)
                graphs["cpufused int8" if takes_x(int8) else "cpufused int8 (embeds)"] = int8
            graphs = {k: v for k, v in graphs.items() if Path(v).is_file()}
            if graphs:
                log(f"bench: profiling {model.name} batch 1 ...")
                profiles[model.name] = run_worker({"kind": "profile", "graphs": graphs, "batch": 1,
                                                   "threads": s.threads, "iters": 3 if s.quick else 10},
                                                  pauser, s.worker_timeout, s.quiet_wait)
    report = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_start)),
        "seconds": round(time.time() - t_start, 1),
        "machine": {**_machine(s.threads), "contention_at_start": busy},
        "settings": dataclasses.asdict(s),
        "pause": {"patterns": list(pauser.patterns), "max_seconds": pauser.max_seconds,
                  "paused_seconds": round(pauser.paused_seconds, 1)},
        "baseline": f"{BASELINE} (PyTorch eager fp32), policy fixed, max_steps = the model's halt_max_steps, "
                    "same model and batch size",
        "peaks": peaks,
        "models": [{"name": m.name, "checkpoint": str(m.checkpoint), "task": m.task, "trained": m.trained,
                    "parameters": m.config.parameter_count(), "halt_max_steps": m.max_steps,
                    "segment_gflop_b1": round(m.config.segment_flops(1) / 1e9, 4),
                    "graphs": {k: Path(v).name for k, v in m.graphs.items() if Path(v).is_file()},
                    "prep": m.prep} for m in models],
        "rows": rows,
        "skipped": skipped,
        "targets": targets(rows, models),
        "profiles": profiles,
    }
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = plot_report(report, out)
    (out / "bench.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "bench.md").write_text(markdown_report(report))
    return report


def _machine(threads: int) -> dict[str, Any]:
    import onnxruntime

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    flags = ""
    with contextlib.suppress(OSError):
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f" {f}" in flags]
    versions = {"onnxruntime": onnxruntime.__version__, "numpy": np.__version__, "python": platform.python_version()}
    with contextlib.suppress(ImportError):
        import torch

        versions["torch"] = str(torch.__version__)
    return {"cpu": cpu, "isa": isa, "cpus": os.cpu_count(), "threads": threads, "versions": versions}

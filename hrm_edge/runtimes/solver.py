"""Solve puzzles with one graph of a bundle on ONNX Runtime, TensorRT or OpenVINO (no torch on this path).

`GraphSolver` picks the driver from the graph's kind: a segment graph runs under the shared ACT
loop (`hrm_edge.act.run_act`; a segment graph taking x runs with its embed graph, once per batch),
a K-unrolled graph checks halting every K segments, an `act_loop` graph runs the whole loop
inside the graph. `runnable_graphs` lists the graphs a runtime can run and `default_graph` picks
the one `solve`, and every other command given no `--graph`, uses.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hrm_edge.act import HaltingPolicy, Progress, SegmentRunner, SolveResult, concat_results, solve_in_batches
from hrm_edge.bundle import Bundle, BundleError
from hrm_edge.manifest import ORT_CPU, GraphEntry

RUNTIMES = ("ort", "trt", "openvino")
# Default graph per runtime, fastest first. ORT on the CPU EP: the fused INT8 CPU graph when it pays
# (`int8_pays`; `hrm_edge.quant.quantize.cpu_fused_build`), else the INT8 CPU graph (bundles written
# before the fused one, or whose fused graph failed its gate), else the fused CPU graph (contrib ops;
# the bench's fastest fp32 row, `ort-fp32-cpufused`), else the portable fp32 segment graph. Unfused
# INT8 against fused fp32 depends on the model: 1.4x slower on the TRM maze demo (its 32 unfused norms),
# 0.30x ORT fp32 on the 27M config (batch 1, one thread; docs/int8.md). ORT on a GPU EP: the portable graphs.
# TensorRT: the fp16 segment graph. OpenVINO (segment graphs, `hrm_edge.runtimes.openvino`): the static
# Q/DQ INT8 graph (the tensorrt flavour) when it pays -- OpenVINO's fast INT8 form (27M config, 1 thread:
# 0.27-0.34x its own f32, while the dynamic cpu flavour runs at 1.04-1.16x; bench/latest/session9-openvino/)
# -- else the portable fp32 graph computed in f32 (parity-exact); other graphs are named with --graph.
PREFERRED = {"ort-cpu": ("segment.int8-cpufused", "segment.int8-cpu", "segment.fp32-cpufused", "segment.fp32"),
             "ort-gpu": ("segment.int8-cpu", "segment.fp32"), "trt": ("segment.fp16",),
             "openvino": ("segment.int8-tensorrt", "segment.fp32")}
# An INT8 graph is a default only when at least this share of its quantization sites computes in
# int8. Below it the graph buys size, not speed: measured on the shipped demos (docs/int8.md), the
# graphs with 36/50 and 64/66 sites kept in float run 1.05-1.08x slower per segment than the fused
# fp32 graph, while the ones with every site in int8 run at 0.66-0.72x (fused).
MIN_INT8_SHARE = 0.5


def int8_pays(entry: GraphEntry) -> bool:
    """Whether an INT8 graph computes most of its sites in int8 (`MIN_INT8_SHARE`); graphs of other
    precisions, and INT8 graphs without a site count (dynamic quantization), pass."""
    q = entry.quantization or {}
    sites, in_float = q.get("sites"), q.get("float_sites") or []
    if entry.precision != "int8" or not isinstance(sites, int) or sites <= 0:
        return True
    return 1 - len(in_float) / sites >= MIN_INT8_SHARE


def _ort_on_cpu(providers: Any) -> bool:
    """ONNX Runtime with these providers (`loader.resolve_providers`) runs on its CPU EP."""
    from hrm_edge.runtimes.ort.loader import CPU, resolve_providers

    first = resolve_providers(providers)[0]
    return (first[0] if isinstance(first, tuple) else first) == CPU


def _target(runtime: str, providers: Any) -> str:
    if runtime not in RUNTIMES:
        raise BundleError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    if runtime in ("trt", "openvino"):
        return runtime
    return "ort-cpu" if _ort_on_cpu(providers) else "ort-gpu"


def _runs_on(entry: GraphEntry, target: str) -> bool:
    if entry.kind == "embed" or (entry.only_on == ORT_CPU and target != "ort-cpu"):
        return False
    return target not in ("trt", "openvino") or entry.kind == "segment"


def runnable_graphs(bundle: Bundle, runtime: str = "ort", providers: Any = None) -> list[str]:
    """Names of the graphs that solve puzzles on `runtime` (embed graphs excluded; TensorRT: segment
    graphs; OpenVINO: segment graphs; graphs fused for ONNX Runtime's CPU EP only there), in manifest order."""
    target = _target(runtime, providers)
    return [name for name, entry in bundle.graphs.items() if _runs_on(entry, target)]


def default_graph(bundle: Bundle, runtime: str = "ort", providers: Any = None) -> str:
    """The graph to run when none is named: the fastest the bundle has for this runtime (`PREFERRED`,
    INT8 only where `int8_pays`), else its first runnable graph."""
    runnable = runnable_graphs(bundle, runtime, providers)
    if not runnable:
        raise BundleError(f"{bundle.path}: no graph runs on {runtime}; graphs: {', '.join(bundle.graphs)}")
    preferred = [g for g in PREFERRED[_target(runtime, providers)]
                 if g in runnable and int8_pays(bundle.graph(g))]
    return preferred[0] if preferred else runnable[0]


class GraphSolver:
    """One graph of a bundle, opened once, solving batches under any halting policy."""

    def __init__(self, bundle: Bundle, graph: str, runtime: str = "ort", providers: Any = None,
                 threads: int | None = None, engine: str | None = None) -> None:
        target = _target(runtime, providers)
        self.bundle, self.graph, self.runtime = bundle, graph, runtime
        self.entry = bundle.graph(graph)
        self.kind = self.entry.kind
        if self.entry.only_on == ORT_CPU and target != "ort-cpu":
            raise BundleError(f"graph {graph!r} runs only on ONNX Runtime's CPU execution provider "
                              "(fused contrib ops); choose another with --graph")
        h_init, l_init = bundle.carry_init()
        total_len = bundle.manifest.model.total_len
        if runtime == "trt":
            if self.kind != "segment":
                raise BundleError(f"the TensorRT runtime runs segment graphs; {graph!r} is a {self.kind} graph")
            from hrm_edge.runtimes.trt.runner import TrtSegmentRunner, load_engine

            if engine is None:
                raise BundleError("the TensorRT runtime needs an engine: build one with `hrm-edge build`")
            if total_len is None:
                raise BundleError(f"{bundle.manifest.where}: missing field 'model.total_len' (the carry length)")
            self._runner: Any = TrtSegmentRunner(load_engine(engine), h_init, l_init, total_len)
            return
        if runtime == "openvino":
            if self.kind != "segment":
                raise BundleError(f"the OpenVINO runtime runs segment graphs; {graph!r} is a {self.kind} graph")
            from hrm_edge.runtimes.openvino.session import open_segment_runner

            self._runner, self.inference_precision = open_segment_runner(bundle, graph, threads=threads)
            return
        from hrm_edge.runtimes.ort import loader, runner

        self.session = loader.make_session(bundle.graph_path(graph), providers=providers, threads=threads)
        embed = None
        if self.entry.embed_graph is not None:
            embed = loader.make_embed_session(bundle.graph_path(self.entry.embed_graph), providers=providers)
        if self.kind == "segment":
            self._runner = runner.OrtSegmentRunner(self.session, h_init, l_init, total_len, embed_session=embed)
        elif self.kind == "unrolled":
            self._runner = runner.OrtUnrolledRunner(self.session, h_init, l_init, total_len, embed_session=embed)
        elif self.kind != "act_loop":
            raise BundleError(f"graph {graph!r} of kind {self.kind!r} cannot solve puzzles by itself")

    @property
    def segment_runner(self) -> SegmentRunner | None:
        """The SegmentRunner behind a segment graph (None for unrolled and loop graphs)."""
        return self._runner if self.kind == "segment" else None

    def solve(self, tokens: np.ndarray, puzzle_ids: np.ndarray, policy: HaltingPolicy, max_steps: int,
              batch_size: int = 64, record_logits: bool = False, progress: Progress | None = None) -> SolveResult:
        """Solve N puzzles (original puzzle ids); `record_logits` (segment graphs only) also returns
        per-step logits; `progress` hears of each segment (segment graphs) and each finished chunk."""
        puzzle_ids = self.bundle.model_puzzle_ids(puzzle_ids)
        if self.kind == "segment":
            return solve_in_batches(self._runner, tokens, puzzle_ids, policy, max_steps, batch_size,
                                    record_steps=record_logits, record_logits=record_logits, progress=progress)
        from hrm_edge.runtimes.ort import runner

        parts = []
        for i in range(0, len(tokens), batch_size):
            t, p = tokens[i:i + batch_size], puzzle_ids[i:i + batch_size]
            if self.kind == "unrolled":
                parts.append(runner.run_act_unrolled(self._runner, t, p, policy, max_steps))
            else:
                parts.append(runner.run_act_loop_graph(self.session, t, p, policy, max_steps))
            if progress is not None:
                progress.chunk_done(len(t))
        return concat_results(parts)

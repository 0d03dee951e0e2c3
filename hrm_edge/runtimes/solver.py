"""Solve puzzles with one graph of a bundle on ONNX Runtime or TensorRT (no torch on this path).

`solve_with_graph` picks the driver from the graph's kind: a segment graph runs under the
shared ACT loop (`hrm_edge.act.run_act`), a K-unrolled graph checks halting every K segments,
an `act_loop` graph runs the whole loop inside the graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hrm_edge.act import HaltingPolicy, SegmentRunner, SolveResult, concat_results, solve_in_batches
from hrm_edge.bundle import Bundle, BundleError

RUNTIMES = ("ort", "trt")


class GraphSolver:
    """One graph of a bundle, opened once, solving batches under any halting policy."""

    def __init__(self, bundle: Bundle, graph: str, runtime: str = "ort", providers: Any = None,
                 threads: int | None = None, engine: str | None = None) -> None:
        if runtime not in RUNTIMES:
            raise BundleError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
        self.bundle, self.graph, self.runtime = bundle, graph, runtime
        self.entry = bundle.graphs.get(graph)
        if self.entry is None:
            raise BundleError(f"{bundle.path}: no graph {graph!r}; available: {', '.join(sorted(bundle.graphs))}")
        self.kind = self.entry["kind"]
        h_init, l_init = bundle.carry_init()
        total_len = int(bundle.manifest["model"]["total_len"])
        if runtime == "trt":
            if self.kind != "segment":
                raise BundleError(f"the TensorRT runtime runs segment graphs; {graph!r} is a {self.kind} graph")
            from hrm_edge.runtimes.trt.runner import TrtSegmentRunner, load_engine

            if engine is None:
                raise BundleError("the TensorRT runtime needs an engine: build one with `hrm-edge build`")
            self._runner: Any = TrtSegmentRunner(load_engine(engine), h_init, l_init, total_len)
            return
        from hrm_edge.runtimes.ort import loader, runner

        self.session = loader.make_session(bundle.graph_path(graph), providers=providers, threads=threads)
        if self.kind == "segment":
            self._runner = runner.OrtSegmentRunner(self.session, h_init, l_init, total_len)
        elif self.kind == "unrolled":
            self._runner = runner.OrtUnrolledRunner(self.session, h_init, l_init, total_len)
        elif self.kind != "act_loop":
            raise BundleError(f"graph {graph!r} of kind {self.kind!r} cannot solve puzzles by itself")

    @property
    def segment_runner(self) -> SegmentRunner | None:
        """The SegmentRunner behind a segment graph (None for unrolled and loop graphs)."""
        return self._runner if self.kind == "segment" else None

    def solve(self, tokens: np.ndarray, puzzle_ids: np.ndarray, policy: HaltingPolicy, max_steps: int,
              batch_size: int = 64, record_logits: bool = False) -> SolveResult:
        """Solve N puzzles (original puzzle ids); `record_logits` (segment graphs only) also returns
        per-step logits."""
        puzzle_ids = self.bundle.model_puzzle_ids(puzzle_ids)
        if self.kind == "segment":
            return solve_in_batches(self._runner, tokens, puzzle_ids, policy, max_steps, batch_size,
                                    record_steps=record_logits, record_logits=record_logits)
        from hrm_edge.runtimes.ort import runner

        parts = []
        for i in range(0, len(tokens), batch_size):
            t, p = tokens[i:i + batch_size], puzzle_ids[i:i + batch_size]
            if self.kind == "unrolled":
                parts.append(runner.run_act_unrolled(self._runner, t, p, policy, max_steps))
            else:
                parts.append(runner.run_act_loop_graph(self.session, t, p, policy, max_steps))
        return concat_results(parts)


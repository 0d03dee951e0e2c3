"""A `SolverService` over one graph of a local bundle, running in this process (ONNX Runtime, or
TensorRT with an engine): what `hrm-edge serve` puts behind the solver model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hrm_edge.bundle import Bundle, BundleError, open_bundle
from hrm_edge.runtimes.solver import GraphSolver, default_graph
from hrm_edge.serving.service import SolverService


@dataclass
class LocalSolver:
    """The bundle, the graph that runs, and the service around it."""

    bundle: Bundle
    graph: str
    service: SolverService


def local_solver(path: str | Path, slots: int, graph: str | None = None, runtime: str = "ort",
                 threads: int | None = None, engine: str | None = None) -> LocalSolver:
    """Open the bundle and start the continuous loop over `graph` (default: the runtime's default
    graph); only segment graphs admit puzzles at segment boundaries."""
    bundle = open_bundle(path)
    graph = graph or default_graph(bundle, runtime)
    solver = GraphSolver(bundle, graph, runtime, threads=threads, engine=engine)
    if solver.segment_runner is None:
        raise BundleError(f"graph {graph!r} is a {solver.kind} graph: serving runs the continuous ACT loop over a "
                          "segment graph; choose one with --graph")
    config = bundle.config
    service = SolverService(solver.segment_runner, slots, int(config["seq_len"]), int(config["vocab_size"]),
                            bundle.model_puzzle_ids)
    return LocalSolver(bundle, graph, service)

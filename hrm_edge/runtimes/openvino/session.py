"""Open a bundle graph on OpenVINO: the compiled graph, its embed graph and the precision it computes in.

Fast float for float sites (opt-in: `HRM_EDGE_OPENVINO_FAST_FLOAT=1`). An INT8 graph keeps some
quantization sites in float (the mixed-precision search, `quantization.float_sites` in the manifest).
On OpenVINO those sites, and every op outside a quantized MatMul, run in the inference precision: f32
by default; with the opt-in, the device's fast float (bf16 on the CPU) when the gate still passes, f32
otherwise. The gate is the bundle's own: the golden puzzles of reference.npz under its reference
policy, checked with the INT8 verify gates (`hrm_edge.parity.VERIFY_GATES`), once when the graph is
opened. It is off by default because 16 golden puzzles are too few to decide: on the TRM sudoku6 demo
they passed in bf16 while the closed-loop gate over its 256 validation puzzles failed (solved
agreement 98.8%, 3 puzzles changed; f32 float sites: 100%).
"""

from __future__ import annotations

import os
from typing import Any

from hrm_edge.act import parse_policy, solve_in_batches
from hrm_edge.parity import VERIFY_GATES, gate, golden_result
from hrm_edge.parity import compare as compare_results
from hrm_edge.runtimes.openvino.loader import compile_graph, default_device, inference_precision, verified_graph_bytes
from hrm_edge.runtimes.openvino.runner import OvSegmentRunner

FAST_FLOAT_ENV = "HRM_EDGE_OPENVINO_FAST_FLOAT"


def fast_float_allowed() -> bool:
    """True where `HRM_EDGE_OPENVINO_FAST_FLOAT` is 1/true/yes/on (the opt-in)."""
    return os.environ.get(FAST_FLOAT_ENV, "0").strip().lower() in ("1", "true", "yes", "on")


def golden_gate_passes(bundle: Any, runner: OvSegmentRunner, precision: str) -> bool:
    """Whether `runner` reproduces the bundle's golden puzzles within the verify gates of `precision`
    (False when the bundle has no golden outputs)."""
    if bundle.manifest.reference is None:
        return False
    info = bundle.manifest.reference
    ref = bundle.reference()
    res = solve_in_batches(runner, ref["inputs"], bundle.model_puzzle_ids(ref["puzzle_ids"]),
                           parse_policy(info.policy), info.max_steps, batch_size=64)
    labels = ref["labels"] if ref["labels"].any() else None
    checks = gate(compare_results(golden_result(ref), res, labels), VERIFY_GATES[precision])
    return all(c["passed"] for c in checks)


def open_segment_runner(bundle: Any, graph: str, threads: int | None = None, device: str | None = None,
                        precision: str | None = None) -> tuple[OvSegmentRunner, str]:
    """(runner, inference precision) for segment graph `graph` of an opened bundle. precision: an
    OpenVINO hint to force (f32 | bf16 | f16); default `loader.inference_precision` of the graph's
    precision, with the fast-float gate for INT8 graphs (module docstring)."""
    entry = bundle.graph(graph)
    device = device or default_device()
    h_init, l_init = bundle.carry_init()
    total_len = bundle.manifest.model.total_len
    embed = None
    if entry.embed_graph is not None:
        embed = compile_graph(verified_graph_bytes(bundle, entry.embed_graph), "f32", device, threads)
    data = verified_graph_bytes(bundle, graph)

    def runner(hint: str) -> OvSegmentRunner:
        return OvSegmentRunner(compile_graph(data, hint, device, threads), h_init, l_init, total_len, embed=embed)

    if precision is not None:
        return runner(precision), precision
    # the fp16 graph's reduced precision is bf16 on the CPU; the opt-in concerns INT8 float sites only
    hint = inference_precision(entry.precision, device, fast_float=entry.precision != "int8" or fast_float_allowed())
    if entry.precision == "int8" and hint != "f32":
        candidate = runner(hint)
        if golden_gate_passes(bundle, candidate, "int8"):
            return candidate, hint
        hint = "f32"
    return runner(hint), hint

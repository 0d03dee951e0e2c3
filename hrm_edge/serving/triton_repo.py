"""A Triton Inference Server model repository from a bundle (`hrm-edge triton-repo`).

    DIR/hrm_segment/config.pbtxt, 1/model.onnx (onnxruntime backend) or 1/model.plan (tensorrt,
        an engine built on the target): one ACT segment, the graph contract's names and dtypes;
    DIR/hrm_solver/config.pbtxt, 1/model.py, 1/solver.json, 1/carry_init.npz: the solver model
        (Python backend). Its model.py runs `hrm_edge.serving.triton_model`: the same continuous ACT
        loop as `hrm-edge serve` (`SolverService`), each segment a BLS call to hrm_segment.

Inputs and outputs of hrm_solver: `hrm_edge.serving.protocol`. The repository runs unchanged on a
Jetson or a GPU host (README: Serving); the Python backend's environment needs `pip install hrm-edge`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from hrm_edge.bundle import BundleError, open_bundle
from hrm_edge.files import check_output_dir
from hrm_edge.manifest import TensorSpec
from hrm_edge.serving.protocol import SEGMENT_MODEL, SOLVER_INPUTS, SOLVER_MODEL, SOLVER_OUTPUTS, dims

TRITON_TYPES = {"int64": "TYPE_INT64", "float32": "TYPE_FP32", "float16": "TYPE_FP16", "bool": "TYPE_BOOL"}
SOLVER_FILE = "solver.json"
MODEL_PY = "from hrm_edge.serving.triton_model import TritonPythonModel  # noqa: F401\n"


def _tensor(kind: str, name: str, dtype: str, shape: tuple[int, ...]) -> str:
    """One input/output entry; a tensor with no dims besides the batch axis is [1] reshaped to []."""
    body = ", ".join(str(d) for d in shape) if shape else "1"
    reshape = "" if shape else "\n    reshape: { shape: [ ] }"
    return (f"{kind} [\n  {{\n    name: \"{name}\"\n    data_type: {TRITON_TYPES[dtype]}\n"
            f"    dims: [ {body} ]{reshape}\n  }}\n]\n")


def segment_config(inputs: dict[str, TensorSpec], outputs: dict[str, TensorSpec], slots: int, backend: str) -> str:
    """config.pbtxt of the segment model: the graph's tensors without the batch axis (Triton's
    max_batch_size = slots), no dynamic batcher (the solver sends whole batches)."""
    lines = [f'name: "{SEGMENT_MODEL}"', f'backend: "{backend}"', f"max_batch_size: {slots}", ""]
    for kind, specs in (("input", inputs), ("output", outputs)):
        for name, spec in specs.items():
            lines.append(_tensor(kind, name, spec.dtype, tuple(int(d) for d in spec.shape[1:])))
    lines.append("instance_group [ { count: 1 } ]\n")
    return "\n".join(lines)


def solver_config(seq_len: int) -> str:
    """config.pbtxt of the solver model: Python backend, no batch axis (a request holds n puzzles),
    one instance whose async execute lets requests share the continuous loop."""
    lines = [f'name: "{SOLVER_MODEL}"', 'backend: "python"', "max_batch_size: 0", ""]
    for kind, specs in (("input", SOLVER_INPUTS), ("output", SOLVER_OUTPUTS)):
        for name, (dtype, shape) in specs.items():
            lines.append(_tensor(kind, name, dtype, dims(shape, seq_len)))
    lines.append("instance_group [ { count: 1, kind: KIND_CPU } ]\n")
    return "\n".join(lines)


def write_repository(bundle_path: str | Path, output: str | Path, graph: str | None = None, plan: str | None = None,
                     slots: int = 16, force: bool = False) -> Path:
    """Write the repository (see the module docstring); returns its directory."""
    bundle = open_bundle(bundle_path)
    graph = graph or "segment.fp32"
    entry = bundle.graph(graph)
    if entry.kind != "segment" or entry.embed_graph is not None or entry.only_on is not None:
        raise BundleError(f"graph {graph!r} cannot be the Triton segment model: it needs a portable segment graph "
                          "taking tokens (segment.fp32 or segment.fp16)")
    out = Path(output)
    if out.exists():
        if not force:
            raise BundleError(f"{out} exists: pass --force to replace it")
        shutil.rmtree(out)
    check_output_dir(out, "--output directory")
    seg_dir, solver_dir = out / SEGMENT_MODEL / "1", out / SOLVER_MODEL / "1"
    seg_dir.mkdir(parents=True)
    solver_dir.mkdir(parents=True)
    if plan is not None:
        shutil.copyfile(plan, seg_dir / "model.plan")
        backend = "tensorrt"
    else:
        shutil.copyfile(bundle.graph_path(graph), seg_dir / "model.onnx")
        backend = "onnxruntime"
    (out / SEGMENT_MODEL / "config.pbtxt").write_text(segment_config(entry.inputs, entry.outputs, slots, backend))
    seq_len = int(bundle.config["seq_len"])
    (out / SOLVER_MODEL / "config.pbtxt").write_text(solver_config(seq_len))
    (solver_dir / "model.py").write_text(MODEL_PY)
    shutil.copyfile(bundle.path / (bundle.manifest.carry_init or "carry_init.npz"), solver_dir / "carry_init.npz")
    rows = bundle.manifest.puzzle_rows
    carry = entry.inputs["z_H"]
    (solver_dir / SOLVER_FILE).write_text(json.dumps({
        "task": bundle.task, "seq_len": seq_len, "vocab_size": int(bundle.config["vocab_size"]),
        "total_len": int(bundle.manifest.model.total_len), "carry_dtype": carry.dtype, "slots": slots,
        "segment_model": SEGMENT_MODEL, "graph": graph, "kept_puzzle_ids": rows.kept_original_ids if rows else None,
        "halting": {"default_policy": bundle.manifest.need_halting().default_policy,
                    "max_steps": bundle.manifest.need_halting().max_steps}}, indent=2))
    return out

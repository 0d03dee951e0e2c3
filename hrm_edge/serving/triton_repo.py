"""A Triton Inference Server model repository from a bundle (`hrm-edge triton-repo`).

    DIR/hrm_segment/config.pbtxt, 1/model.onnx: one ACT segment, the graph contract's names and dtypes,
        on the onnxruntime backend; or 1/model.plan on tensorrt (an engine built on the target, --plan);
        or 1/model.onnx + 1/model.py on the Python backend, ONNX Runtime in the backend's stub
        (`hrm_edge.serving.triton_segment`; for a server without the onnxruntime backend, such as the
        one the nvidia-pytriton wheel ships);
    DIR/hrm_solver/config.pbtxt, 1/model.py, 1/solver.json, 1/carry_init.npz: the solver model
        (Python backend). Its model.py runs `hrm_edge.serving.triton_model`: the same continuous ACT
        loop as `hrm-edge serve` (`SolverService`), each segment a BLS call to hrm_segment.

Segment backend `in-solver` writes no hrm_segment: the solver model runs the segment itself (ONNX
Runtime, or TensorRT with an engine) on a copy of the bundle in DIR/hrm_solver/1/bundle (no BLS hop),
or, with `copy_bundle=False` (what `hrm-edge serve` writes into its private directory), on the bundle
where it is.

Segment backend `iterative` (`hrm_edge.serving.triton_iterative`) writes DIR/hrm_iterative (one puzzle
per request, Triton's iterative sequence batching forms every segment's batch; the segment runs in
its process on DIR/hrm_iterative/1/bundle) and an hrm_solver with the same interface that sends each
puzzle of a request to it.

The solver's config carries the bundle's identity as parameters (`IDENTITY_PARAMETERS`): a client
reads them with get_model_config and refuses a server that serves another bundle.

Inputs and outputs of hrm_solver: `hrm_edge.serving.protocol`. The repository runs unchanged on a
Jetson or a GPU host (README: Serving); the Python backend's environment needs `pip install hrm-edge`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from hrm_edge.bundle import Bundle, BundleError, open_bundle
from hrm_edge.files import check_output_dir
from hrm_edge.manifest import TensorSpec
from hrm_edge.runtimes.solver import default_graph
from hrm_edge.serving import protocol as wire
from hrm_edge.serving.protocol import (
    ITERATIVE_MODEL,
    SEGMENT_BACKENDS,
    SEGMENT_MODEL,
    SOLVER_INPUTS,
    SOLVER_MODEL,
    SOLVER_OUTPUTS,
    dims,
)

TRITON_TYPES = {"int64": "TYPE_INT64", "float32": "TYPE_FP32", "float16": "TYPE_FP16", "bool": "TYPE_BOOL"}
SOLVER_FILE = "solver.json"
# Requests in flight at once: the iterative variant's hrm_solver instances (one request each). The other
# solver models have one instance, which Triton hands one request at a time (`triton_model`).
REQUEST_THREADS = 8
BUNDLE_COPY = "bundle"  # the in-solver variant's copy of the bundle, in the solver's version directory
ENGINE_COPY = "engine.plan"
MODEL_PY = "from hrm_edge.serving.triton_model import TritonPythonModel  # noqa: F401\n"
FRONT_MODEL_PY = "from hrm_edge.serving.triton_iterative import FrontModel as TritonPythonModel  # noqa: F401\n"
ITERATIVE_MODEL_PY = "from hrm_edge.serving.triton_iterative import TritonPythonModel  # noqa: F401\n"
SEGMENT_MODEL_PY = "from hrm_edge.serving.triton_segment import TritonPythonModel  # noqa: F401\n"


def _tensor(kind: str, name: str, dtype: str, shape: tuple[int, ...]) -> str:
    """One input/output entry; a tensor with no dims besides the batch axis is [1] reshaped to []."""
    body = ", ".join(str(d) for d in shape) if shape else "1"
    reshape = "" if shape else "\n    reshape: { shape: [ ] }"
    return (f"{kind} [\n  {{\n    name: \"{name}\"\n    data_type: {TRITON_TYPES[dtype]}\n"
            f"    dims: [ {body} ]{reshape}\n  }}\n]\n")


def _parameters(params: dict[str, str]) -> str:
    """A config's string parameters (Triton passes them to the model; clients read them)."""
    return "".join(f"parameters {{\n  key: {json.dumps(k)}\n  value: {{ string_value: {json.dumps(v)} }}\n}}\n"
                   for k, v in params.items())


def segment_config(inputs: dict[str, TensorSpec], outputs: dict[str, TensorSpec], slots: int, backend: str,
                   threads: int | None = None) -> str:
    """config.pbtxt of the segment model: the graph's tensors without the batch axis (Triton's
    max_batch_size = slots), no dynamic batcher (the solver sends whole batches). threads: ONNX
    Runtime intra-op threads of the Python-backend variant (None: physical cores)."""
    lines = [f'name: "{SEGMENT_MODEL}"', f'backend: "{backend}"', f"max_batch_size: {slots}", ""]
    for kind, specs in (("input", inputs), ("output", outputs)):
        for name, spec in specs.items():
            lines.append(_tensor(kind, name, spec.dtype, tuple(int(d) for d in spec.shape[1:])))
    lines.append("instance_group [ { count: 1, kind: KIND_CPU } ]\n" if backend == "python"
                 else "instance_group [ { count: 1 } ]\n")
    if backend == "python" and threads is not None:
        lines.append(_parameters({"threads": str(threads)}))
    return "\n".join(lines)


def identity(bundle: Bundle) -> dict[str, str]:
    """The bundle's identity as the solver config's parameters."""
    return {wire.BUNDLE_DIGEST: bundle.manifest.digest or "", wire.BUNDLE_TASK: bundle.task}


def solver_config(seq_len: int, parameters: dict[str, str] | None = None, instances: int = 1) -> str:
    """config.pbtxt of the solver model: Python backend, no batch axis (a request holds n puzzles),
    `instances` instances (each a stub process running one request at a time)."""
    lines = [f'name: "{SOLVER_MODEL}"', 'backend: "python"', "max_batch_size: 0", ""]
    for kind, specs in (("input", SOLVER_INPUTS), ("output", SOLVER_OUTPUTS)):
        for name, (dtype, shape) in specs.items():
            lines.append(_tensor(kind, name, dtype, dims(shape, seq_len)))
    lines.append(f"instance_group [ {{ count: {instances}, kind: KIND_CPU }} ]\n")
    if parameters:
        lines.append(_parameters(parameters))
    return "\n".join(lines)


def iterative_config(seq_len: int, slots: int) -> str:
    """config.pbtxt of hrm_iterative: the solver's tensors for one puzzle (Triton's batch axis is the
    puzzle axis, max_batch_size = slots), the sequence batcher in iterative mode with the oldest
    strategy (a batch holds only sequences with a request ready, at most `slots` in flight), one
    instance."""
    lines = [f'name: "{ITERATIVE_MODEL}"', 'backend: "python"', f"max_batch_size: {slots}", ""]
    for kind, specs in (("input", SOLVER_INPUTS), ("output", SOLVER_OUTPUTS)):
        for name, (dtype, shape) in specs.items():
            lines.append(_tensor(kind, name, dtype, dims(shape, seq_len)[1:]))
    lines.append("sequence_batching {\n  iterative_sequence: true\n"
                 f"  oldest {{ max_candidate_sequences: {slots} }}\n}}\n")
    lines.append("instance_group [ { count: 1, kind: KIND_CPU } ]\n")
    return "\n".join(lines)


def write_repository(bundle_path: str | Path, output: str | Path, graph: str | None = None, plan: str | None = None,
                     slots: int = 16, force: bool = False, segment_backend: str = "onnxruntime",
                     threads: int | None = None, runtime: str = "ort", request_threads: int = REQUEST_THREADS,
                     copy_bundle: bool = True) -> Path:
    """Write the repository (see the module docstring); returns its directory. threads: ONNX Runtime
    intra-op threads where the segment runs in a Python model; runtime ("ort" | "trt", with `plan`
    as its engine) and copy_bundle (False: refer to the bundle and engine by absolute path): the
    in-solver and iterative variants'; request_threads: the iterative variant's hrm_solver instances, i.e.
    requests in flight at once (`REQUEST_THREADS`)."""
    if segment_backend not in SEGMENT_BACKENDS:
        raise BundleError(f"segment backend {segment_backend!r} is not one of {', '.join(SEGMENT_BACKENDS)}")
    bundle = open_bundle(bundle_path)
    in_solver = segment_backend in ("in-solver", "iterative")  # the segment runs in a solver model's process
    if in_solver:
        graph = graph or default_graph(bundle, runtime)
        entry = bundle.graph(graph)
        if entry.kind != "segment":
            raise BundleError(f"graph {graph!r} is a {entry.kind} graph: the solver model runs the continuous ACT "
                              "loop over a segment graph; choose one with --graph")
    else:
        graph = graph or "segment.fp32"
        entry = bundle.graph(graph)
        if entry.kind != "segment" or entry.embed_graph is not None or entry.only_on is not None:
            raise BundleError(f"graph {graph!r} cannot be the Triton segment model: it needs a portable segment "
                              "graph taking tokens (segment.fp32 or segment.fp16)")
    out = Path(output)
    if out.exists():
        if not force:
            raise BundleError(f"{out} exists: pass --force to replace it")
        shutil.rmtree(out)
    check_output_dir(out, "--output directory")
    seq_len, vocab_size = int(bundle.config["seq_len"]), int(bundle.config["vocab_size"])
    halting = bundle.manifest.need_halting()
    common = {"task": bundle.task, "graph": graph, "slots": slots,
              "halting": {"default_policy": halting.default_policy, "max_steps": halting.max_steps}}
    iterative = segment_backend == "iterative"
    solver_dir = out / SOLVER_MODEL / "1"
    solver_dir.mkdir(parents=True)
    if in_solver:  # the model that runs the segment: hrm_solver itself, or hrm_iterative behind it
        runner_dir = out / ITERATIVE_MODEL / "1" if iterative else solver_dir
        runner_dir.mkdir(parents=True, exist_ok=True)
        where, engine = str(Path(bundle.path).resolve()), str(Path(plan).resolve()) if plan is not None else None
        if copy_bundle:
            shutil.copytree(bundle.path, runner_dir / BUNDLE_COPY, ignore=shutil.ignore_patterns("engines"))
            where = BUNDLE_COPY
            if plan is not None:
                shutil.copyfile(plan, runner_dir / ENGINE_COPY)
                engine = ENGINE_COPY
        _write_info(runner_dir, {**common, "segment": segment_backend, "bundle": where, "runtime": runtime,
                                 "threads": threads, "engine": engine})
        if iterative:
            (out / ITERATIVE_MODEL / "config.pbtxt").write_text(iterative_config(seq_len, slots))
            (runner_dir / "model.py").write_text(ITERATIVE_MODEL_PY)
            _write_info(solver_dir, {**common, "segment": "iterative", "iterative_model": ITERATIVE_MODEL,
                                     "seq_len": seq_len, "vocab_size": vocab_size})
    else:
        _write_segment_model(bundle, out / SEGMENT_MODEL, graph, plan, slots, segment_backend, threads)
        rows = bundle.manifest.puzzle_rows
        shutil.copyfile(bundle.path / (bundle.manifest.carry_init or "carry_init.npz"), solver_dir / "carry_init.npz")
        _write_info(solver_dir, {**common, "segment": "bls", "segment_model": SEGMENT_MODEL, "seq_len": seq_len,
                                 "vocab_size": vocab_size, "total_len": int(bundle.manifest.model.total_len),
                                 "carry_dtype": entry.inputs["z_H"].dtype,
                                 "kept_puzzle_ids": rows.kept_original_ids if rows else None})
    (out / SOLVER_MODEL / "config.pbtxt").write_text(
        solver_config(seq_len, identity(bundle), instances=request_threads if iterative else 1))
    (solver_dir / "model.py").write_text(FRONT_MODEL_PY if iterative else MODEL_PY)
    return out


def _write_info(version_dir: Path, info: dict[str, object]) -> None:
    """A Python model's solver.json (what its model.py reads at initialize)."""
    (version_dir / SOLVER_FILE).write_text(json.dumps(info, indent=2))


def _write_segment_model(bundle: Bundle, model_dir: Path, graph: str, plan: str | None, slots: int, backend: str,
                         threads: int | None) -> None:
    version = model_dir / "1"
    version.mkdir(parents=True)
    if plan is not None:
        shutil.copyfile(plan, version / "model.plan")
        backend = "tensorrt"
    else:
        shutil.copyfile(bundle.graph_path(graph), version / "model.onnx")
        if backend == "python":
            (version / "model.py").write_text(SEGMENT_MODEL_PY)
    entry = bundle.graph(graph)
    (model_dir / "config.pbtxt").write_text(segment_config(entry.inputs, entry.outputs, slots, backend, threads))

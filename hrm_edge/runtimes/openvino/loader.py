"""OpenVINO compiled models for hrm-edge graphs: the one place `openvino` compiles a graph (numpy +
openvino only, imported lazily: the package is the optional extra `[openvino]`).

- `compile_graph(model, precision, device, threads)`: a latency-tuned `CompiledModel` with an explicit
  inference precision. OpenVINO's CPU default on a bf16-capable CPU is bf16 even for an fp32 graph
  (it changed 1 of 16 golden puzzles of the HRM 6x6 demo), so the precision is always set. In f32,
  long fp32 reductions are summed in blocks (`accumulation.split_long_matmuls`): OpenVINO's own
  single-chain accumulation failed the fp64 gate on the TRM maze demo.
- `inference_precision(graph_precision, device, fast_float)`: what a bundle graph computes in
  (`INFERENCE_HINTS`): fp32 graphs in f32 (gated like every fp32 graph), fp16 graphs in the device's
  fast float (bf16 on the CPU, f16 on Intel GPU/NPU; gated like fp16), INT8 graphs keep int8 where
  they quantize and run their float sites in the fast float, or f32 with `fast_float=False`.
- `verified_graph_bytes(bundle, name)`: a bundle graph's bytes, read once and checked against the
  manifest's sha256, so the bytes compiled are the bytes verified (no re-read of the file).
- The CPU plugin's dynamic quantization is switched off (`DYNAMIC_QUANTIZATION_GROUP_SIZE` 0): by
  default it quantizes, in groups of 32, the activations of every MatMul whose weight is stored in
  int8, i.e. the float sites of an INT8 graph, which the mixed-precision search kept in float because
  int8 activations there fail the gate. On the TRM sudoku6 attention demo's INT8 graph (66 of 66 sites
  in float) it moved the logits by up to 11.4 against ONNX Runtime (4.9e-4 without it) and failed the
  INT8 gate (solved agreement 98.8%).

Device: "CPU" by default; `HRM_EDGE_OPENVINO_DEVICE` (e.g. GPU, NPU, GPU.1) names another one.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from hrm_edge.errors import HrmEdgeError
from hrm_edge.runtimes.openvino.accumulation import split_long_matmuls

DEVICE_ENV = "HRM_EDGE_OPENVINO_DEVICE"
DEFAULT_DEVICE = "CPU"
# OpenVINO's INFERENCE_PRECISION_HINT values hrm-edge sets.
HINTS = ("f32", "bf16", "f16")
# Graph precision -> the precision it computes in: (CPU, other devices), fast float first.
INFERENCE_HINTS = {"fp32": ("f32", "f32"), "fp16": ("bf16", "f16"), "int8": ("bf16", "f16")}
# The CPU plugin property that quantizes activations of int8-weight MatMuls at run time (0: off).
DYNAMIC_QUANTIZATION = "DYNAMIC_QUANTIZATION_GROUP_SIZE"


class OpenVinoError(HrmEdgeError):
    """Base class of the OpenVINO errors a user can cause."""


class OpenVinoMissingError(OpenVinoError, ImportError):
    """The `openvino` package is not installed."""


class OpenVinoModelError(OpenVinoError, ValueError):
    """A graph OpenVINO cannot read or compile, or a device it does not have."""


def import_openvino() -> Any:
    """The `openvino` module, or a one-line error naming the extra that installs it."""
    try:
        import openvino
    except ImportError:
        raise OpenVinoMissingError("the openvino runtime needs the `openvino` package: "
                                   "pip install 'hrm-edge[openvino]'") from None
    return openvino


def default_device() -> str:
    """`HRM_EDGE_OPENVINO_DEVICE`, else "CPU"."""
    return os.environ.get(DEVICE_ENV, "").strip() or DEFAULT_DEVICE


def inference_precision(graph_precision: str, device: str = DEFAULT_DEVICE, fast_float: bool = True) -> str:
    """The INFERENCE_PRECISION_HINT for a graph of this precision on this device (module docstring)."""
    if graph_precision not in INFERENCE_HINTS:
        raise OpenVinoModelError(f"no OpenVINO precision for a {graph_precision!r} graph")
    if graph_precision == "fp32" or not fast_float:
        return "f32"
    cpu, other = INFERENCE_HINTS[graph_precision]
    return cpu if device.upper().startswith("CPU") else other


def verified_graph_bytes(bundle: Any, name: str) -> bytes:
    """The bytes of bundle graph `name`, checked against the manifest's sha256 after reading them."""
    entry = bundle.graph(name)
    path = Path(bundle.path) / entry.file
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OpenVinoModelError(f"{path}: cannot read the graph ({exc.strerror})") from None
    expected = bundle.manifest.files.get(entry.file)
    actual = hashlib.sha256(data).hexdigest()
    if expected is None or actual != expected:
        raise OpenVinoModelError(f"{path}: sha256 {actual[:12]}... does not match the manifest's "
                                 f"{(expected or 'none')[:12]}... (tampered or truncated)")
    return data


def compile_graph(model: str | Path | bytes, precision: str = "f32", device: str | None = None,
                  threads: int | None = None, *, profile: bool = False) -> Any:
    """The one factory of OpenVINO compiled models, tuned for latency.

    model: an .onnx path, or its bytes (a bundle graph: `verified_graph_bytes`). precision: one of
    `HINTS`, set explicitly (never OpenVINO's device default). device: an OpenVINO device name
    (default `default_device()`). threads: CPU inference threads (default: OpenVINO's, the physical
    cores). profile: collect per-layer performance counters (`InferRequest.profiling_info`).
    With precision f32 the fp32 MatMuls reduce in blocks of `accumulation.BLOCK_K` (module docstring)."""
    ov = import_openvino()
    if precision not in HINTS:
        raise OpenVinoModelError(f"unknown inference precision {precision!r}; use one of {', '.join(HINTS)}")
    device = device or default_device()
    core = ov.Core()
    if isinstance(model, bytes):
        where = "in-memory ONNX model"
        source: Any = model
        weights: Any = ov.Tensor(np.empty(0, np.uint8))
    else:
        path = Path(model)
        if not path.is_file():
            raise OpenVinoModelError(f"{path}: no such ONNX file")
        where, source, weights = str(path), str(path), None
    try:
        graph = core.read_model(source) if weights is None else core.read_model(source, weights)
    except Exception as exc:  # openvino raises RuntimeError subclasses with multi-line text
        raise OpenVinoModelError(f"{where}: OpenVINO cannot read this graph ({_first_line(exc)})") from None
    if precision == "f32":
        split_long_matmuls(graph)
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if device.upper().startswith("CPU"):
        config["NUM_STREAMS"] = 1
        if DYNAMIC_QUANTIZATION in core.get_property("CPU", "SUPPORTED_PROPERTIES"):
            config[DYNAMIC_QUANTIZATION] = 0  # float sites stay float (module docstring)
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
    if profile:
        config["PERF_COUNT"] = True
    try:
        return core.compile_model(graph, device, config)
    except Exception as exc:
        available = ", ".join(core.available_devices)
        raise OpenVinoModelError(f"{where}: OpenVINO cannot compile it for {device} with precision {precision} "
                                 f"(available devices: {available}; {_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]

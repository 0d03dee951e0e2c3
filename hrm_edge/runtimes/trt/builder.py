"""Build a TensorRT 10 engine from an ONNX graph, with a sidecar JSON saying what it was built for.

`build_engine(onnx_path, engine_path, precision, target)`:

    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger); parser.parse_from_file(onnx_path)  # per-error messages
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    profile = builder.create_optimization_profile()
    profile.set_shape(name, min, opt, max)  # every input: the batch axis varies, the rest from the graph
    config.add_optimization_profile(profile)
    config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)
    config.progress_monitor = <trt.IProgressMonitor>  # where this TensorRT has it
    plan = builder.build_serialized_network(network, config)

Strongly typed: TensorRT takes every tensor's precision from the ONNX types, so an FP16 engine is
built from the FP16 graph and an INT8 engine from the Q/DQ graph; no FP16/INT8 builder flags
(deprecated implicit INT8 calibration since TensorRT 10.1, removed flags in TensorRT 11).
Fast float for the float sites of an INT8 graph: TensorRT rejects BuilderFlag.FP16 on a strongly
typed network, so the Q/DQ graph's float sites run in fp32 unless the graph itself types them fp16
(an export-side conversion of the INT8 graph, gated like every INT8 graph); the builder adds no flag.
OpenVINO's counterpart is the bf16 precision hint on the INT8 graph (`hrm_edge.runtimes.openvino.session`).

The engine goes to `engine_path` and `<engine_path>.json` records the TensorRT version, GPU name
and compute capability (engines run only there), the batch profile, workspace, flags, precision,
sha256 of the source graph and of the engine, the hrm-edge version and the build time.
`trtexec_command(...)` prints the equivalent `trtexec` command line.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hrm_edge.errors import HrmEdgeError
from hrm_edge.files import sha256_file
from hrm_edge.runtimes.trt.runner import (
    current_device,
    import_cudart,
    import_tensorrt,
    sidecar_path,
)

PRECISIONS = ("fp32", "fp16", "int8")
BUILD_FLAGS = ("STRONGLY_TYPED",)


class EngineBuildError(HrmEdgeError):
    """TensorRT could not parse the graph or build an engine from it."""


@dataclass(frozen=True)
class TargetPreset:
    """Build defaults for a class of device. Workspace is TensorRT's scratch memory limit for tactics."""

    name: str
    workspace_mb: int
    batch: tuple[int, int, int]
    note: str


# Jetson boards share DRAM between CPU and GPU; builds with large workspaces and large batch profiles
# run out of memory on 8 GB boards, so their presets are small. Desktop/server GPUs get more room.
TARGETS: dict[str, TargetPreset] = {
    "orin-nano": TargetPreset("orin-nano", 1024, (1, 8, 32),
                              "Jetson Orin Nano / Orin NX 8 GB (JetPack 6.x, TensorRT 10.3): 8 GB shared with the "
                              "CPU; close other programs while building"),
    "orin-agx": TargetPreset("orin-agx", 4096, (1, 32, 128),
                             "Jetson AGX Orin 32/64 GB (JetPack 6.x, TensorRT 10.3)"),
    "thor": TargetPreset("thor", 8192, (1, 64, 256),
                         "Jetson AGX Thor 128 GB (JetPack 7.x, TensorRT 10.13+)"),
    "desktop": TargetPreset("desktop", 4096, (1, 64, 256),
                            "discrete GPU with >= 8 GB (x86-64 or SBSA)"),
}


def parse_batch(text: str) -> tuple[int, int, int]:
    """'MIN:OPT:MAX' -> (min, opt, max) with 1 <= min <= opt <= max."""
    parts = text.split(":")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise EngineBuildError(f"--batch {text!r}: expected MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX, e.g. 1:32:128")
    return values  # type: ignore[return-value]


def _check_batch(batch: tuple[int, int, int]) -> tuple[int, int, int]:
    b = tuple(int(x) for x in batch)
    if len(b) != 3 or not 1 <= b[0] <= b[1] <= b[2]:
        raise EngineBuildError(f"batch profile {batch}: expected (min, opt, max) with 1 <= min <= opt <= max")
    return b  # type: ignore[return-value]


def _preset(target: str) -> TargetPreset:
    if target not in TARGETS:
        raise EngineBuildError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")
    return TARGETS[target]


def _hrm_edge_version() -> str:
    try:
        from importlib.metadata import version

        return version("hrm-edge")
    except Exception:
        from hrm_edge import __version__

        return __version__


# --- trtexec ---------------------------------------------------------------------------------------------


def _shape_text(name: str, dims: list[Any], batch: int) -> str:
    values = [str(batch)] + [str(int(d)) for d in dims[1:]] if dims else []
    return f"{name}:{'x'.join(values)}"


def onnx_input_shapes(onnx_path: str | Path) -> dict[str, list[Any]]:
    """{input name: dims} of an ONNX file's graph inputs (dynamic dims as their name or None); needs onnx."""
    try:
        import onnx
    except ImportError:
        raise EngineBuildError("reading input shapes needs the onnx package (pip install onnx), or pass them "
                               "from the bundle manifest") from None
    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    shapes: dict[str, list[Any]] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = []
        for d in vi.type.tensor_type.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        shapes[vi.name] = dims
    return shapes


def trtexec_command(onnx_path: str | Path, engine_path: str | Path, batch: tuple[int, int, int] | None = None,
                    input_shapes: dict[str, list[Any]] | None = None, target: str = "desktop",
                    workspace_mb: int | None = None, timing_cache: str | Path | None = None,
                    verbose: bool = False) -> str:
    """The `trtexec` command that builds the same engine as `build_engine` (strongly typed, one
    batch profile for every input, the target's workspace limit, the timing cache)."""
    preset = _preset(target)
    b = _check_batch(batch or preset.batch)
    shapes = input_shapes if input_shapes is not None else onnx_input_shapes(onnx_path)
    for name, dims in shapes.items():
        if any(not isinstance(d, int) or d <= 0 for d in list(dims)[1:]):
            raise EngineBuildError(f"input {name!r} has a dynamic non-batch dimension {list(dims)}; only the batch "
                                   "axis may be dynamic (run `hrm-edge check-trt`)")
    profile = [",".join(_shape_text(n, list(d), v) for n, d in shapes.items()) for v in b]
    args = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}", "--stronglyTyped",
            f"--minShapes={profile[0]}", f"--optShapes={profile[1]}", f"--maxShapes={profile[2]}",
            f"--memPoolSize=workspace:{workspace_mb or preset.workspace_mb}M"]
    if timing_cache:
        args.append(f"--timingCacheFile={timing_cache}")
    if verbose:
        args.append("--verbose")
    return " ".join(shlex.quote(a) for a in args)


# --- progress --------------------------------------------------------------------------------------------


def _make_progress_monitor(trt: Any, stream: Any = None) -> Any | None:
    """A `trt.IProgressMonitor` printing phase starts/ends (and step counts on a terminal) to stderr,
    or None if this TensorRT has no progress monitor API."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None
    out = stream or sys.stderr

    class _Progress(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self._lock = threading.Lock()
            self._phases: dict[str, tuple[int, int, float]] = {}  # name -> (depth, steps, start)
            self._tty = hasattr(out, "isatty") and out.isatty()

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                depth = self._phases[parent_phase][0] + 1 if parent_phase in self._phases else 0
                self._phases[phase_name] = (depth, num_steps, time.monotonic())
                if depth <= 1:
                    print(f"[build] {'  ' * depth}{phase_name} ({num_steps} step(s))", file=out, flush=True)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                depth, steps, _ = self._phases.get(phase_name, (0, 0, 0.0))
                if self._tty and depth <= 1 and steps:
                    print(f"\r[build] {'  ' * depth}{phase_name}: {step + 1}/{steps}", end="", file=out, flush=True)
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                depth, _, start = self._phases.pop(phase_name, (0, 0, time.monotonic()))
                if depth <= 1:
                    end = "\n" if self._tty else ""
                    print(f"{end}[build] {'  ' * depth}{phase_name} done in {time.monotonic() - start:.1f} s",
                          file=out, flush=True)

    return _Progress()


class _Heartbeat:
    """Prints the elapsed time every `every` seconds while a build runs (TensorRT without a monitor API)."""

    def __init__(self, every: float = 10.0, stream: Any = None) -> None:
        self.every, self.out = every, stream or sys.stderr
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(self.every):
            print(f"[build] still building ... {time.monotonic() - start:.0f} s", file=self.out, flush=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)


# --- build -----------------------------------------------------------------------------------------------


def _parser_errors(parser: Any) -> list[str]:
    messages = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        parts = []
        node_name = getattr(err, "node_name", None)
        node_op = getattr(err, "node_operator", None)
        name = node_name() if callable(node_name) else ""
        op = node_op() if callable(node_op) else ""
        if err.node() >= 0 or name:
            parts.append(f"node {err.node()}" + (f" {name!r}" if name else "") + (f" ({op})" if op else ""))
        parts.append(str(err.desc()).strip().replace("\n", " "))
        messages.append(": ".join(parts))
    return messages


def _network_precision(trt: Any, network: Any) -> str:
    """What a strongly typed network computes in: int8 if it quantizes, else fp16 if any layer
    outputs HALF, else fp32."""
    has_half = False
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == trt.LayerType.QUANTIZE:
            return "int8"
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype == trt.DataType.HALF:
                has_half = True
    return "fp16" if has_half else "fp32"


def build_engine(onnx_path: str | Path, engine_path: str | Path, precision: str, target: str = "desktop",
                 batch: tuple[int, int, int] | None = None, timing_cache: str | Path | None = None,
                 workspace_mb: int | None = None, verbose: bool = False, progress: bool = True,
                 extra_sidecar: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build and write `engine_path` and its sidecar `<engine_path>.json`; return the sidecar dict."""
    if precision not in PRECISIONS:
        raise EngineBuildError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    preset = _preset(target)
    b = _check_batch(batch or preset.batch)
    workspace = int(workspace_mb or preset.workspace_mb)
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise EngineBuildError(f"{onnx_path}: no such ONNX file")
    trt = import_tensorrt()
    import_cudart()
    device = current_device()
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = _parser_errors(parser) or ["the parser gave no details (rerun with --verbose)"]
        more = f" (+{len(errors) - 1} more; --verbose lists them)" if len(errors) > 1 else ""
        if verbose:
            for e in errors:
                print(f"[parser] {e}", file=sys.stderr)
        raise EngineBuildError(f"{onnx_path}: TensorRT {trt.__version__} cannot parse it: {errors[0]}{more}")
    graph_precision = _network_precision(trt, network)
    if graph_precision != precision:
        raise EngineBuildError(f"{onnx_path}: the graph computes in {graph_precision}, not {precision}; a strongly "
                               "typed engine takes its precision from the ONNX types, so build from the "
                               f"{precision} graph")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace << 20)
    profile = builder.create_optimization_profile()
    shapes: dict[str, dict[str, list[int]]] = {}
    dynamic = False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = list(tensor.shape)
        if any(d < 0 for d in dims[1:]):
            raise EngineBuildError(f"{onnx_path}: input {tensor.name!r} {dims} has a dynamic non-batch dimension; "
                                   "only the batch axis may be dynamic (run `hrm-edge check-trt`)")
        if dims and dims[0] < 0:
            dynamic = True
            lo, opt, hi = ([v, *dims[1:]] for v in b)
            profile.set_shape(tensor.name, lo, opt, hi)
            shapes[tensor.name] = {"min": lo, "opt": opt, "max": hi}
        else:
            shapes[tensor.name] = {"min": dims, "opt": dims, "max": dims}
    if dynamic:
        config.add_optimization_profile(profile)

    cache_bytes = b""
    if timing_cache and Path(timing_cache).is_file():
        cache_bytes = Path(timing_cache).read_bytes()
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        cache = config.create_timing_cache(b"")  # a cache from another GPU/TensorRT: start a fresh one
        config.set_timing_cache(cache, ignore_mismatch=False)

    monitor = _make_progress_monitor(trt) if progress else None
    if monitor is not None:
        config.progress_monitor = monitor
    print(f"[build] {onnx_path.name} -> {engine_path.name}: TensorRT {trt.__version__} on {device['gpu_name']} "
          f"(sm {device['compute_capability']}), {precision}, batch {b[0]}:{b[1]}:{b[2]}, workspace {workspace} MB",
          file=sys.stderr, flush=True)
    start = time.monotonic()
    if monitor is None and progress:
        with _Heartbeat():
            plan = builder.build_serialized_network(network, config)
    else:
        plan = builder.build_serialized_network(network, config)
    seconds = time.monotonic() - start
    if plan is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT could not build an engine (see the messages above; rerun with "
                               f"--verbose). On 8 GB boards use --target orin-nano or a smaller --batch")

    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_name(engine_path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(memoryview(plan))
    os.replace(tmp, engine_path)
    if timing_cache:
        data = config.get_timing_cache().serialize()
        Path(timing_cache).parent.mkdir(parents=True, exist_ok=True)
        Path(timing_cache).write_bytes(bytes(memoryview(data)))

    sidecar = {
        "format": "hrm-edge-tensorrt-engine",
        "format_version": 1,
        "engine": engine_path.name,
        "tensorrt_version": trt.__version__,
        "gpu_name": device["gpu_name"],
        "compute_capability": device["compute_capability"],
        "precision": precision,
        "target": target,
        "build_flags": list(BUILD_FLAGS),
        "workspace_mb": workspace,
        "batch": {"min": b[0], "opt": b[1], "max": b[2]},
        "input_shapes": shapes,
        "timing_cache": str(timing_cache) if timing_cache else None,
        "onnx": str(onnx_path),
        "onnx_sha256": sha256_file(onnx_path),
        "engine_sha256": sha256_file(engine_path),
        "engine_bytes": engine_path.stat().st_size,
        "hrm_edge_version": _hrm_edge_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 1),
        "trtexec": trtexec_command(onnx_path, engine_path, b, {n: s["max"] for n, s in shapes.items()}, target,
                                   workspace, timing_cache),
    }
    if extra_sidecar:
        sidecar.update(extra_sidecar)
    sidecar_path(engine_path).write_text(json.dumps(sidecar, indent=2) + "\n")
    print(f"[build] wrote {engine_path} ({sidecar['engine_bytes'] / 1e6:.1f} MB) in {seconds:.0f} s",
          file=sys.stderr, flush=True)
    return sidecar


"""What `hrm-edge bench` measures: the runtime configurations (`runtimes`), the run's settings, and
which configurations cannot run here (`skip_reason`)."""

from __future__ import annotations

import dataclasses

BASELINE = "torch-fp32"


@dataclasses.dataclass(frozen=True)
class Runtime:
    """A runtime configuration: `name` as in the tables; `variant` segment | unrolled | loop."""

    name: str
    engine: str  # torch | ort | bundle (`hrm-edge solve BUNDLE`'s path) | openvino | tensorrt
    precision: str  # fp32 | bf16 | int8
    graph: str = "-"  # torch: "-"; ort: standard | cpufused | int8 source
    variant: str = "segment"
    threads: int | None = None  # None: --threads (physical cores by default)


def runtimes(unroll: int) -> dict[str, Runtime]:
    rts = [
        Runtime(BASELINE, "torch", "fp32"),
        Runtime("torch-bf16", "torch", "bf16"),
        Runtime("ort-fp32", "ort", "fp32", "standard"),
        Runtime("ort-fp32-cpufused", "ort", "fp32", "cpufused"),
        Runtime(f"ort-fp32-cpufused/unrolled{unroll}", "ort", "fp32", "cpufused", "unrolled"),
        Runtime("ort-fp32-cpufused/loop", "ort", "fp32", "cpufused", "loop"),
        Runtime("ort-fp32-cpufused@1t", "ort", "fp32", "cpufused", threads=1),
        # What a user of a bundle gets: `hrm-edge solve BUNDLE` (GraphSolver on the bundle's default
        # graph) on a bundle written by the product exporter, measured beside the rows above.
        Runtime("solve-bundle", "bundle", "fp32", "default"),
        Runtime("ort-int8", "ort", "int8", "cpufused"),
        Runtime("ort-int8@1t", "ort", "int8", "cpufused", threads=1),
        Runtime("ort-int8-shipped", "ort", "int8", "shipped"),
        Runtime("ort-int8-qf", "ort", "int8", "quantize-then-fuse"),
        Runtime(f"ort-int8/unrolled{unroll}", "ort", "int8", "cpufused", "unrolled"),
        Runtime("ort-int8/loop", "ort", "int8", "cpufused", "loop"),
        Runtime("openvino-fp32", "openvino", "fp32", "standard"),
        Runtime("tensorrt", "tensorrt", "fp16", "standard"),
    ]
    return {r.name: r for r in rts}

QUICK_RUNTIMES = (BASELINE, "ort-fp32", "ort-fp32-cpufused", "solve-bundle", "ort-int8")


@dataclasses.dataclass
class Settings:
    batches: tuple[int, ...]
    policies: tuple[str, ...]
    runtimes: tuple[str, ...]
    unroll: int
    micro_seconds: float
    e2e_puzzles: int | None
    e2e_budget_gflop: float
    threads: int
    quick: bool
    profile: bool
    rounds: int
    quiet_wait: float
    worker_timeout: float
    e2e_seconds: float


def skip_reason(rt: Runtime, has_shipped_int8: bool = True) -> str | None:
    if rt.engine == "tensorrt":
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return "TensorRT is not installed on this machine (no NVIDIA GPU); run `hrm-edge build` on a device"
        return "TensorRT rows are measured by `make gpu-test` on a device, not by this CPU bench"
    if rt.name == "ort-int8-shipped" and not has_shipped_int8:
        return "no shipped INT8 graph: give a bundle with segment.int8-cpu (hrm-edge export --int8) or --int8-graph"
    if rt.engine == "openvino":
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "openvino is not installed (optional: pip install openvino)"
        return "openvino driver not implemented in this bench"
    return None

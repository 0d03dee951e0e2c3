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
    precision: str  # fp32 | bf16 | int8 (openvino int8: int8 where quantized, float sites in bf16)
    graph: str = "-"  # torch: "-" (eager) | compile; ort: standard | cpufused | int8 source; openvino: standard
    #                   | int8 source (hrm-edge's quantizer | nncf)
    variant: str = "segment"
    threads: int | None = None  # None: --threads (physical cores by default)


def runtimes(unroll: int) -> dict[str, Runtime]:
    rts = [
        Runtime(BASELINE, "torch", "fp32"),
        Runtime("torch-bf16", "torch", "bf16"),
        # what a PyTorch user tries next: torch.compile (inductor, default mode) of the same runner's model
        Runtime("torch-compile-fp32", "torch", "fp32", "compile"),
        Runtime("torch-compile-bf16", "torch", "bf16", "compile"),
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
        # OpenVINO (`hrm_edge.runtimes.openvino`) on the portable graphs: fp32 graph with the f32 and the
        # bf16 precision hint; INT8 from hrm-edge's quantizer (the shipped static graph, else the bench's
        # static fallback) and from NNCF driven by hrm-edge's calibration reader.
        Runtime("openvino-fp32", "openvino", "fp32", "standard"),
        Runtime("openvino-bf16", "openvino", "bf16", "standard"),
        Runtime("openvino-int8", "openvino", "int8", "quantizer"),
        Runtime("openvino-int8-nncf", "openvino", "int8", "nncf"),
        Runtime("tensorrt", "tensorrt", "fp16", "standard"),
    ]
    return {r.name: r for r in rts}

QUICK_RUNTIMES = (BASELINE, "ort-fp32", "ort-fp32-cpufused", "solve-bundle", "ort-int8")
# What a user would reach for instead of hrm-edge: PyTorch bf16 and torch.compile, OpenVINO's bf16
# default and plain NNCF post-training INT8 (no hrm-edge calibration search or gate).
PEERS = ("torch-bf16", "torch-compile-fp32", "torch-compile-bf16", "openvino-bf16", "openvino-int8-nncf")
# The peers beside hrm-edge's CPU paths, one run (`hrm-edge bench --peers`).
PEER_RUNTIMES = (BASELINE, "torch-bf16", "torch-compile-fp32", "torch-compile-bf16", "ort-fp32-cpufused", "ort-int8",
                 "openvino-fp32", "openvino-bf16", "openvino-int8", "openvino-int8-nncf")


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
            return "openvino is not installed (optional extra: pip install 'hrm-edge[openvino]')"
        if rt.graph == "nncf":
            try:
                import nncf  # noqa: F401
            except ImportError:
                return "nncf is not installed (optional extra: pip install 'hrm-edge[openvino]')"
    return None

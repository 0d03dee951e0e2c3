"""ONNX Runtime sessions for hrm-edge graphs: the one place an `InferenceSession` is made
(numpy + onnxruntime only; never torch, never the `onnx` package).

- `make_session(path, providers, threads)`: a latency-tuned `InferenceSession`.
- `resolve_providers`: execution-provider names and aliases, CPU always last.
- `physical_cores`: the default intra-op thread count.
- `graph_metadata`: the `hrm_edge.*` metadata the exporter wrote.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import onnxruntime as ort

from hrm_edge.contract import META_PREFIX
from hrm_edge.errors import HrmEdgeError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)
_ALIASES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT, "trt": TENSORRT}



class OrtRuntimeError(HrmEdgeError):
    """Base class of the ONNX Runtime errors a user can cause."""


class OnnxModelError(OrtRuntimeError, ValueError):
    """A missing, corrupt or unsuitable .onnx file."""


class ProviderError(OrtRuntimeError, ValueError):
    """An execution provider that was asked for but is not in this onnxruntime build."""


# ----------------------------------------------------------------------------------------------
# sessions


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads counted once); falls back to the
    number of CPUs in the affinity mask where /proc/cpuinfo has no core ids (e.g. ARM)."""
    try:
        allowed = set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    try:
        with open("/proc/cpuinfo") as f:
            blocks = f.read().split("\n\n")
    except OSError:
        return max(1, len(allowed))
    cores = set()
    for block in blocks:
        fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in block.splitlines())}
        if "processor" not in fields or not fields["processor"].isdigit():
            continue
        if int(fields["processor"]) not in allowed:
            continue
        if "core id" not in fields:
            return max(1, len(allowed))
        cores.add((fields.get("physical id", "0"), fields["core id"]))
    return max(1, len(cores) or len(allowed))


def resolve_providers(providers: Any = None) -> list[Any]:
    """Execution providers for a session, CPU always last as the fallback.

    None or "cpu": CPU only. "auto": TensorRT > CUDA > CPU, those present in this build.
    A name ("cuda", "tensorrt", "CUDAExecutionProvider", ...) or a list of names and
    (name, options) tuples: those, each of which must be present (`ProviderError`), with CUDA
    added after TensorRT when present (for the nodes TensorRT does not take)."""
    available = ort.get_available_providers()
    if providers is None:
        return [CPU]
    if isinstance(providers, str) and providers.lower() == "auto":
        return [p for p in GPU_PROVIDERS if p in available] + [CPU]
    items = [providers] if isinstance(providers, (str, tuple)) else list(providers)
    out: list[Any] = []
    for item in items:
        name, options = (item[0], item[1]) if isinstance(item, tuple) else (item, None)
        name = _ALIASES.get(str(name).lower(), name)
        if name not in available:
            raise ProviderError(f"execution provider {name} is not available in this onnxruntime build "
                                f"(available: {', '.join(available)})")
        out.append((name, options) if options else name)
    names = [p[0] if isinstance(p, tuple) else p for p in out]
    if TENSORRT in names and CUDA not in names and CUDA in available:
        out.insert(names.index(TENSORRT) + 1, CUDA)  # nodes TensorRT rejects stay on the GPU
    if CPU not in names:
        out.append(CPU)
    return out


def _ort_error_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    code = re.search(r":\s*\d+\s*:\s*([A-Z_]+)\s*:", text)
    detail = text.split(" failed:", 1)[1].strip() if " failed:" in text else text
    detail = detail[:160]
    return f"{code.group(1)}: {detail}" if code else detail


def make_session(model: str | Path | bytes, providers: Any = None, threads: int | None = None, *,
                 spin: bool | None = None, profile_prefix: str | None = None) -> ort.InferenceSession:
    """The one factory of ONNX Runtime sessions, tuned for latency.

    model: an .onnx path, or a serialized ModelProto (bytes; graphs built in memory by the
    quantizer and the bench). threads: intra-op threads (default: physical cores); one inter-op
    thread, sequential execution, all graph optimisations. providers: as in `resolve_providers`
    (default CPU). spin: whether idle intra-op threads spin (ORT's default when None; the bench
    turns it off for a worker that shares cores). profile_prefix: write ORT's per-node profile
    JSON under this prefix (`session.end_profiling()` returns its path).
    A missing or unreadable model raises `OnnxModelError`."""
    if isinstance(model, bytes):
        source, where = model, "in-memory ONNX model"
    else:
        path = Path(model)
        if not path.is_file():
            raise OnnxModelError(f"{path}: no such ONNX file")
        source, where = str(path), str(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads) if threads else physical_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    if spin is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    resolved = resolve_providers(providers)
    try:
        return ort.InferenceSession(source, sess_options=options, providers=resolved)
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        raise OnnxModelError(f"{where}: not a loadable ONNX model (corrupt, truncated or another format; "
                             f"{_ort_error_line(exc)})") from None


def make_embed_session(model: str | Path, providers: Any = None) -> ort.InferenceSession:
    """The session of an embed graph (a table lookup and a scale, run once per batch before the segment
    graph that takes x): one intra-op thread that never spins. With the segment session's threads and
    ORT's default spinning, its idle threads spun on into the segment call that follows: on the 2-core
    machine the fused fp32 segment of the TRM sudoku6 demo took a median 74.6 ms inside `solve` (batch 16,
    policy q: about one segment per batch) against 52 ms alone, and `solve` of its 256 validation puzzles
    took 1.24 s instead of 0.66 s."""
    return make_session(model, providers=providers, threads=1, spin=False)


def graph_metadata(session: ort.InferenceSession) -> dict[str, str]:
    """The `hrm_edge.*` metadata the exporter wrote, without the prefix."""
    props = session.get_modelmeta().custom_metadata_map
    return {k[len(META_PREFIX):]: v for k, v in props.items() if k.startswith(META_PREFIX)}

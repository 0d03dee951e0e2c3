"""INT8 segment graphs, two targets from one pipeline (draft: core functions)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

from hrm_edge.export.onnx_utils import check_graph, dedupe_initializers, set_metadata

TARGETS = ("cpu", "tensorrt")
PRESETS = {"cpu": "cpu", "avx512_vnni": "cpu", "avx2": "cpu", "arm64": "cpu", "tensorrt": "tensorrt", "trt": "tensorrt"}
WEIGHT_OPS = ("MatMul", "Gemm")


def normalize_target(name: str) -> str:
    """"cpu" | "tensorrt" from a target or an optimum preset name (avx512_vnni, arm64 -> cpu)."""
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown INT8 target {name!r}; use one of {', '.join(PRESETS)}") from None


@dataclass
class QuantSettings:
    target: str = "cpu"
    mode: str = "static"  # static QDQ | dynamic
    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    per_channel: bool = True
    op_types: tuple[str, ...] = WEIGHT_OPS
    output_quant: bool = False  # Q/DQ on the outputs of quantized ops too
    extra_options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["op_types"] = list(self.op_types)
        return d


def fold_weight_transposes(model: onnx.ModelProto) -> int:
    """Replace Transpose(initializer) nodes by transposed initializers (the dynamo exporter leaves
    `Transpose(W)` before every Linear's MatMul; ORT's quantizer only quantizes weights that are
    initializers, per channel). Identical results are merged. Returns the number of nodes folded."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    keep, folded = [], 0
    new_inits: list[onnx.TensorProto] = []
    rename: dict[str, str] = {}
    made: set[str] = set()
    for node in g.node:
        if node.op_type == "Transpose" and len(node.input) == 1 and node.input[0] in inits:
            w = numpy_helper.to_array(inits[node.input[0]])
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            name = f"{node.input[0]}__T"  # keeps the module name (site labels read it)
            rename[node.output[0]] = name
            if name not in made:
                made.add(name)
                new_inits.append(numpy_helper.from_array(np.ascontiguousarray(np.transpose(w, perm)), name))
            folded += 1
        else:
            keep.append(node)
    if folded:
        for node in keep:
            for i, name in enumerate(node.input):
                node.input[i] = rename.get(name, name)
        for out in g.output:
            if out.name in rename:  # a weight transpose that is a graph output: keep it as an Identity
                keep.append(onnx.helper.make_node("Identity", [rename[out.name]], [out.name]))
        del g.node[:]
        g.node.extend(keep)
        g.initializer.extend(new_inits)
        stale = [v for v in g.value_info if v.name in rename]
        for v in stale:
            g.value_info.remove(v)
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        unused = [t for t in g.initializer if t.name not in used]
        for t in unused:
            g.initializer.remove(t)
        dedupe_initializers(model)
    return folded


def prepare_fp32(src: str | Path, dst: str | Path) -> Path:
    """The fp32 segment graph as the quantizer wants it (weights folded into initializers)."""
    model = onnx.load(str(src))
    fold_weight_transposes(model)
    onnx.save(model, str(dst))
    return Path(dst)


@contextlib.contextmanager
def _quiet_ort_quant():
    log = logging.getLogger()
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def quantize_graph(fp32: str | Path, out: str | Path, settings: QuantSettings, ranges: str | Path | None = None,
                   nodes_to_exclude: Sequence[str] = (), method: Any = None) -> Path:
    """Quantize the prepared fp32 graph with these settings (static: from the cached `ranges`)."""
    out = Path(out)
    with _quiet_ort_quant():
        if settings.mode == "dynamic":
            quantize_dynamic(str(fp32), str(out), op_types_to_quantize=list(settings.op_types),
                             per_channel=settings.per_channel, weight_type=getattr(QuantType, settings.weight_type),
                             nodes_to_exclude=list(nodes_to_exclude), extra_options=dict(settings.extra_options))
        else:
            extra = dict(settings.extra_options)
            if not settings.output_quant:
                extra.setdefault("OpTypesToExcludeOutputQuantization", list(settings.op_types))
            quantize_static(str(fp32), str(out), None, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(settings.op_types), per_channel=settings.per_channel,
                            activation_type=getattr(QuantType, settings.activation_type),
                            weight_type=getattr(QuantType, settings.weight_type),
                            nodes_to_exclude=list(nodes_to_exclude), calibrate_method=method,
                            extra_options=extra, calibration_cache_path=str(ranges))
    model = onnx.load(str(out))
    set_metadata(model, {"hrm_edge.dtype": "int8", "hrm_edge.int8_target": settings.target})
    onnx.save(model, str(out))
    with contextlib.suppress(Exception):
        check_graph(out)
    return out

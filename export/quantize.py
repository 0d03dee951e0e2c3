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


def swiglu_pairs(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """The SwiGLU blocks of the graph: for each down_proj weight, its gate_up weight and every
    down_proj MatMul that uses it (activation input names). Found from the weight names."""
    inits = {t.name for t in model.graph.initializer}
    pairs: dict[str, dict[str, Any]] = {}
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = node.input[1]
        if ".mlp.down_proj.weight" in w:
            gu = w.replace(".mlp.down_proj.weight", ".mlp.gate_up_proj.weight")
            if gu in inits:
                entry = pairs.setdefault(w, {"down": w, "gate_up": gu, "inputs": []})
                entry["inputs"].append(node.input[0])
    return list(pairs.values())


def smooth_swiglu(model: onnx.ModelProto, act_absmax: dict[str, np.ndarray], alpha: float = 0.5) -> dict[str, Any]:
    """SmoothQuant for SwiGLU, folded exactly into the weights (no new ops).

    The input of down_proj, silu(gate) * up, has a few channels ~30x larger than the rest (the
    classic SwiGLU outliers), which an 8-bit per-tensor activation scale cannot resolve. Channel j
    is divided by s_j = amax_j^alpha / wmax_j^(1 - alpha) (amax_j: its calibration |max| over every
    call site and ACT step; wmax_j: |max| of down_proj's row j) by scaling column j of the `up`
    half of gate_up_proj by 1/s_j, and down_proj's row j is multiplied by s_j: the fp32 function is
    unchanged (up to rounding). `act_absmax`: down weight name -> per-channel |max| [I]."""
    inits = {t.name: t for t in model.graph.initializer}
    info = {}
    for pair in swiglu_pairs(model):
        amax = act_absmax.get(pair["down"])
        if amax is None:
            continue
        wd = numpy_helper.to_array(inits[pair["down"]]).astype(np.float32)  # [I, D]
        wgu = numpy_helper.to_array(inits[pair["gate_up"]]).astype(np.float32)  # [D, 2I]
        inter = wd.shape[0]
        wmax = np.abs(wd).max(axis=1)
        s = np.power(np.maximum(amax, 1e-5), alpha) / np.power(np.maximum(wmax, 1e-5), 1 - alpha)
        s = np.clip(s, 1e-3, 1e3).astype(np.float32)
        wd = wd * s[:, None]
        wgu[:, inter:] = wgu[:, inter:] / s[None, :]
        inits[pair["down"]].CopyFrom(numpy_helper.from_array(wd, pair["down"]))
        inits[pair["gate_up"]].CopyFrom(numpy_helper.from_array(wgu, pair["gate_up"]))
        info[pair["down"]] = {"max_scale": float(s.max()), "min_scale": float(s.min()),
                              "act_absmax_before": float(amax.max()), "act_absmax_after": float((amax / s).max())}
    return info

"""Accuracy recovery for INT8 segment graphs (draft: sites)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import onnx

_WEIGHT_RE = re.compile(r"model\.inner\.(?:(?P<level>[HL])_level\.layers\.(?P<layer>\d+)\.(?P<block>self_attn|mlp)\."
                        r"(?P<proj>\w+?)|(?P<head>lm_head|q_head))\.weight")


@dataclass
class Site:
    """One quantizable call site (a MatMul/Gemm node) of the segment graph."""

    node: str  # ONNX node name (what nodes_to_exclude takes)
    op: str
    index: int  # position among the sites, in graph order
    label: str  # e.g. "L2.layer1.qkv_proj", "H0.layer0.attn_qk", "lm_head"
    level: str  # "L", "H" or "head"
    call: int  # which call of that level in the segment (L: 0..H_cycles*L_cycles-1, H: 0..H_cycles-1)
    layer: int
    kind: str  # "weight" (x @ W) or "bmm" (activation @ activation: attention scores / values)
    weight: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_sites(model: onnx.ModelProto, op_types: tuple[str, ...] = ("MatMul", "Gemm")) -> list[Site]:
    """Every MatMul/Gemm call site with a readable label (reads the weight names the exporter keeps)."""
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    outputs = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    vocab = outputs.get("logits", [0])[-1]
    sites: list[Site] = []
    seen: dict[str, int] = {}
    level, call, layer = "head", 0, 0
    bmm_in_block = 0
    level_calls = {"L": -1, "H": -1}
    last_layer = {"L": None, "H": None}
    for node in model.graph.node:
        if node.op_type not in op_types:
            continue
        weight = next((i for i in node.input[1:2] if i in inits), None)
        m = _WEIGHT_RE.search(weight or "")
        if m and m.group("level"):
            level, layer, proj = m.group("level"), int(m.group("layer")), m.group("proj")
            if proj == "qkv_proj" and (last_layer[level] is None or layer <= last_layer[level]):
                level_calls[level] += 1  # a new call of this level starts at its first layer's qkv
            if proj == "qkv_proj":
                last_layer[level] = layer
                bmm_in_block = 0
            call = level_calls[level]
            seen[weight] = seen.get(weight, 0) + 1
            label = f"{level}{call}.layer{layer}.{proj}"
            kind = "weight"
        elif m and m.group("head"):
            level, call, layer, label, kind = "head", 0, 0, m.group("head"), "weight"
        elif weight is None:
            label = f"{level}{call}.layer{layer}.attn_{'qk' if bmm_in_block == 0 else 'av'}"
            bmm_in_block += 1
            kind = "bmm"
        elif vocab and inits[weight][-1] == vocab and len(inits[weight]) == 2:
            level, call, layer, label, kind = "head", 0, 0, "lm_head", "weight"  # constant-folded transpose
        else:
            label, kind = f"{node.op_type}:{weight}", "weight"
        sites.append(Site(node.name, node.op_type, len(sites), label, level, call, layer, kind, weight))
    return sites

"""Fake quantization: the arithmetic of hrm-edge's INT8 segment graphs, simulated in PyTorch.

A *site* is one call of a Linear (`CastedLinear`) inside one ACT segment: the same Linear called in
four L cycles is four sites, each with its own activation quantizer, exactly as the INT8 graph
(`hrm_edge.quant.search.find_sites`) numbers them. At a site the INT8 graph computes

    y = dq(q(x)) @ dq(W_q)^T (+ bias)

where, per flavour (`hrm_edge.quant.quantize.settings_for`):
- weights: int8, symmetric, one scale per output channel (zero point 0), GPTQ-rounded by the
  exporter; their dequantized value is what the simulation multiplies with;
- activations, cpu (dynamic, the default): uint8, asymmetric, range computed per call over the
  whole tensor, 0 included (ONNX DynamicQuantizeLinear: scale = (max(0, max x) - min(0, min x)) / 255,
  zero point = round(-min / scale));
- activations with per-row scales (`hrm_edge.quant.row_scales`, cpu and tensorrt): symmetric int8, one
  scale per row (last axis) computed per call: scale = max(max |x|, 1e-12) / 127, zero point 0;
- activations, cpu static: uint8 with calibrated scale and zero point; tensorrt: int8 symmetric
  (zero point 0, levels -128..127) with calibrated scale;
- a site the mixed-precision search keeps in float reads its activation unquantized (its weight may
  still be int8, dequantized at load time).
Rounding is half to even (ONNX QuantizeLinear and `torch.round` alike). Everything else (norms,
softmax, RoPE, the residual stream and the carry) is float in every flavour, as in the graph.

Two ways to build the per-site quantizers (`SiteQuant`):
- `graph_spec(int8_graph, fp32_graph, model)`: read every site's weights, scales and zero points out of
  an exported INT8 graph (SmoothQuant and GPTQ included, since the weights come from the graph):
  the PyTorch forward then equals the ONNX Runtime run of that graph up to float rounding
  (tests/quant/test_fakequant.py states the tolerance);
- `qat_spec(model, flavour, ...)`: quantizers over the model's own (trainable) weights for
  quantization-aware fine-tuning (`hrm_edge.quant.qat`): straight-through estimators, per-channel
  int8 weights computed from the current weight on every call.

`fake_quant(model, spec)` is a context manager that installs the quantizers on the model's Linear
modules (instance-level forward overrides; the model code and its state_dict are untouched) and
removes them on exit.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from hrm_edge.errors import HrmEdgeError
from hrm_edge.model.hrm import CastedLinear
from hrm_edge.quant.row_scales import ROW_EPS, ROW_LEVELS

U8 = (0, 255)
S8 = (-128, 127)
W8 = 127  # symmetric int8 weights use -127..127 (ONNX Runtime's symmetric QInt8 range)


class FakeQuantError(HrmEdgeError):
    """An INT8 graph (or model) this simulation does not know how to read."""


# ----------------------------------------------------------------------------------------------
# quantizers


def _ste(x: torch.Tensor, fq: torch.Tensor) -> torch.Tensor:
    """fq in the forward pass, identity gradient (straight-through estimator)."""
    return x + (fq - x).detach() if x.requires_grad else fq


def dynamic_u8(x: torch.Tensor) -> torch.Tensor:
    """DynamicQuantizeLinear then dequantize: uint8, one range per call over the whole tensor, 0 included."""
    xf = x.detach().float()
    lo, hi = torch.clamp(xf.min(), max=0.0), torch.clamp(xf.max(), min=0.0)
    scale = (hi - lo) / 255.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zp = torch.clamp(torch.round(-lo / scale), *U8)
    q = torch.clamp(torch.round(xf / scale) + zp, *U8)
    return _ste(x, ((q - zp) * scale).to(x.dtype))


def dynamic_row(x: torch.Tensor) -> torch.Tensor:
    """Per-row symmetric int8 then dequantize (`hrm_edge.quant.row_scales`): one scale per row of the
    last axis, computed per call, in the graph's float32 order of operations."""
    xf = x.detach().float()
    floor = torch.clamp(xf.abs().amax(dim=-1, keepdim=True), min=ROW_EPS)
    scale = floor * torch.tensor(1.0 / ROW_LEVELS, dtype=torch.float32, device=xf.device)
    return _ste(x, (torch.round(xf / scale) * scale).to(x.dtype))


def static_quant(x: torch.Tensor, scale: float, zero_point: int, levels: tuple[int, int]) -> torch.Tensor:
    """QuantizeLinear then DequantizeLinear with a fixed scale / zero point and integer range `levels`."""
    q = torch.clamp(torch.round(x.detach().float() / scale) + zero_point, *levels)
    return _ste(x, ((q - zero_point) * scale).to(x.dtype))


def int8_weight(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric int8 weight, dequantized (w: torch layout [out, in])."""
    scale = w.detach().abs().amax(dim=1, keepdim=True) / W8
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return _ste(w, torch.clamp(torch.round(w.detach() / scale), -W8, W8) * scale)


@dataclass
class ActQuant:
    """The activation quantizer of one site: "dynamic" (uint8 per call), "row" (int8, one scale per row
    and call) or "static" (scale, zero point, levels)."""

    kind: str
    scale: float = 1.0
    zero_point: int = 0
    levels: tuple[int, int] = U8

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "dynamic":
            return dynamic_u8(x)
        if self.kind == "row":
            return dynamic_row(x)
        return static_quant(x, self.scale, self.zero_point, self.levels)


@dataclass
class SiteQuant:
    """How one site computes. module: the Linear's name in the model (e.g. "inner.L_level.layers.0.mlp.down_proj");
    call: which call of it within one segment; act: activation quantizer (None: float);
    weight / bias: fixed tensors to use instead of the module's (graph mode; torch layout [out, in]);
    int8_weight: fake-quantize the module's own weight per channel (QAT mode); smooth: SmoothQuant
    divisor [in] (QAT mode: x / s is quantized and multiplies W * s, as the smoothed graph does)."""

    module: str
    call: int
    label: str
    act: ActQuant | None = None
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    int8_weight: bool = False
    smooth: torch.Tensor | None = None

    def forward(self, linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
        w = self.weight if self.weight is not None else linear.weight
        bias = self.bias if self.bias is not None else linear.bias
        if self.smooth is not None:
            s = self.smooth.to(device=x.device, dtype=x.dtype)
            x, w = x / s, w * s.to(w.dtype)
        if self.int8_weight:
            w = int8_weight(w)
        if self.act is not None:
            x = self.act(x)
        w = w.to(device=x.device, dtype=x.dtype)
        return F.linear(x, w, None if bias is None else bias.to(device=x.device, dtype=x.dtype))


# ----------------------------------------------------------------------------------------------
# installing the quantizers


def linear_calls(model: nn.Module) -> dict[str, int]:
    """Calls per segment of every Linear that has a weight, in first-call order (one dry segment, batch 1)."""
    counts: dict[str, int] = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, CastedLinear):
            handles.append(mod.register_forward_pre_hook(
                lambda m, args, _n=name: counts.__setitem__(_n, counts.get(_n, 0) + 1)))
    try:
        with torch.no_grad():
            p = next(model.parameters())
            cfg = model.config
            tokens = torch.zeros(1, cfg.seq_len, dtype=torch.long, device=p.device)
            z_H, z_L = model.initial_carry(1, p.device)
            model.segment(z_H, z_L, tokens, torch.zeros(1, dtype=torch.long, device=p.device))
    finally:
        for h in handles:
            h.remove()
    return counts


@contextlib.contextmanager
def fake_quant(model: nn.Module, spec: Sequence[SiteQuant]) -> Iterator[nn.Module]:
    """Install `spec` on the model's Linear modules for the duration of the block.

    Each module's calls are counted modulo its number of sites, so every segment (`reason` + `heads`)
    visits the sites in graph order; a module without a site computes as usual."""
    modules = dict(model.named_modules())
    by_module: dict[str, list[SiteQuant]] = {}
    for s in sorted(spec, key=lambda s: (s.module, s.call)):
        by_module.setdefault(s.module, []).append(s)
    installed = []
    try:
        for name, sites in by_module.items():
            if name not in modules:
                raise FakeQuantError(f"fake quant: the model has no module {name!r}")
            if [s.call for s in sites] != list(range(len(sites))):
                raise FakeQuantError(f"fake quant: {name} has calls {[s.call for s in sites]}, expected 0..n-1")
            linear = modules[name]
            counter = [0]

            def forward(x: torch.Tensor, _lin: nn.Module = linear, _sites: list[SiteQuant] = sites,
                        _c: list[int] = counter) -> torch.Tensor:
                site = _sites[_c[0] % len(_sites)]
                _c[0] += 1
                return site.forward(_lin, x)

            linear.forward = forward
            installed.append(linear)
        yield model
    finally:
        for linear in installed:
            del linear.forward


# ----------------------------------------------------------------------------------------------
# reading an exported INT8 graph

_LEVEL_RE = re.compile(r"^(?P<level>[LH])\d+\.layer(?P<layer>\d+)\.(?P<proj>\w+)$")


def site_module(model: nn.Module, site: Any) -> str:
    """The model's module name of a graph site (from its weight name, else from its label)."""
    names = {n for n, _ in model.named_modules()}
    if site.weight:
        name = re.sub(r"^model\.", "", re.sub(r"\.weight(__T)?$", "", site.weight))
        if name in names:
            return name
    if site.label in ("lm_head", "q_head"):
        return f"inner.{site.label}"
    m = _LEVEL_RE.match(site.label)
    if m:
        prefix = f"inner.{m['level']}_level.layers.{m['layer']}."
        found = [n for n in names if n.startswith(prefix) and n.endswith(f".{m['proj']}")]
        if len(found) == 1:
            return found[0]
    raise FakeQuantError(f"fake quant: no module for site {site.label} ({site.node})")


_FOLDABLE = ("DequantizeLinear", "Cast", "Mul", "Identity", "Transpose")


class _Graph:
    """Constant folding and producer lookup over an INT8 graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.inits = {t.name: t for t in model.graph.initializer}
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self._memo: dict[str, np.ndarray | None] = {}

    def const(self, name: str) -> np.ndarray | None:
        value = self._const(name)
        self._memo[name] = value
        return value

    def _const(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (initializer, or a dequantizing chain over initializers), else None."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        if name in self._memo:
            return self._memo[name]
        node = self.producer.get(name)
        self._memo[name] = None  # not constant until shown otherwise (also stops cycles)
        if node is None or node.op_type not in _FOLDABLE:
            return None
        ins = [self.const(i) if i else None for i in node.input]
        if any(v is None for v, i in zip(ins, node.input, strict=True) if i):
            return None
        if node.op_type == "DequantizeLinear":
            q, scale = ins[0].astype(np.float32), ins[1].astype(np.float32)
            zp = ins[2].astype(np.float32) if len(ins) > 2 and ins[2] is not None else np.zeros_like(scale)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if scale.ndim == 1 and scale.size > 1:
                shape = [1] * q.ndim
                shape[axis] = -1
                scale, zp = scale.reshape(shape), zp.reshape(shape)
            return (q - zp) * scale
        if node.op_type == "Cast":
            return ins[0].astype(np.float32)
        if node.op_type == "Mul":
            return (ins[0] * ins[1]).astype(np.float32)
        if node.op_type == "Identity":
            return ins[0]
        if node.op_type == "Transpose":
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            return np.transpose(ins[0], perm)
        return None

    def act_quant(self, name: str) -> ActQuant | None:
        """The static quantizer in front of a MatMul input (DequantizeLinear(QuantizeLinear(x))), else None."""
        dq = self.producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in self.inits:
            return None
        q = self.producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            return None
        scale = float(numpy_helper.to_array(self.inits[dq.input[1]]))
        zp_t = self.inits[dq.input[2]]
        zp = numpy_helper.to_array(zp_t)
        levels = S8 if zp.dtype == np.int8 else U8
        return ActQuant("static", scale, int(zp), levels)


def _site_from_node(g: _Graph, node: onnx.NodeProto, site: Any, module: str, call: int) -> SiteQuant:
    if node.op_type in ("MatMul", "Gemm"):
        w = g.const(node.input[1])
        if w is None:
            raise FakeQuantError(f"fake quant: the weight of {site.label} is not a constant")
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0) if node.op_type == "Gemm" else 0
        weight = w if trans_b else w.T
        bias = g.const(node.input[2]) if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
        return SiteQuant(module, call, site.label, g.act_quant(node.input[0]), _tensor(weight), _tensor(bias))
    if node.op_type in ("Add", "Sub"):  # a dynamic site with a bias: Add(Mul(...), bias) | Sub(Mul(...), -bias)
        for i, j in ((0, 1), (1, 0)) if node.op_type == "Add" else ((0, 1),):
            bias = g.const(node.input[j])
            inner = g.producer.get(node.input[i])
            if bias is not None and inner is not None:
                sq = _site_from_node(g, inner, site, module, call)
                sq.bias = _tensor(bias if node.op_type == "Add" else -bias)
                return sq
    if node.op_type == "Mul":  # tensorrt per row: Mul(MatMul|Gemm(DQ(Q(Div(x, s), 1, 0)), W), s)
        for i, j in ((0, 1), (1, 0)):
            mm = g.producer.get(node.input[i])
            dq = g.producer.get(mm.input[0]) if mm is not None and mm.op_type in ("MatMul", "Gemm") else None
            q = g.producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            div = g.producer.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
            if div is not None and div.op_type == "Div" and div.input[1] == node.input[j]:
                sq = _site_from_node(g, mm, site, module, call)
                sq.act = ActQuant("row")
                return sq
    if node.op_type == "Mul":  # dynamic: Mul(Cast(MatMulInteger(DynamicQuantizeLinear(x), Wq)), x_scale * w_scale)
        for i, j in ((0, 1), (1, 0)):
            cast = g.producer.get(node.input[i])
            mm = g.producer.get(cast.input[0]) if cast is not None and cast.op_type == "Cast" else None
            if mm is None or mm.op_type != "MatMulInteger":
                continue
            scales = g.producer.get(node.input[j])
            w_scale = next((g.const(n) for n in (scales.input if scales is not None else []) if g.const(n) is not None),
                           None)
            wq = g.const(mm.input[1])
            if w_scale is None or wq is None:
                break
            wzp = g.const(mm.input[3]) if len(mm.input) > 3 and mm.input[3] else np.zeros(1, np.float32)
            weight = (wq.astype(np.float32) - wzp.astype(np.float32).reshape(1, -1)) * w_scale.reshape(1, -1)
            quantizer = g.producer.get(mm.input[0])
            kind = "row" if quantizer is not None and quantizer.op_type == "QuantizeLinear" else "dynamic"
            return SiteQuant(module, call, site.label, ActQuant(kind), _tensor(weight.T), None)
    raise FakeQuantError(f"fake quant: cannot read site {site.label} ({node.op_type} {node.name})")


def _tensor(a: np.ndarray | None) -> torch.Tensor | None:
    return None if a is None else torch.from_numpy(np.array(a, np.float32))


def graph_spec(int8_graph: onnx.ModelProto, fp32_graph: onnx.ModelProto, model: nn.Module) -> list[SiteQuant]:
    """Per-site quantizers and weights of an exported INT8 segment graph. `fp32_graph`: the prepared
    (weight transposes folded, smoothed) fp32 graph it was quantized from (its node names are the
    sites); `model`: the PyTorch model whose Linear modules the sites map to."""
    from hrm_edge.quant.search import find_sites

    g = _Graph(int8_graph)
    calls: dict[str, int] = {}
    spec = []
    for site in find_sites(fp32_graph):
        if site.kind != "weight":
            continue
        module = site_module(model, site)
        call = calls.get(module, 0)
        calls[module] = call + 1
        node = g.producer.get(site.output)
        if node is None:
            raise FakeQuantError(f"fake quant: the INT8 graph does not produce {site.output!r} ({site.label})")
        spec.append(_site_from_node(g, node, site, module, call))
    expected = linear_calls(model)
    if calls != expected:
        raise FakeQuantError(f"fake quant: graph sites {calls} do not match the model's Linear calls {expected}")
    return spec


def float_share(spec: Sequence[SiteQuant]) -> float:
    """Share of the sites whose activation stays float."""
    return sum(s.act is None for s in spec) / max(1, len(spec))


__all__ = ["S8", "U8", "ActQuant", "FakeQuantError", "SiteQuant", "dynamic_row", "dynamic_u8", "fake_quant",
           "float_share", "graph_spec", "int8_weight", "linear_calls", "site_module", "static_quant"]

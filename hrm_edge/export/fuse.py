"""Fused CPU graphs: rewrite HRM's standard-op ONNX patterns into ONNX Runtime's fast CPU kernels.

The exported graphs (`hrm_edge.export.graphs`) use standard ops only, so they run on TensorRT and
any ONNX runtime; on the ORT CPU EP that portability costs time in what ORT leaves unfused: the
weightless RMSNorm decomposed into six nodes, RoPE as Split/Neg/Concat/Mul/Add on a 4-D view,
attention as Transpose/Reshape/Shape chains around two MatMuls and a Softmax. `fuse_model`
rewrites these patterns into ORT contrib kernels (`com.microsoft` domain, CPU EP; the graph is
no longer portable, so it is written as a separate graph, `segment.fp32-cpufused` in a bundle):

- RMSNorm `norm(x)` -> `SimplifiedLayerNormalization(x, ones)` (ORT registers it in the default
  domain; HRM's norm has no weight: gamma is a ones vector). Pattern: Pow(x, 2) (or Mul(x, x)) ->
  ReduceMean(-1) -> Add(eps) -> Sqrt -> Reciprocal -> Mul(x, .) (or Div(x, Sqrt)). With `skip=True`
  the post-norm residual `norm(a + b)` becomes `SkipSimplifiedLayerNormalization(a, b, ones)`
  instead; the default keeps `Add` + `SimplifiedLayerNormalization` because on ORT 1.32's CPU EP
  that pair is faster (measured at [1, 82, 512], 1 thread: 12 us against 26 us per norm; on the
  27M INT8 segment 4-9% faster end to end), and ORT does not fuse the pair itself.
- Self-attention: from the fused qkv projection's output [B,P,3D] to the attention output
  [B,P,D] (Reshape to [B,P,3H,Dh], Split into q/k/v, RoPE on q and k, Transpose/scale/MatMul/
  Softmax/MatMul/Transpose/Reshape) -> Split(3-D) + `RotaryEmbedding` x 2 (3-D input with
  num_heads, interleaved=0: HRM's rotate_half convention, cat(-x2, x1) with frequencies repeated
  over the two halves; the cos/sin caches are the [P, Dh/2] halves of the exported tables,
  position_ids = [0], an offset, so positions are 0..P-1 at any batch) + `MultiHeadAttention`
  (BSD layout, non-causal, scale from the graph). Without RoPE (learned positions) the same
  rewrite omits the two RotaryEmbedding nodes. A RoPE whose tables are not rotate_half-shaped
  leaves that attention untouched (it is never approximated).
- Constant weight transposes (`Transpose(W)` nodes left by the dynamo exporter) are folded into
  initializers, once per weight (shared by every use, subgraphs included), so a quantizer sees
  MatMul weights as initializers.
- A constant-weight projection whose output is only split on its last axis (qkv, SwiGLU gate|up)
  becomes one MatMul per chunk, so ORT copies nothing through a Split. The same holds after dynamic
  quantization (`Mul(Cast(MatMulInteger(q, Wq)), Mul(a_scale, w_scale))`, per-tensor or per-row
  scales): one MatMulInteger per chunk on the same quantized input, the same integer sums and scales,
  so the outputs are bitwise the same. On the TRM maze demo's all-int8 per-row segment (batch 16,
  ORT 1.32, this 2-core VM, session 18) the 32 gate|up Splits took 17% of the segment (37.6 of
  223 ms, 1 thread); splitting them took the segment from 0.64x to 0.49x the fused fp32 one at 1
  thread, and from 0.82x to 0.69x at 2 threads (one paired run each).

The rewrite is generic over the graph kind: it walks every graph including ONNX `Loop` bodies
(the whole-ACT-loop graph), and K-unrolled graphs simply contain K copies of each pattern.
Apart from the split projections it matches patterns only through non-quantized ops, so it runs
before quantization (every pattern fuses) or after it (norms always fuse, dynamically quantized
projections split; attention fuses only where the quantizer left the attention MatMuls in float,
e.g. `quantize_dynamic` with its default MatMulConstBOnly);
`FuseReport.counts` says what was fused, and the bench records which order it used.

Needs `onnx` and numpy only (no torch).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from hrm_edge.export.onnx_utils import iter_graphs, set_metadata

MS_DOMAIN = "com.microsoft"
FUSED_OPS = ("SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization", "RotaryEmbedding",
             "MultiHeadAttention")
META_KEY = "hrm_edge.fused"


@dataclasses.dataclass
class FuseReport:
    """What `fuse_model` did: counts per rewrite and the contrib-op histogram of the result."""

    counts: dict[str, int]
    fused_ops: dict[str, int]
    nodes_before: int
    nodes_after: int
    skipped: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# graph view


class _View:
    """Producers, consumers and constants of one graph (constants include outer scopes)."""

    def __init__(self, graph: onnx.GraphProto, outer_consts: dict[str, onnx.TensorProto]) -> None:
        self.graph = graph
        self.consts = dict(outer_consts)
        self.consts.update({t.name: t for t in graph.initializer})
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.output:
                if name:
                    self.producer[name] = node
            for name in _node_reads(node):
                self.consumers[name].append(node)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attr in node.attribute:
                    if attr.name == "value":
                        self.consts[node.output[0]] = attr.t
        self.outputs = {v.name for v in graph.output}

    def const(self, name: str) -> np.ndarray | None:
        t = self.consts.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def scalar(self, name: str) -> float | None:
        value = self.const(name)
        if value is None or value.size != 1:
            return None
        return float(value.reshape(-1)[0])

    def prod(self, name: str, op: str | tuple[str, ...]) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        ops = (op,) if isinstance(op, str) else op
        if node is None or node.op_type not in ops or node.domain not in ("", "ai.onnx"):
            return None
        return node

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        if len(users) != 1 or name in self.outputs:
            return None
        return users[0]


def _node_reads(node: onnx.NodeProto) -> Iterator[str]:
    """Every value a node reads: its inputs and the outer-scope names its subgraphs read."""
    yield from (n for n in node.input if n)
    for attr in node.attribute:
        subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in subgraphs:
            yield from _graph_free_reads(g)


def _graph_free_reads(graph: onnx.GraphProto) -> set[str]:
    """Names read inside `graph` (recursively) that it does not define itself."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    reads: set[str] = set()
    for node in graph.node:
        defined.update(o for o in node.output if o)
    for node in graph.node:
        reads.update(n for n in _node_reads(node) if n not in defined)
    reads.update(v.name for v in graph.output if v.name not in defined)
    return reads


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _axes(view: _View, node: onnx.NodeProto) -> list[int] | None:
    """ReduceMean axes from the attribute (opset < 18) or the second input."""
    axes = _attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = view.const(node.input[1])
        axes = None if value is None else value.reshape(-1).tolist()
    return None if axes is None else [int(a) for a in axes]


# ----------------------------------------------------------------------------------------------
# rewrite plumbing


class _Plan:
    """Replacements for one graph: new nodes emitted at an anchor node, nodes removed."""

    def __init__(self) -> None:
        self.insert: dict[int, list[onnx.NodeProto]] = defaultdict(list)
        self.remove: set[int] = set()
        self.rename: dict[str, str] = {}

    def touched(self, nodes: list[onnx.NodeProto]) -> bool:
        return any(id(n) in self.remove for n in nodes)

    def apply(self, graph: onnx.GraphProto) -> None:
        out: list[onnx.NodeProto] = []
        for node in graph.node:
            out.extend(self.insert.get(id(node), []))
            if id(node) not in self.remove:
                out.append(node)
        if self.rename:
            for node in out:
                for i, name in enumerate(node.input):
                    if name in self.rename:
                        node.input[i] = self.rename[name]
        del graph.node[:]
        graph.node.extend(out)


class _Builder:
    """Creates unique value/node names and shared initializers in the main graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.main = model.graph
        self.names: set[str] = set()
        for g in iter_graphs(model.graph):
            self.names.update(v.name for v in (*g.input, *g.output, *g.value_info))
            self.names.update(t.name for t in g.initializer)
            for node in g.node:
                self.names.update(node.output)
                self.names.add(node.name)
        self._shared: dict[tuple[int, tuple[int, ...], str], str] = {}
        self.counter = Counter()

    def fresh(self, stem: str) -> str:
        while True:
            self.counter[stem] += 1
            name = f"fuse/{stem}_{self.counter[stem]}"
            if name not in self.names:
                self.names.add(name)
                return name

    def shared_const(self, stem: str, value: np.ndarray) -> str:
        """An initializer of the main graph holding `value`, created once per distinct value."""
        value = np.ascontiguousarray(value)
        key = (value.dtype.num, value.shape, hashlib.sha256(value.tobytes()).hexdigest())
        if key not in self._shared:
            name = self.fresh(stem)
            self.main.initializer.append(numpy_helper.from_array(value, name))
            self._shared[key] = name
        return self._shared[key]


def _dce(model: onnx.ModelProto) -> int:
    """Drop nodes whose outputs nobody reads (all graphs), then unused main-graph initializers."""
    removed = 0
    changed = True
    while changed:
        changed = False
        for g in iter_graphs(model.graph):
            reads: set[str] = {v.name for v in g.output}
            for node in g.node:
                reads.update(_node_reads(node))
            keep = [n for n in g.node if any(o in reads for o in n.output if o) or not any(n.output)]
            if len(keep) != len(g.node):
                removed += len(g.node) - len(keep)
                del g.node[:]
                g.node.extend(keep)
                changed = True
    used: set[str] = set()
    for g in iter_graphs(model.graph):
        used.update(v.name for v in g.output)
        for node in g.node:
            used.update(_node_reads(node))
    inits = [t for t in model.graph.initializer if t.name in used]
    if len(inits) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(inits)
    for g in iter_graphs(model.graph):  # value_info of removed values would only confuse readers
        known = {o for n in g.node for o in n.output} | {v.name for v in (*g.input, *g.output)}
        vi = [v for v in g.value_info if v.name in known]
        del g.value_info[:]
        g.value_info.extend(vi)
    return removed


def _walk_graphs(model: onnx.ModelProto) -> Iterator[tuple[onnx.GraphProto, dict[str, onnx.TensorProto]]]:
    """Every graph with the constants visible from outer scopes (main-graph initializers)."""
    outer = {t.name: t for t in model.graph.initializer}
    for g in iter_graphs(model.graph):
        yield g, ({} if g is model.graph else outer)


# ----------------------------------------------------------------------------------------------
# pass 1: constant weight transposes


def _fold_transposes(model: onnx.ModelProto, b: _Builder) -> int:
    folded = 0
    cache: dict[tuple[str, tuple[int, ...]], str] = {}
    for g, outer in _walk_graphs(model):
        view = _View(g, outer)
        plan = _Plan()
        for node in g.node:
            if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx") or node.input[0] not in view.consts:
                continue
            perm = tuple(int(p) for p in _attr(node, "perm", ()) or ())
            key = (node.input[0], perm)
            if key not in cache:
                w = view.const(node.input[0])
                wt = np.transpose(w, perm or None)
                cache[key] = b.shared_const(node.input[0].rsplit("/", 1)[-1] + ".T", wt)
            plan.remove.add(id(node))
            plan.rename[node.output[0]] = cache[key]
            folded += 1
        if plan.remove:
            plan.apply(g)
            for sub in iter_graphs(g):
                if sub is not g:
                    _rename_reads(sub, plan.rename)
            _rename_outputs(g, plan.rename, b)
    return folded


def _rename_reads(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in mapping:
                node.input[i] = mapping[name]


def _rename_outputs(graph: onnx.GraphProto, mapping: dict[str, str], b: _Builder) -> None:
    """A graph output that was a folded value: keep the output name with an Identity."""
    for out in graph.output:
        if out.name in mapping:
            graph.node.append(helper.make_node("Identity", [mapping[out.name]], [out.name], name=b.fresh("identity")))


# ----------------------------------------------------------------------------------------------
# pass 2: RMSNorm


def _match_rmsnorm(view: _View, final: onnx.NodeProto) -> tuple[str, float, list[onnx.NodeProto]] | None:
    """final = Mul(x, Reciprocal(Sqrt(Add(ReduceMean(Pow(x, 2), -1), eps)))) or Div(x, Sqrt(...)).
    Returns (x, eps, pattern nodes)."""
    if final.op_type == "Mul" and final.domain in ("", "ai.onnx"):
        for i in (0, 1):
            x, r = final.input[i], final.input[1 - i]
            recip = view.prod(r, "Reciprocal")
            if recip is None:
                continue
            sqrt = view.prod(recip.input[0], "Sqrt")
            found = _rms_tail(view, x, sqrt)
            if found is not None:
                return found[0], found[1], [final, recip, *found[2]]
        return None
    if final.op_type == "Div" and final.domain in ("", "ai.onnx"):
        sqrt = view.prod(final.input[1], "Sqrt")
        found = _rms_tail(view, final.input[0], sqrt)
        if found is not None:
            return found[0], found[1], [final, *found[2]]
    return None


def _rms_tail(view: _View, x: str, sqrt: onnx.NodeProto | None) -> tuple[str, float, list[onnx.NodeProto]] | None:
    if sqrt is None:
        return None
    add = view.prod(sqrt.input[0], "Add")
    if add is None:
        return None
    for j in (0, 1):
        eps = view.scalar(add.input[1 - j])
        mean = view.prod(add.input[j], "ReduceMean")
        if eps is None or mean is None or _axes(view, mean) not in ([-1],) or not _attr(mean, "keepdims", 1):
            continue
        sq = view.prod(mean.input[0], ("Pow", "Mul"))
        if sq is None:
            continue
        if sq.op_type == "Pow" and not (sq.input[0] == x and view.scalar(sq.input[1]) == 2.0):
            continue
        if sq.op_type == "Mul" and not (sq.input[0] == x and sq.input[1] == x):
            continue
        inner = [sqrt, add, mean, sq]
        # the intermediates must feed only this pattern
        if any(len(view.consumers[n.output[0]]) != 1 or n.output[0] in view.outputs for n in inner):
            return None
        return x, eps, inner
    return None


_SAME_WIDTH_OPS = {"Add", "Sub", "Mul", "Div", "Where", "Identity", "Cast", "Relu", "Sigmoid", "Neg", "Sqrt",
                   "Reciprocal", "Pow", "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear",
                   "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "MultiHeadAttention",
                   "RotaryEmbedding", "QuickGelu"}
_WEIGHT_OPS = {"MatMul", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "FusedMatMul"}


def _trace_width(view: _View, name: str, dims: dict[str, int], depth: int = 0) -> int | None:
    """Last-dimension size of `name` where shape inference left it unknown (e.g. inside a Loop body
    whose Reshape targets are outer-scope constants): through element-wise ops to a typed value, or
    from a MatMul's constant weight."""
    if name in dims:
        return dims[name]
    if depth > 64:
        return None
    const = view.const(name)
    if const is not None:
        return int(const.shape[-1]) if const.ndim else 1
    node = view.producer.get(name)
    if node is None:
        return None
    width = None
    if node.op_type in _WEIGHT_OPS and len(node.input) > 1:
        w = view.const(node.input[1])
        width = int(w.shape[-1]) if w is not None and w.ndim >= 1 else None
    elif node.op_type in _SAME_WIDTH_OPS:
        found = [_trace_width(view, i, dims, depth + 1) for i in node.input[:2] if i]
        found = [f for f in found if f]
        width = max(found) if found else None  # broadcasting: the wider operand
    if width is not None:
        dims[name] = width
    return width


def _trace_rank(view: _View, name: str, ranks: dict[str, int], depth: int = 0) -> int | None:
    """Rank of `name` where shape inference left it unknown: through element-wise ops and
    MatMuls with a 2-D constant weight (which keep the rank of their input)."""
    if name in ranks:
        return ranks[name]
    const = view.const(name)
    if const is not None:
        return const.ndim
    node = view.producer.get(name)
    if node is None or depth > 64:
        return None
    rank = None
    if node.op_type in _WEIGHT_OPS | _SAME_WIDTH_OPS and node.input:
        found = [_trace_rank(view, i, ranks, depth + 1) for i in node.input[:2] if i]
        found = [f for f in found if f]
        rank = max(found) if found else None
    if rank is not None:
        ranks[name] = rank
    return rank


def _fuse_rmsnorm(model: onnx.ModelProto, b: _Builder, dims: dict[str, int], skip: bool, report: FuseReport) -> None:
    for g, outer in _walk_graphs(model):
        view = _View(g, outer)
        plan = _Plan()
        for node in list(g.node):
            if id(node) in plan.remove:
                continue
            found = _match_rmsnorm(view, node)
            if found is None:
                continue
            x, eps, nodes = found
            width = dims.get(x) or _trace_width(view, x, dims)
            if width is None:
                report.skipped.append(f"rmsnorm at {node.name or node.output[0]}: unknown hidden size")
                continue
            ones = b.shared_const("rms_ones", np.ones(width, np.float32))
            add = view.prod(x, "Add")
            x_users = [u for u in view.consumers[x] if all(u is not n for n in nodes)]
            if (skip and add is not None and add.input[0] not in view.consts and add.input[1] not in view.consts
                    and dims.get(add.input[0]) == width and dims.get(add.input[1]) == width
                    and not plan.touched([add])):
                outs = [node.output[0], "", "", x if (x_users or x in view.outputs) else ""]
                new = helper.make_node("SkipSimplifiedLayerNormalization", [add.input[0], add.input[1], ones], outs,
                                       name=b.fresh("skip_rmsnorm"), domain=MS_DOMAIN, epsilon=eps)
                plan.insert[id(add)].append(new)
                plan.remove.update(id(n) for n in (add, *nodes))
                report.counts["skip_rmsnorm"] += 1
            else:
                new = helper.make_node("SimplifiedLayerNormalization", [x, ones], [node.output[0]],
                                       name=b.fresh("rmsnorm"), axis=-1, epsilon=eps, stash_type=1)
                plan.insert[id(nodes[-1])].append(new)
                plan.remove.update(id(n) for n in nodes)
                report.counts["rmsnorm"] += 1
        if plan.remove:
            plan.apply(g)


# ----------------------------------------------------------------------------------------------
# pass 3: attention (+ RoPE)


@dataclasses.dataclass
class _Rope:
    source: str  # the 4-D q or k before RoPE
    cos: np.ndarray  # [P, Dh] full table
    sin: np.ndarray


def _match_rope(view: _View, name: str) -> _Rope | None:
    """name = Add(Mul(x, COS), Mul(Concat(Neg(Split(x)[1]), Split(x)[0]), SIN)) -> (x, COS, SIN)."""
    add = view.prod(name, "Add")
    if add is None:
        return None
    for i in (0, 1):
        m1, m2 = view.prod(add.input[i], "Mul"), view.prod(add.input[1 - i], "Mul")
        if m1 is None or m2 is None:
            continue
        for a in (0, 1):
            x, cos_name = m1.input[a], m1.input[1 - a]
            cos = view.const(cos_name)
            if cos is None:
                continue
            for c in (0, 1):
                cat, sin_name = view.prod(m2.input[c], "Concat"), m2.input[1 - c]
                sin = view.const(sin_name)
                if cat is None or sin is None or len(cat.input) != 2 or _attr(cat, "axis") not in (-1, 3):
                    continue
                neg = view.prod(cat.input[0], "Neg")
                split = view.prod(cat.input[1], "Split")
                if neg is None or split is None or split.input[0] != x or len(split.output) != 2:
                    continue
                if split.output[0] != cat.input[1] or neg.input[0] != split.output[1]:
                    continue
                if _attr(split, "axis") not in (-1, 3) or (len(split.input) > 1 and split.input[1]):
                    continue  # equal halves only
                return _Rope(x, cos, sin)
    return None


def _rope_cache(table: np.ndarray, positions: int, head_dim: int) -> np.ndarray | None:
    """[P, Dh/2] from a [P, 1, Dh] (or [1, P, 1, Dh]) rotate_half table whose halves are equal."""
    if table.size != positions * head_dim:
        return None
    t = table.reshape(positions, head_dim).astype(np.float32)
    half = head_dim // 2
    if head_dim % 2 or not np.array_equal(t[:, :half], t[:, half:]):
        return None
    return np.ascontiguousarray(t[:, :half])


def _walk_scale(view: _View, name: str) -> tuple[str, float, list[onnx.NodeProto]]:
    """Skip Mul-by-scalar nodes upwards; returns (name, product of scalars, the Mul nodes)."""
    scale, muls = 1.0, []
    while True:
        mul = view.prod(name, ("Mul", "Div"))
        if mul is None:
            return name, scale, muls
        for i in (1, 0) if mul.op_type == "Mul" else (1,):
            s = view.scalar(mul.input[i])
            if s is not None and mul.input[1 - i] not in view.consts:
                scale = scale * s if mul.op_type == "Mul" else scale / s
                muls.append(mul)
                name = mul.input[1 - i]
                break
        else:
            return name, scale, muls


def _perm(node: onnx.NodeProto | None) -> tuple[int, ...] | None:
    return None if node is None else tuple(int(p) for p in _attr(node, "perm", ()) or ())


def _match_k_transposed(view: _View, name: str) -> tuple[str, float] | None:
    """name = K^T [B,N,Dh,P] built from K [B,P,N,Dh] (BSNH); returns (K, scale)."""
    name, scale, _ = _walk_scale(view, name)
    t = view.prod(name, "Transpose")
    if t is not None and _perm(t) == (0, 2, 3, 1):
        return t.input[0], scale
    if t is not None and _perm(t) == (0, 1, 3, 2):
        inner, s2, _ = _walk_scale(view, t.input[0])
        t2 = view.prod(inner, "Transpose")
        if t2 is not None and _perm(t2) == (0, 2, 1, 3):
            return t2.input[0], scale * s2
        return None
    r1 = view.prod(name, "Reshape")  # dynamo: Reshape(Transpose(Reshape(K_bnsh, [-1,P,Dh]), [0,2,1]), [B,N,Dh,P])
    if r1 is None:
        return None
    inner, s2, _ = _walk_scale(view, r1.input[0])
    t1 = view.prod(inner, "Transpose")
    if t1 is None or _perm(t1) != (0, 2, 1):
        return None
    r0 = view.prod(t1.input[0], "Reshape")
    if r0 is None:
        return None
    inner, s3, _ = _walk_scale(view, r0.input[0])
    t0 = view.prod(inner, "Transpose")
    if t0 is None or _perm(t0) != (0, 2, 1, 3):
        return None
    return t0.input[0], scale * s2 * s3


def _bnsh_source(view: _View, name: str) -> tuple[str, float] | None:
    """name = Transpose(0,2,1,3)(X) possibly scaled; returns (X [B,P,N,Dh], scale)."""
    name, scale, _ = _walk_scale(view, name)
    t = view.prod(name, "Transpose")
    if t is None or _perm(t) != (0, 2, 1, 3):
        return None
    inner, s2, _ = _walk_scale(view, t.input[0])
    return inner, scale * s2


def _fuse_attention(model: onnx.ModelProto, b: _Builder, rope: bool, report: FuseReport) -> None:
    for g, outer in _walk_graphs(model):
        view = _View(g, outer)
        plan = _Plan()
        for softmax in list(g.node):
            if softmax.op_type != "Softmax" or _attr(softmax, "axis", -1) not in (-1, 3):
                continue
            where = softmax.name or softmax.output[0]
            found = _match_attention(view, softmax, rope)
            if isinstance(found, str):
                report.skipped.append(f"attention at {where}: {found}")
                continue
            qkv, heads, head_dim, positions, scale, ropes, reshape, out_node = found
            if plan.touched([reshape, out_node]):
                continue
            width = heads * head_dim
            sizes = b.shared_const("qkv_split", np.array([width] * 3, np.int64))
            q3, k3, v3 = b.fresh("q"), b.fresh("k"), b.fresh("v")
            new = [helper.make_node("Split", [qkv, sizes], [q3, k3, v3], name=b.fresh("qkv_split"), axis=-1)]
            if ropes is not None:
                cos = _rope_cache(ropes[0].cos, positions, head_dim)
                sin = _rope_cache(ropes[0].sin, positions, head_dim)
                cos_k = _rope_cache(ropes[1].cos, positions, head_dim)
                sin_k = _rope_cache(ropes[1].sin, positions, head_dim)
                if any(t is None for t in (cos, sin, cos_k, sin_k)):
                    report.skipped.append(f"attention at {where}: RoPE tables are not rotate_half-shaped")
                    continue
                pos = b.shared_const("rope_offset", np.zeros(1, np.int64))
                names = []
                for src, c, s in ((q3, cos, sin), (k3, cos_k, sin_k)):
                    out = b.fresh("rope")
                    new.append(helper.make_node(
                        "RotaryEmbedding", [src, pos, b.shared_const("rope_cos", c), b.shared_const("rope_sin", s)],
                        [out], name=b.fresh("rotary"), domain=MS_DOMAIN, num_heads=heads, interleaved=0))
                    names.append(out)
                    report.counts["rotary_embedding"] += 1
                q3, k3 = names
            new.append(helper.make_node("MultiHeadAttention", [q3, k3, v3], [out_node.output[0]],
                                        name=b.fresh("mha"), domain=MS_DOMAIN, num_heads=heads, scale=scale))
            plan.insert[id(reshape)].extend(new)
            plan.remove.add(id(out_node))
            report.counts["multi_head_attention"] += 1
        if plan.remove:
            plan.apply(g)


def _match_attention(view: _View, softmax: onnx.NodeProto, rope: bool):
    """Match one attention around `softmax`; returns the rewrite's parameters or a reason string."""
    scores = view.prod(softmax.input[0], "MatMul")
    if scores is None:
        return "softmax input is not a MatMul"
    pv = view.only_consumer(softmax.output[0])
    if pv is None or pv.op_type != "MatMul" or pv.input[0] != softmax.output[0]:
        return "softmax output does not feed one MatMul"
    t_out = view.only_consumer(pv.output[0])
    if t_out is None or t_out.op_type != "Transpose" or _perm(t_out) != (0, 2, 1, 3):
        return "attention output is not transposed back to BSNH"
    out_node = view.only_consumer(t_out.output[0])
    if out_node is None or out_node.op_type != "Reshape":
        return "attention output is not reshaped to [B,P,D]"
    q = _bnsh_source(view, scores.input[0])
    k = _match_k_transposed(view, scores.input[1])
    v = _bnsh_source(view, pv.input[1])
    if q is None or k is None or v is None:
        return "q/k/v layout chain not recognised"
    if v[1] != 1.0:
        return "scaled v"
    scale = q[1] * k[1]
    srcs = [q[0], k[0], v[0]]
    ropes: list[_Rope] | None = None
    rq, rk = _match_rope(view, srcs[0]), _match_rope(view, srcs[1])
    if rq is not None and rk is not None:
        if not rope:
            return "rope fusion disabled"
        ropes = [rq, rk]
        srcs[0], srcs[1] = rq.source, rk.source
    elif rq is not None or rk is not None:
        return "RoPE on only one of q/k"
    split = view.prod(srcs[0], "Split")
    if split is None or len(split.output) != 3 or list(split.output) != [srcs[0], srcs[1], srcs[2]]:
        return "q, k, v are not the outputs 0, 1, 2 of one Split"
    if _attr(split, "axis") not in (2, -2) or (len(split.input) > 1 and split.input[1]):
        return "q/k/v split is not an equal split over the head axis"
    reshape = view.prod(split.input[0], "Reshape")
    if reshape is None:
        return "q/k/v split input is not a Reshape"
    shape = view.const(reshape.input[1])
    if shape is None or shape.size != 4:
        return "qkv reshape target is not a constant 4-D shape"
    _, positions, heads3, head_dim = (int(d) for d in shape.reshape(-1))
    if positions <= 0 or heads3 <= 0 or heads3 % 3 or head_dim <= 0:
        return f"qkv reshape target {shape.tolist()} not understood"
    qkv = reshape.input[0]
    if len(view.consumers[qkv]) != 1:
        return "qkv projection output has other consumers"
    return qkv, heads3 // 3, head_dim, positions, float(scale), ropes, reshape, out_node


# ----------------------------------------------------------------------------------------------
# pass 4: split projections (MatMul -> Split on the last axis becomes one MatMul per chunk)


def _split_sizes(view: _View, split: onnx.NodeProto, width: int, rank: int | None) -> list[int] | None:
    """Chunk widths of a Split on the last axis of a [.., width] value; None for any other Split."""
    axis = int(_attr(split, "axis", 0))
    if rank is None or axis not in (-1, rank - 1):
        return None
    n_out = len(split.output)
    if len(split.input) > 1 and split.input[1]:
        sizes = view.const(split.input[1])
        if sizes is None:
            return None
        sizes = [int(s) for s in sizes.reshape(-1)]
    elif width % n_out == 0:
        sizes = [width // n_out] * n_out
    else:
        return None
    return sizes if sum(sizes) == width else None


def _chunks(sizes: list[int]) -> list[slice]:
    return [slice(a, b) for a, b in itertools.pairwise(np.cumsum([0, *sizes]).tolist())]


def _split_float(view: _View, split: onnx.NodeProto, b: _Builder, ranks: dict[str, int],
                 plan: _Plan) -> bool:
    """Split(MatMul(x, W)) -> one MatMul(x, W[:, chunk]) per output."""
    mm = view.prod(split.input[0], "MatMul")
    if mm is None or mm.input[1] not in view.consts or view.only_consumer(mm.output[0]) is not split:
        return False
    w = view.const(mm.input[1])
    rank = ranks.get(mm.output[0]) or _trace_rank(view, mm.output[0], ranks)
    sizes = None if w is None or w.ndim != 2 else _split_sizes(view, split, w.shape[1], rank)
    if sizes is None:
        return False
    stem = mm.input[1].rsplit("/", 1)[-1]
    for cols, out in zip(_chunks(sizes), split.output, strict=True):
        if out:
            chunk = b.shared_const(f"{stem}.cols{cols.start}", w[:, cols])
            plan.insert[id(mm)].append(helper.make_node("MatMul", [mm.input[0], chunk], [out], name=b.fresh("proj")))
    plan.remove.update((id(mm), id(split)))
    return True


def _split_integer(view: _View, split: onnx.NodeProto, b: _Builder, ranks: dict[str, int],
                   plan: _Plan) -> bool:
    """The same for a dynamically quantized projection, as the INT8 cpu graphs write it:
    Split(Mul(Cast(MatMulInteger(q, Wq, a_zp, w_zp)), Mul(a_scale, w_scale))) -> per output
    Mul(Cast(MatMulInteger(q, Wq[:, chunk], a_zp, w_zp[chunk])), Mul(a_scale, w_scale[chunk])).
    The integer sums and their scaling are the same numbers; ONNX Runtime fuses each chunk into
    MatMulIntegerToFloat as it did the whole projection."""
    out_mul = view.prod(split.input[0], "Mul")
    if out_mul is None or view.only_consumer(out_mul.output[0]) is not split:
        return False
    found = None
    for i in (0, 1):
        cast = view.prod(out_mul.input[i], "Cast")
        scale = view.prod(out_mul.input[1 - i], "Mul")
        if cast is not None and scale is not None:
            found = i, cast, scale
    if found is None:
        return False
    i, cast, scale = found
    mmi = view.prod(cast.input[0], "MatMulInteger")
    if (mmi is None or view.only_consumer(cast.output[0]) is not out_mul
            or view.only_consumer(mmi.output[0]) is not cast or view.only_consumer(scale.output[0]) is not out_mul):
        return False
    w = view.const(mmi.input[1])
    has_zp = len(mmi.input) > 3 and bool(mmi.input[3])
    w_zp = view.const(mmi.input[3]) if has_zp else None
    j = next((k for k in (0, 1) if scale.input[k] in view.consts), None)
    if w is None or w.ndim != 2 or j is None or (has_zp and w_zp is None):
        return False
    w_scale = view.const(scale.input[j])
    rank = ranks.get(mmi.output[0]) or _trace_rank(view, mmi.output[0], ranks)
    sizes = _split_sizes(view, split, w.shape[1], rank)
    if sizes is None or any(v is not None and v.size not in (1, w.shape[1]) for v in (w_scale, w_zp)):
        return False
    stem = mmi.input[1].rsplit("/", 1)[-1]
    for cols, out in zip(_chunks(sizes), split.output, strict=True):
        if not out:
            continue
        inputs = [mmi.input[0], b.shared_const(f"{stem}.cols{cols.start}", w[:, cols]), *mmi.input[2:3]]
        if w_zp is not None:
            inputs.append(b.shared_const(f"{stem}.zp{cols.start}", w_zp if w_zp.size == 1 else w_zp.reshape(-1)[cols]))
        piece = [b.fresh("iproj") for _ in range(4)]
        scale_inputs = list(scale.input)
        if w_scale.size != 1:
            scale_inputs[j] = b.shared_const(f"{stem}.scale{cols.start}", w_scale.reshape(-1)[cols])
        mul_inputs = [piece[1], piece[2]] if i == 0 else [piece[2], piece[1]]
        plan.insert[id(out_mul)].extend([
            helper.make_node("MatMulInteger", inputs, [piece[0]], name=piece[0]),
            helper.make_node("Cast", [piece[0]], [piece[1]], name=piece[1], to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", scale_inputs, [piece[2]], name=piece[2]),
            helper.make_node("Mul", mul_inputs, [out], name=piece[3]),
        ])
    plan.remove.update((id(mmi), id(cast), id(scale), id(out_mul), id(split)))
    return True


def _split_projections(model: onnx.ModelProto, b: _Builder, ranks: dict[str, int], report: FuseReport) -> None:
    for g, outer in _walk_graphs(model):
        view = _View(g, outer)
        plan = _Plan()
        for split in list(g.node):
            if split.op_type != "Split" or split.domain not in ("", "ai.onnx"):
                continue
            if _split_float(view, split, b, ranks, plan):
                report.counts["split_projections"] += 1
            elif _split_integer(view, split, b, ranks, plan):
                report.counts["split_integer_projections"] += 1
        if plan.remove:
            plan.apply(g)


# ----------------------------------------------------------------------------------------------
# shapes: the hidden width of every value the norm pass needs


def _shapes(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, int]]:
    """(last-dimension size, rank) of every value shape inference types (all graphs)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # contrib ops or odd graphs: fall back to what is declared
        inferred = model
    widths: dict[str, int] = {}
    ranks: dict[str, int] = {}
    for g in iter_graphs(inferred.graph):
        for v in (*g.input, *g.output, *g.value_info):
            if not v.type.tensor_type.HasField("shape"):
                continue
            dims = v.type.tensor_type.shape.dim
            ranks[v.name] = len(dims)
            if dims and dims[-1].HasField("dim_value"):
                widths[v.name] = dims[-1].dim_value
        for t in g.initializer:
            ranks[t.name] = len(t.dims)
            if t.dims:
                widths[t.name] = int(t.dims[-1])
    return widths, ranks


# ----------------------------------------------------------------------------------------------
# public API


def fuse_model(model: onnx.ModelProto, *, rmsnorm: bool = True, skip: bool = False, attention: bool = True,
               rope: bool = True, fold_transposes: bool = True, split_projections: bool = True
               ) -> tuple[onnx.ModelProto, FuseReport]:
    """Return a fused copy of `model` and what was fused (the input proto is not modified).

    rmsnorm / skip: fuse RMSNorm (and, with `skip`, the residual Add into
    SkipSimplifiedLayerNormalization; off by default, slower on ORT 1.32 CPU); attention / rope:
    fuse attention (with RoPE into RotaryEmbedding when `rope`; with `rope=False` an attention
    with RoPE is left unfused); fold_transposes: constant weight
    transposes into initializers; split_projections: a constant-weight MatMul (float, or dynamically
    quantized MatMulInteger) whose output is only split on its last axis (qkv, gate|up) becomes one
    matmul per chunk (no Split copy)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    before = sum(len(g.node) for g in iter_graphs(model.graph))
    report = FuseReport(counts=Counter(), fused_ops={}, nodes_before=before, nodes_after=before)
    b = _Builder(model)
    # shapes of the standard-op graph, inferred before any contrib op (which ONNX shape inference
    # cannot type) exists; Loop bodies carry no value_info of their own, so this is where they get one
    widths, ranks = _shapes(model)
    if fold_transposes:
        report.counts["folded_transposes"] = _fold_transposes(model, b)
    if attention:
        _fuse_attention(model, b, rope, report)
        _dce(model)
    if split_projections:
        _split_projections(model, b, {**ranks, **_shapes(model)[1]}, report)
        _dce(model)
    if rmsnorm:
        _fuse_rmsnorm(model, b, {**widths, **_shapes(model)[0]}, skip, report)
    _dce(model)
    if not any(op.domain == MS_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    ops = Counter(n.op_type for g in iter_graphs(model.graph) for n in g.node if n.op_type in FUSED_OPS)
    report.fused_ops = dict(sorted(ops.items()))
    report.counts = dict(sorted(report.counts.items()))
    report.nodes_after = sum(len(g.node) for g in iter_graphs(model.graph))
    set_metadata(model, {META_KEY: ",".join(f"{k}={v}" for k, v in report.fused_ops.items()) or "none"})
    return model, report


def fuse_graph(path_in: str | Path, path_out: str | Path, **options: bool) -> FuseReport:
    """Fuse the ONNX file `path_in` into `path_out` (see `fuse_model` for the options).

    Works on any hrm-edge graph (segment, segment taking x, K-unrolled, ACT Loop), in fp32 and
    before or after quantization. The result needs the ONNX Runtime CPU EP (contrib ops), so it
    is not checked with `check_graph` (which allows standard ops only)."""
    model = onnx.load(str(path_in))
    fused, report = fuse_model(model, **options)
    path_out = Path(path_out)
    path_out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(fused, str(path_out))
    return report


def count_fused_ops(model: onnx.ModelProto | str | Path) -> dict[str, int]:
    """Histogram of the contrib/fused op types (`FUSED_OPS`) in a model, subgraphs included."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    ops = Counter(n.op_type for g in iter_graphs(proto.graph) for n in g.node if n.op_type in FUSED_OPS)
    return dict(sorted(ops.items()))


__all__ = ["FUSED_OPS", "FuseReport", "count_fused_ops", "fuse_graph", "fuse_model"]

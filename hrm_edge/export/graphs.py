"""Build the ONNX graphs hrm-edge deploys from an `HRM`: segment, embed, K-unrolled and ACT `Loop`.

Any model with HRM's driving interface works (`embed`, `reason`, `heads`, `initial_carry`,
`inner.H_init/L_init`, `config`): the TRM family exports through the same functions.

Graphs (B = batch, the only dynamic dimension, named "batch"; S, P, D, V static):

- segment (`export_segment`): one ACT segment, H/L cycles unrolled.
  tokens int64 [B,S], puzzle_ids int64 [B], z_H, z_L float32 [B,P,D]
  -> z_H_out, z_L_out float32 [B,P,D], logits float32 [B,S,V], q_halt, q_continue float32 [B].
  With `embed_inside=False` the input is x float32 [B,P,D] (the input embedding) instead of
  tokens/puzzle_ids, and `export_embed` writes the graph tokens, puzzle_ids -> x, so a runtime
  embeds once per batch instead of once per segment.
- K-unrolled (`export_unrolled`): K segments in one graph, for runtimes that pay a launch or
  host round trip per graph call. Inputs: the segment inputs plus halted bool [B] (rows whose
  carry passes through unchanged). Outputs: z_H_out, z_L_out after the K segments, logits
  [B,S,V] of the last segment only, q_halt, q_continue [K,B] and preds int64 [K,B,S] (argmax
  of every segment). Per-segment argmax instead of [K,B,S,V] logits keeps the output small
  and is all a halting decision inside the chunk needs; q/preds of halted rows are not meaningful.
- ACT loop (`export_act_loop`): the whole ACT loop as one ONNX `Loop`, carry initialised in the
  graph from H_init/L_init. Inputs: tokens, puzzle_ids, max_steps int64 [], halt_mode int64 []
  (0 fixed, 1 q: q_halt > q_continue, 2 threshold: q_halt >= threshold), threshold float32 []
  (a logit: log(p / (1 - p)) for the policy `threshold:p`). Outputs at each puzzle's halting
  step: preds int64 [B,S], steps int64 [B], q_halt, q_continue float32 [B]. The loop runs
  while some sample is still running; halted rows are masked with `Where` so that they never
  change again: an extra iteration (TensorRT EP runs Loops one iteration too many,
  onnxruntime#13894) is harmless, and every sample halts by `step >= max_steps`. The body
  recomputes the embedding per iteration (a gather and a scale) unless the loop is composed from
  a segment graph taking x, whose embed graph then runs once before the loop.

The K-unrolled and Loop graphs are composed with `onnx.helper` from one exported segment graph
(`compose_unrolled`, `compose_act_loop`; these need onnx only), so the weights are stored once
and every composition runs exactly the segment graph's arithmetic.

Exporter: `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript). Measured against the
TorchScript exporter (`dynamo=False`) on the seeded sudoku-27m segment graph (torch 2.13, 2 busy
CPU cores): export 22 s vs 7 s; ORT CPU max-abs error vs `HRM.segment` 5e-6 for both. Dynamo is
chosen because (1) its graph is static except the batch: 1,372 nodes, no shape arithmetic, where
TorchScript emits 3,406 nodes (1,016 Constant, a Shape/Gather/Concat chain for every `view`) and
leaves the P/S dims of the outputs symbolic; (2) TorchScript stores the RoPE tables once per use
as Constant nodes (+2.3% file); (3) the TorchScript exporter is deprecated since torch 2.9 ("will
be removed"). Its costs: a 3x slower export (a few seconds for the tiny test models) and constant
folding that materialises `Transpose(W)` and the RoPE tables once per use, which
`dedupe_initializers` merges back (27M file: 109.3 MB = 4 bytes/param + buffers + 0.2%); its
per-node debug metadata (stack traces, 2/3 of a small file) is stripped. Token and puzzle ids
must be int64 (int32 puzzle ids give an invalid GatherND with this exporter).

FP16 (`dtype="float16"`): weights and activations in fp16, graph inputs/outputs stay fp32 (cast
at the boundary, lossless for the carry, so a host ACT loop is dtype-agnostic). RMSNorm and the
RoPE product run in fp32 as in `HRM` (the graph casts in and out); attention Softmax is moved to
fp32 by `softmax_to_fp32`; MatMuls and the residual stream are fp16. Tolerance versus the fp32
`HRM.segment`, one segment: max-abs <= 2e-2 in logits and carry (values are O(1), the carry is
RMS-normed); measured 4e-3 on the tiny test models and 8e-3 (logits) / 1.2e-2 (z_H) on the
seeded 27M model, ORT CPU.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from hrm_edge.contract import (  # re-exported: the exporter uses the contract's names
    BATCH,
    EMBED_INPUTS,
    EMBED_OUTPUTS,
    HALT_MODES,
    LOOP_INPUTS,
    LOOP_OUTPUTS,
    META_PREFIX,
    SEGMENT_INPUTS,
    SEGMENT_OUTPUTS,
    SEGMENT_X_INPUTS,
    UNROLLED_OUTPUTS,
)
from hrm_edge.export.onnx_utils import (
    MAX_OPSET,
    MIN_OPSET,
    check_graph,
    dedupe_initializers,
    default_opset,
    inline_graph,
    set_io_shape,
    set_metadata,
    softmax_to_fp32,
    strip_debug_info,
)
from hrm_edge.model.hrm import HRM

DTYPES = ("float32", "float16")

_FLOAT, _INT64, _BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


# ----------------------------------------------------------------------------------------------
# torch side: wrappers and the exporter call


class _SegmentGraph(nn.Module):
    def __init__(self, model: HRM) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, puzzle_ids: torch.Tensor, z_H: torch.Tensor, z_L: torch.Tensor):
        x = self.model.embed(tokens, puzzle_ids)
        return _reason_heads(self.model, x, z_H, z_L)


class _SegmentXGraph(nn.Module):
    def __init__(self, model: HRM) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, z_H: torch.Tensor, z_L: torch.Tensor):
        return _reason_heads(self.model, x.to(self.model.compute_dtype), z_H, z_L)


class _EmbedGraph(nn.Module):
    def __init__(self, model: HRM) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, puzzle_ids: torch.Tensor):
        return self.model.embed(tokens, puzzle_ids).float()


def _reason_heads(model: HRM, x: torch.Tensor, z_H: torch.Tensor, z_L: torch.Tensor):
    dt = model.compute_dtype
    z_H, z_L = model.reason(z_H.to(dt), z_L.to(dt), x)
    logits, q_halt, q_continue = model.heads(z_H)
    return z_H.float(), z_L.float(), logits.float(), q_halt.float(), q_continue.float()


def _export_copy(model: HRM, dtype: str) -> HRM:
    """A CPU eval copy of `model` for export: fp32, or fp16 parameters and puzzle embeddings with
    the fp32 RoPE tables kept (the caller's model is never modified)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    clone = copy.deepcopy(model).cpu().float().eval().requires_grad_(False)
    if dtype == "float16":
        for param in clone.parameters():
            param.data = param.data.half()
        if hasattr(clone.inner, "puzzle_emb"):
            clone.inner.puzzle_emb.weights = clone.inner.puzzle_emb.weights.half()
    return clone.set_compute_dtype(dtype)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the dynamo exporter's warnings and log lines (torchvision missing, deprecations)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "torch.fx")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be in {MIN_OPSET}..{MAX_OPSET} (TensorRT 10.3 parses up to {MAX_OPSET}), "
                         f"got {opset}")


def _torch_export(module: nn.Module, args: tuple[torch.Tensor, ...], input_names: tuple[str, ...],
                  output_names: tuple[str, ...], opset: int) -> onnx.ModelProto:
    """Run the dynamo exporter with the batch (dim 0 of every input) dynamic; returns the proto."""
    batch = torch.export.Dim(BATCH, min=1)
    dynamic_shapes = {name: {0: batch} for name in input_names}
    with _quiet_exporter():
        program = torch.onnx.export(module.eval(), args, None, dynamo=True, opset_version=opset,
                                    input_names=list(input_names), output_names=list(output_names),
                                    dynamic_shapes=dynamic_shapes, optimize=True, verbose=False, report=False)
    return program.model_proto


def _example_inputs(model: HRM, batch: int = 2) -> dict[str, torch.Tensor]:
    cfg = model.config
    gen = torch.Generator().manual_seed(0)
    z_H, z_L = model.initial_carry(batch)
    return {
        "tokens": torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len), generator=gen, dtype=torch.int64),
        "puzzle_ids": torch.zeros(batch, dtype=torch.int64),
        "x": torch.randn(batch, cfg.total_len, cfg.hidden_size, generator=gen),
        "z_H": z_H.float(), "z_L": z_L.float(),
    }


def _io_shapes(model: HRM) -> dict[str, list[int | str]]:
    cfg = model.config
    carry = [BATCH, cfg.total_len, cfg.hidden_size]
    return {"tokens": [BATCH, cfg.seq_len], "puzzle_ids": [BATCH], "x": carry, "z_H": carry, "z_L": carry,
            "z_H_out": carry, "z_L_out": carry, "logits": [BATCH, cfg.seq_len, cfg.vocab_size],
            "q_halt": [BATCH], "q_continue": [BATCH], "preds": [BATCH, cfg.seq_len], "steps": [BATCH],
            "max_steps": [], "halt_mode": [], "threshold": []}


def _base_metadata(model: HRM, kind: str, dtype: str) -> dict[str, object]:
    cfg = model.config
    return {"graph": kind, "dtype": dtype, "seq_len": cfg.seq_len, "total_len": cfg.total_len,
            "hidden_size": cfg.hidden_size, "vocab_size": cfg.vocab_size, "puzzle_emb_len": cfg.puzzle_emb_len,
            "halt_max_steps": cfg.halt_max_steps, "exporter": f"torch {torch.__version__} dynamo"}


def _finalize(proto: onnx.ModelProto, shapes: Mapping[str, list[int | str]], fp16: bool,
              metadata: Mapping[str, object]) -> onnx.ModelProto:
    """Inline functions, fp32 softmax (fp16), dedupe weights, pin the I/O shapes, metadata, check."""
    if proto.functions:
        from onnx import inliner

        proto = inliner.inline_local_functions(proto)
    strip_debug_info(proto)
    if fp16:
        softmax_to_fp32(proto)
    dedupe_initializers(proto)
    for value in (*proto.graph.input, *proto.graph.output):
        if value.name in shapes:
            set_io_shape(value, shapes[value.name])
    set_metadata(proto, {META_PREFIX + k: v for k, v in metadata.items()})
    proto.producer_name, proto.producer_version = "hrm-edge", _version()
    check_graph(proto)
    return proto


def _version() -> str:
    from hrm_edge import __version__
    return __version__


def _save(proto: onnx.ModelProto, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))  # one self-contained file (27M params ~ 110 MB, far below 2 GB)
    return path


# ----------------------------------------------------------------------------------------------
# public: protos (in memory) and files


def segment_proto(model: HRM, opset: int = 18, dtype: str = "float32", embed_inside: bool = True) -> onnx.ModelProto:
    """The segment graph as an in-memory ModelProto (see the module docstring for its I/O)."""
    _check_opset(opset)
    clone = _export_copy(model, dtype)
    ex = _example_inputs(clone)
    if embed_inside:
        module, names = _SegmentGraph(clone), SEGMENT_INPUTS
    else:
        module, names = _SegmentXGraph(clone), SEGMENT_X_INPUTS
    proto = _torch_export(module, tuple(ex[n] for n in names), names, SEGMENT_OUTPUTS, opset)
    meta = {**_base_metadata(clone, "segment", dtype), "embed_inside": int(embed_inside)}
    return _finalize(proto, _io_shapes(clone), dtype == "float16", meta)


def embed_proto(model: HRM, opset: int = 18, dtype: str = "float32") -> onnx.ModelProto:
    """The embedding graph tokens, puzzle_ids -> x float32 [B,P,D] as an in-memory ModelProto."""
    _check_opset(opset)
    clone = _export_copy(model, dtype)
    ex = _example_inputs(clone)
    proto = _torch_export(_EmbedGraph(clone), (ex["tokens"], ex["puzzle_ids"]), EMBED_INPUTS, EMBED_OUTPUTS, opset)
    return _finalize(proto, _io_shapes(clone), dtype == "float16", _base_metadata(clone, "embed", dtype))


def export_segment(model: HRM, path: str | Path, opset: int = 18, dtype: str = "float32",
                   embed_inside: bool = True) -> Path:
    """Write the one-segment graph to `path` (.onnx); returns the path."""
    return _save(segment_proto(model, opset, dtype, embed_inside), path)


def export_embed(model: HRM, path: str | Path, opset: int = 18, dtype: str = "float32") -> Path:
    """Write the embedding graph (for a segment graph exported with `embed_inside=False`)."""
    return _save(embed_proto(model, opset, dtype), path)


def export_initial_carry(model: HRM) -> dict[str, np.ndarray]:
    """{"H_init", "L_init"}: float32 [D] each, the vectors the initial carry broadcasts over [B,P,D]."""
    inner = model.inner
    return {"H_init": inner.H_init.detach().float().cpu().numpy().copy(),
            "L_init": inner.L_init.detach().float().cpu().numpy().copy()}


def export_unrolled(model: HRM, path: str | Path, k: int, opset: int = 18, dtype: str = "float32",
                    embed_inside: bool = True, segment: onnx.ModelProto | str | Path | None = None) -> Path:
    """Write the K-unrolled graph (K segments per call, see the module docstring).

    `segment`: a segment graph already exported from this model (path or proto) to compose from
    instead of exporting again (27M: ~20 s saved); opset, dtype and embed_inside are then its own."""
    seg = _as_proto(segment) if segment is not None else segment_proto(model, opset, dtype, embed_inside)
    return _save(compose_unrolled(seg, k), path)


def export_act_loop(model: HRM, path: str | Path, max_steps: int | None = None, opset: int = 18,
                    dtype: str = "float32", embed_inside: bool = True,
                    segment: onnx.ModelProto | str | Path | None = None,
                    embed: onnx.ModelProto | str | Path | None = None) -> Path:
    """Write the whole-ACT-loop graph, its carry initialised from the model's H_init/L_init.

    `max_steps` is a graph input; the value given here (default: the config's halt_max_steps) is
    only recorded as metadata `hrm_edge.default_max_steps`. `segment` (and `embed`, for a segment
    graph taking x): graphs already exported from this model to compose from, as in `export_unrolled`."""
    carry = export_initial_carry(model)
    seg = _as_proto(segment) if segment is not None else segment_proto(model, opset, dtype, embed_inside)
    takes_x = seg.graph.input[0].name == "x"
    if takes_x and embed is None:
        embed = embed_proto(model, default_opset(seg), _meta(seg).get("dtype", dtype))
    proto = compose_act_loop(seg, carry["H_init"], carry["L_init"], embed=embed if takes_x else None)
    set_metadata(proto, {META_PREFIX + "default_max_steps": max_steps or model.config.halt_max_steps})
    return _save(proto, path)


# ----------------------------------------------------------------------------------------------
# composition (onnx only): K-unrolled and Loop graphs from a segment graph


def _as_proto(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def _meta(proto: onnx.ModelProto) -> dict[str, str]:
    return {p.key[len(META_PREFIX):]: p.value for p in proto.metadata_props if p.key.startswith(META_PREFIX)}


def _io_dims(proto: onnx.ModelProto) -> dict[str, list[int | str]]:
    return {v.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
            for v in (*proto.graph.input, *proto.graph.output)}


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _new_model(graph: onnx.GraphProto, like: onnx.ModelProto, metadata: Mapping[str, object]) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=list(like.opset_import), producer_name="hrm-edge",
                              producer_version=_version())
    model.ir_version = like.ir_version
    set_metadata(model, {p.key: p.value for p in like.metadata_props})
    set_metadata(model, {META_PREFIX + k: v for k, v in metadata.items()})
    return model


def _segment_parts(seg: onnx.ModelProto) -> tuple[bool, dict[str, list[int | str]]]:
    names = [v.name for v in seg.graph.input]
    if tuple(names) not in (SEGMENT_INPUTS, SEGMENT_X_INPUTS):
        raise ValueError(f"not a segment graph: inputs {names}")
    outs = tuple(v.name for v in seg.graph.output)
    if outs != SEGMENT_OUTPUTS:
        raise ValueError(f"not a segment graph: outputs {list(outs)}")
    return tuple(names) == SEGMENT_INPUTS, _io_dims(seg)


def compose_unrolled(segment: onnx.ModelProto | str | Path, k: int) -> onnx.ModelProto:
    """The K-unrolled graph built from a segment graph (weights shared by all K copies)."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    seg = _as_proto(segment)
    embed_inside, dims = _segment_parts(seg)
    g = seg.graph
    seq_len = dims["logits"][1]
    nodes: list[onnx.NodeProto] = [
        helper.make_node("Constant", [], ["axes_12"], value=_const("axes_12", np.array([1, 2], np.int64))),
        helper.make_node("Constant", [], ["axes_0"], value=_const("axes_0", np.array([0], np.int64))),
        helper.make_node("Unsqueeze", ["halted", "axes_12"], ["halted_3d"]),
    ]
    z_H, z_L = "z_H", "z_L"
    qh, qc, preds = [], [], []
    for i in range(k):
        feeds = {v.name: v.name for v in g.input if v.name not in ("z_H", "z_L")}
        feeds.update(z_H=z_H, z_L=z_L)
        body, out = inline_graph(g, f"s{i}/", feeds)
        nodes += body
        last = i == k - 1
        z_H, z_L = ("z_H_out", "z_L_out") if last else (f"z_H_{i}", f"z_L_{i}")
        nodes += [
            helper.make_node("Where", ["halted_3d", "z_H", out["z_H_out"]], [z_H]),
            helper.make_node("Where", ["halted_3d", "z_L", out["z_L_out"]], [z_L]),
            helper.make_node("ArgMax", [out["logits"]], [f"preds_{i}"], axis=-1, keepdims=0),
            helper.make_node("Unsqueeze", [f"preds_{i}", "axes_0"], [f"preds_{i}_1"]),
            helper.make_node("Unsqueeze", [out["q_halt"], "axes_0"], [f"q_halt_{i}"]),
            helper.make_node("Unsqueeze", [out["q_continue"], "axes_0"], [f"q_continue_{i}"]),
        ]
        qh.append(f"q_halt_{i}")
        qc.append(f"q_continue_{i}")
        preds.append(f"preds_{i}_1")
        if last:
            nodes.append(helper.make_node("Identity", [out["logits"]], ["logits"]))
    nodes += [helper.make_node("Concat", qh, ["q_halt"], axis=0),
              helper.make_node("Concat", qc, ["q_continue"], axis=0),
              helper.make_node("Concat", preds, ["preds"], axis=0)]
    inputs = [copy.deepcopy(v) for v in g.input] + [helper.make_tensor_value_info("halted", _BOOL, [BATCH])]
    outputs = [
        helper.make_tensor_value_info("z_H_out", _FLOAT, dims["z_H_out"]),
        helper.make_tensor_value_info("z_L_out", _FLOAT, dims["z_L_out"]),
        helper.make_tensor_value_info("logits", _FLOAT, dims["logits"]),
        helper.make_tensor_value_info("q_halt", _FLOAT, [k, BATCH]),
        helper.make_tensor_value_info("q_continue", _FLOAT, [k, BATCH]),
        helper.make_tensor_value_info("preds", _INT64, [k, BATCH, seq_len]),
    ]
    graph = helper.make_graph(nodes, "hrm_unrolled", inputs, outputs, initializer=list(g.initializer))
    model = _new_model(graph, seg, {"graph": "unrolled", "k": k, "embed_inside": int(embed_inside)})
    check_graph(model)
    return model


def compose_act_loop(segment: onnx.ModelProto | str | Path, h_init: np.ndarray, l_init: np.ndarray,
                     embed: onnx.ModelProto | str | Path | None = None) -> onnx.ModelProto:
    """The whole-ACT-loop graph (ONNX `Loop`) built from a segment graph and the initial carry
    vectors; a segment graph that takes x needs its `embed` graph (inlined before the loop)."""
    seg = _as_proto(segment)
    embed_inside, dims = _segment_parts(seg)
    g = seg.graph
    _, total_len, hidden = dims["z_H"]
    seq_len = dims["tokens"][1] if embed_inside else dims["logits"][1]
    carry_shape = [BATCH, total_len, hidden]
    h_init = np.asarray(h_init, np.float32).reshape(1, 1, hidden)
    l_init = np.asarray(l_init, np.float32).reshape(1, 1, hidden)

    inits = [*g.initializer, _const("H_init", h_init), _const("L_init", l_init),
             _const("carry_tail", np.array([total_len, hidden], np.int64)),
             _const("axes_0", np.array([0], np.int64)),
             _const("axes_1", np.array([1], np.int64)),
             _const("axes_12", np.array([1, 2], np.int64)),
             _const("one", np.array(1, np.int64)),
             _const("zero", np.array(0, np.int64)),
             _const("mode_q", np.array(HALT_MODES["q"], np.int64)),
             _const("mode_threshold", np.array(HALT_MODES["threshold"], np.int64)),
             _const("true", np.array(True))]
    nodes: list[onnx.NodeProto] = []
    outer: dict[str, str] = {"tokens": "tokens", "puzzle_ids": "puzzle_ids"}
    if not embed_inside:
        if embed is None:
            raise ValueError("this segment graph takes x: compose_act_loop needs its embed graph")
        emb = _as_proto(embed)
        init_names = {t.name: f"embed/{t.name}" for t in emb.graph.initializer}
        for t in emb.graph.initializer:
            renamed = onnx.TensorProto()
            renamed.CopyFrom(t)
            renamed.name = init_names[t.name]
            inits.append(renamed)
        emb_nodes, emb_out = inline_graph(emb.graph, "embed/", {"tokens": "tokens", "puzzle_ids": "puzzle_ids"},
                                          initializers=init_names)
        nodes += emb_nodes
        outer = {"x": emb_out["x"]}

    # Initial loop state: carry broadcast from H_init/L_init, nothing halted, zeros elsewhere.
    nodes += [
        helper.make_node("Shape", ["tokens"], ["tokens_shape"]),
        helper.make_node("Gather", ["tokens_shape", "axes_0"], ["batch_1d"], axis=0),
        helper.make_node("Concat", ["batch_1d", "carry_tail"], ["carry_shape"], axis=0),
        helper.make_node("Expand", ["H_init", "carry_shape"], ["z_H_0"]),
        helper.make_node("Expand", ["L_init", "carry_shape"], ["z_L_0"]),
        helper.make_node("ConstantOfShape", ["batch_1d"], ["halted_0"],
                         value=numpy_helper.from_array(np.array([False]))),
        helper.make_node("ConstantOfShape", ["batch_1d"], ["steps_0"],
                         value=numpy_helper.from_array(np.array([0], np.int64))),
        helper.make_node("ConstantOfShape", ["tokens_shape"], ["preds_0"],
                         value=numpy_helper.from_array(np.array([0], np.int64))),
        helper.make_node("ConstantOfShape", ["batch_1d"], ["q_0"],
                         value=numpy_helper.from_array(np.array([0.0], np.float32))),
    ]

    # Loop body: (iter, cond, carried...) -> (cond, carried...). Names are body-local ("b/...").
    feeds = {**outer, "z_H": "b/z_H", "z_L": "b/z_L"}
    seg_nodes, out = inline_graph(g, "b/seg/", feeds)
    body_nodes = [
        *seg_nodes,
        helper.make_node("Not", ["b/halted"], ["b/active"]),
        helper.make_node("Unsqueeze", ["b/active", "axes_12"], ["b/active_3d"]),
        helper.make_node("Unsqueeze", ["b/active", "axes_1"], ["b/active_2d"]),
        helper.make_node("Add", ["b/iter", "one"], ["b/step"]),
        helper.make_node("Where", ["b/active_3d", out["z_H_out"], "b/z_H"], ["b/z_H_next"]),
        helper.make_node("Where", ["b/active_3d", out["z_L_out"], "b/z_L"], ["b/z_L_next"]),
        helper.make_node("ArgMax", [out["logits"]], ["b/argmax"], axis=-1, keepdims=0),
        helper.make_node("Where", ["b/active_2d", "b/argmax", "b/preds"], ["b/preds_next"]),
        helper.make_node("Where", ["b/active", "b/step", "b/steps"], ["b/steps_next"]),
        helper.make_node("Where", ["b/active", out["q_halt"], "b/q_halt"], ["b/q_halt_next"]),
        helper.make_node("Where", ["b/active", out["q_continue"], "b/q_continue"], ["b/q_continue_next"]),
        # halting decision of this segment (masked rows are already halted, so Or keeps them)
        helper.make_node("Equal", ["halt_mode", "mode_q"], ["b/is_q"]),
        helper.make_node("Equal", ["halt_mode", "mode_threshold"], ["b/is_threshold"]),
        helper.make_node("Greater", [out["q_halt"], out["q_continue"]], ["b/q_wants"]),
        helper.make_node("GreaterOrEqual", [out["q_halt"], "threshold"], ["b/threshold_wants"]),
        helper.make_node("And", ["b/is_q", "b/q_wants"], ["b/halt_q"]),
        helper.make_node("And", ["b/is_threshold", "b/threshold_wants"], ["b/halt_threshold"]),
        helper.make_node("GreaterOrEqual", ["b/step", "max_steps"], ["b/at_cap"]),
        helper.make_node("Or", ["b/halt_q", "b/halt_threshold"], ["b/halt_policy"]),
        helper.make_node("Or", ["b/halt_policy", "b/at_cap"], ["b/halt_now"]),
        helper.make_node("Or", ["b/halted", "b/halt_now"], ["b/halted_next"]),
        helper.make_node("Not", ["b/halted_next"], ["b/running"]),
        helper.make_node("Cast", ["b/running"], ["b/running_i"], to=_INT64),
        helper.make_node("ReduceSum", ["b/running_i"], ["b/n_running"], keepdims=0),
        helper.make_node("Greater", ["b/n_running", "zero"], ["b/cond_out"]),
    ]
    state = [("z_H", _FLOAT, carry_shape), ("z_L", _FLOAT, carry_shape), ("halted", _BOOL, [BATCH]),
             ("steps", _INT64, [BATCH]), ("preds", _INT64, [BATCH, seq_len]), ("q_halt", _FLOAT, [BATCH]),
             ("q_continue", _FLOAT, [BATCH])]
    body_inputs = [helper.make_tensor_value_info("b/iter", _INT64, []),
                   helper.make_tensor_value_info("b/cond", _BOOL, [])]
    body_inputs += [helper.make_tensor_value_info(f"b/{n}", t, s) for n, t, s in state]
    body_outputs = [helper.make_tensor_value_info("b/cond_out", _BOOL, [])]
    body_outputs += [helper.make_tensor_value_info(f"b/{n}_next", t, s) for n, t, s in state]
    body = helper.make_graph(body_nodes, "act_segment", body_inputs, body_outputs)

    nodes.append(helper.make_node(
        "Loop", ["max_steps", "true", "z_H_0", "z_L_0", "halted_0", "steps_0", "preds_0", "q_0", "q_0"],
        ["z_H_final", "z_L_final", "halted_final", "steps", "preds", "q_halt", "q_continue"], body=body,
        name="act_loop"))
    inputs = [helper.make_tensor_value_info("tokens", _INT64, [BATCH, seq_len]),
              helper.make_tensor_value_info("puzzle_ids", _INT64, [BATCH]),
              helper.make_tensor_value_info("max_steps", _INT64, []),
              helper.make_tensor_value_info("halt_mode", _INT64, []),
              helper.make_tensor_value_info("threshold", _FLOAT, [])]
    outputs = [helper.make_tensor_value_info("preds", _INT64, [BATCH, seq_len]),
               helper.make_tensor_value_info("steps", _INT64, [BATCH]),
               helper.make_tensor_value_info("q_halt", _FLOAT, [BATCH]),
               helper.make_tensor_value_info("q_continue", _FLOAT, [BATCH])]
    graph = helper.make_graph(nodes, "hrm_act_loop", inputs, outputs, initializer=inits)
    model = _new_model(graph, seg, {"graph": "act_loop", "embed_inside": int(embed_inside),
                                    "halt_modes": ",".join(f"{k}={v}" for k, v in HALT_MODES.items())})
    dedupe_initializers(model)
    check_graph(model)
    return model


__all__ = [
    "DTYPES", "EMBED_INPUTS", "EMBED_OUTPUTS", "HALT_MODES", "LOOP_INPUTS", "LOOP_OUTPUTS", "SEGMENT_INPUTS",
    "SEGMENT_OUTPUTS", "SEGMENT_X_INPUTS", "UNROLLED_OUTPUTS", "compose_act_loop", "compose_unrolled",
    "default_opset", "embed_proto", "export_act_loop", "export_embed", "export_initial_carry", "export_segment",
    "export_unrolled", "segment_proto",
]

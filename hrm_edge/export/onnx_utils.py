"""ONNX graph helpers for export and for the bundle manifest: checks, summaries and graph surgery.

Needs the `onnx` package but never torch, so a manifest can be checked where torch is absent.

- `check_graph(path)`: onnx.checker (full check, i.e. with strict shape inference) plus the
  deployment rules of hrm-edge: opset 18..20 (TensorRT 10.3 parses up to 20) and standard
  ops only (no `com.microsoft` or other custom-domain nodes, subgraphs included).
- `graph_summary(path)`: a JSON-ready dict (opset, op histogram, initializer bytes, inputs and
  outputs with shapes and dtypes, metadata) for the manifest.
- `dedupe_initializers(model)`: the dynamo exporter constant-folds, e.g., `Transpose(W)` once
  per use, so an unrolled recurrence (the same Linear used 4 times per segment) stores the same
  tensor several times; identical initializers (same dtype, shape and bytes) are merged.
- `softmax_to_fp32(model)`: runs every fp16 Softmax in fp32 (Cast in, Cast out).
- `strip_debug_info(model)`: drops the exporter's per-node metadata (stack traces, FX nodes).
- `inline_graph(...)`: copy a graph's nodes into another graph with renamed values; used to
  compose the K-unrolled and the ONNX `Loop` graphs from one exported segment graph.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper, numpy_helper

from hrm_edge.errors import HrmEdgeError

MIN_OPSET = 18
MAX_OPSET = 20  # TensorRT 10.3's ONNX parser


class GraphCheckError(HrmEdgeError, ValueError):
    """An ONNX file that is unreadable, invalid, or breaks hrm-edge's deployment rules."""


def _load(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise GraphCheckError(f"{path}: no such ONNX file")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError, onnx raises its own types
        raise GraphCheckError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and, recursively, every subgraph held in node attributes (Loop, If, Scan bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from iter_graphs(g)


def iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for g in iter_graphs(graph):
        yield from g.node


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default ("" / "ai.onnx") domain."""
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return op.version
    raise GraphCheckError("model imports no default-domain opset")


def check_graph(path: str | Path | onnx.ModelProto, min_opset: int = MIN_OPSET, max_opset: int = MAX_OPSET) -> None:
    """Raise `GraphCheckError` (one line) unless the model passes onnx.checker with strict shape
    inference, uses a default opset in [min_opset, max_opset] and only default-domain ops."""
    where = "model" if isinstance(path, onnx.ModelProto) else str(path)
    model = _load(path)
    try:
        if isinstance(path, onnx.ModelProto):
            onnx.checker.check_model(model, full_check=True)
        else:
            onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GraphCheckError(f"{where}: invalid ONNX graph: {first}") from None
    opset = default_opset(model)
    if not min_opset <= opset <= max_opset:
        raise GraphCheckError(f"{where}: opset {opset} is outside the supported range {min_opset}..{max_opset}")
    custom = sorted({f"{n.domain}::{n.op_type}" for n in iter_nodes(model.graph) if n.domain not in ("", "ai.onnx")})
    if custom:
        raise GraphCheckError(f"{where}: non-standard ops {', '.join(custom)} (contrib/custom domains are not allowed)")
    if model.functions:
        raise GraphCheckError(f"{where}: model-local functions are not allowed (inline them at export)")


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    shape = value.type.tensor_type.shape
    if not value.type.tensor_type.HasField("shape"):
        return None  # type: ignore[return-value]
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in shape.dim]


def _dtype_name(elem_type: int) -> str:
    return helper.tensor_dtype_to_np_dtype(elem_type).name if elem_type else "undefined"


def _io(values: Any) -> list[dict[str, Any]]:
    return [{"name": v.name, "shape": _dims(v), "dtype": _dtype_name(v.type.tensor_type.elem_type)} for v in values]


def initializer_nbytes(tensor: onnx.TensorProto) -> int:
    count = 1
    for d in tensor.dims:
        count *= d
    return count * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def graph_summary(path: str | Path | onnx.ModelProto) -> dict[str, Any]:
    """JSON-ready facts about a model: opset, op histogram (subgraphs included), initializers,
    inputs/outputs (shape entries are ints, dim names such as "batch", or None) and metadata."""
    model = _load(path)
    inits = [t for g in iter_graphs(model.graph) for t in g.initializer]
    ops = Counter(n.op_type for n in iter_nodes(model.graph))
    summary: dict[str, Any] = {
        "ir_version": model.ir_version,
        "opset": default_opset(model),
        "domains": sorted({n.domain or "ai.onnx" for n in iter_nodes(model.graph)}),
        "node_count": sum(ops.values()),
        "op_types": dict(sorted(ops.items())),
        "initializer_count": len(inits),
        "initializer_bytes": sum(initializer_nbytes(t) for t in inits),
        "initializer_dtypes": dict(sorted(Counter(_dtype_name(t.data_type) for t in inits).items())),
        "inputs": _io(model.graph.input),
        "outputs": _io(model.graph.output),
        "metadata": {p.key: p.value for p in model.metadata_props},
    }
    if not isinstance(path, onnx.ModelProto):
        summary["file_bytes"] = Path(path).stat().st_size
    return summary


def _tensor_key(tensor: onnx.TensorProto) -> tuple[int, tuple[int, ...], str]:
    data = numpy_helper.to_array(tensor).tobytes()
    return tensor.data_type, tuple(tensor.dims), hashlib.sha256(data).hexdigest()


def _rename_inputs(graph: onnx.GraphProto, mapping: Mapping[str, str]) -> None:
    """Rename node inputs (and graph outputs) in `graph` and all its subgraphs (outer-scope refs)."""
    for g in iter_graphs(graph):
        for node in g.node:
            for i, name in enumerate(node.input):
                if name in mapping:
                    node.input[i] = mapping[name]
        for out in g.output:
            if out.name in mapping:
                out.name = mapping[out.name]


def dedupe_initializers(model: onnx.ModelProto) -> int:
    """Merge identical initializers (same dtype, shape and bytes) of the main graph, in place;
    references in subgraphs are rewritten too. Returns the number of initializers removed."""
    graph = model.graph
    protected = {v.name for v in graph.input} | {v.name for v in graph.output}
    first: dict[tuple[int, tuple[int, ...], str], str] = {}
    mapping: dict[str, str] = {}
    keep = []
    for tensor in graph.initializer:
        key = _tensor_key(tensor)
        if key in first and tensor.name not in protected:
            mapping[tensor.name] = first[key]
        else:
            first.setdefault(key, tensor.name)
            keep.append(tensor)
    if mapping:
        _rename_inputs(graph, mapping)
        del graph.initializer[:]
        graph.initializer.extend(keep)
        kept_vi = [v for v in graph.value_info if v.name not in mapping]
        del graph.value_info[:]
        graph.value_info.extend(kept_vi)
    return len(mapping)


def strip_debug_info(model: onnx.ModelProto) -> None:
    """Drop per-node metadata and doc strings (the dynamo exporter stores the FX node, class
    hierarchy and Python stack trace of every node: 2/3 of a small model's file, plus local paths)."""
    for g in iter_graphs(model.graph):
        g.doc_string = ""
        for node in g.node:
            node.doc_string = ""
            del node.metadata_props[:]
    model.doc_string = ""


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value of the main graph that shape inference can type."""
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=False)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def softmax_to_fp32(model: onnx.ModelProto) -> int:
    """Wrap every fp16 Softmax of the main graph as Cast(fp32) -> Softmax -> Cast(fp16), in place.
    Returns the number of Softmax nodes changed."""
    types = value_types(model)
    graph = model.graph
    nodes: list[onnx.NodeProto] = []
    changed = 0
    for node in graph.node:
        is_softmax = node.op_type == "Softmax" and node.domain in ("", "ai.onnx")
        if is_softmax and types.get(node.input[0]) == TensorProto.FLOAT16:
            src, dst = node.input[0], node.output[0]
            up, down = f"{dst}__fp32_in", f"{dst}__fp32_out"
            nodes.append(helper.make_node("Cast", [src], [up], to=TensorProto.FLOAT, name=f"{node.name}__cast_in"))
            node.input[0], node.output[0] = up, down
            nodes.append(node)
            nodes.append(helper.make_node("Cast", [down], [dst], to=TensorProto.FLOAT16, name=f"{node.name}__cast_out"))
            changed += 1
        else:
            nodes.append(node)
    if changed:
        del graph.node[:]
        graph.node.extend(nodes)
    return changed


def inline_graph(source: onnx.GraphProto, prefix: str, inputs: Mapping[str, str],
                 initializers: Mapping[str, str] | None = None) -> tuple[list[onnx.NodeProto], dict[str, str]]:
    """Copies of `source`'s nodes with every internal value and node name prefixed by `prefix`.

    `inputs` maps each graph input of `source` to the value that feeds it in the target scope;
    `initializers` maps initializer names of `source` to their names in the target scope (default:
    unchanged, i.e. the caller puts the initializers, shared, into the target or an outer graph).
    Returns (nodes, outputs) where outputs maps each graph output name of `source` to its new name.
    Subgraphs inside `source` are copied unchanged apart from references to renamed values.
    """
    missing = [v.name for v in source.input if v.name not in inputs]
    if missing:
        raise ValueError(f"inline_graph: no value given for input(s) {missing}")
    init_map = dict(initializers) if initializers is not None else {t.name: t.name for t in source.initializer}
    rename: dict[str, str] = {"": ""}
    rename.update({v.name: inputs[v.name] for v in source.input})
    rename.update(init_map)
    nodes = []
    for i, node in enumerate(source.node):
        new = onnx.NodeProto()
        new.CopyFrom(node)
        for j, name in enumerate(new.output):
            rename.setdefault(name, f"{prefix}{name}")
            new.output[j] = rename[name]
        for j, name in enumerate(new.input):
            new.input[j] = rename.get(name, name)
        new.name = f"{prefix}{node.name or node.op_type + str(i)}"
        for attr in new.attribute:  # outer-scope references inside subgraphs of this node
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for g in subgraphs:
                _rename_inputs(g, {k: v for k, v in rename.items() if k and k != v})
        nodes.append(new)
    return nodes, {v.name: rename[v.name] for v in source.output}


def set_io_shape(value: onnx.ValueInfoProto, dims: list[int | str]) -> None:
    """Overwrite the shape of a graph input/output: ints are static, strings named dynamic dims."""
    shape = value.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = int(d)


def set_metadata(model: onnx.ModelProto, items: Mapping[str, Any]) -> None:
    """Set `metadata_props` entries (values stringified), replacing existing keys, in place."""
    props = {p.key: p.value for p in model.metadata_props}
    props.update({k: str(v) for k, v in items.items()})
    del model.metadata_props[:]
    helper.set_model_props(model, props)

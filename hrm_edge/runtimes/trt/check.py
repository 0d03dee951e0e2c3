"""Static TensorRT-compatibility check of an ONNX graph, without TensorRT and without a GPU.

`check_trt(onnx_path, "10.3")` returns a list of `Finding`s (severity error or warning, node
name, op, message); `check_report(...)` adds a one-line `summary()`. What is checked, for the
TensorRT version asked (tables for 10.3 and 10.13 in `ops/`, each naming its source):

- the default-domain opset is within what that TensorRT's ONNX parser documents (10.3: 9..20);
  custom-domain nodes would need plugins;
- every node (subgraphs included) is in the onnx-tensorrt operator table of that version, and its
  data type is one that operator supports there (this is where INT64 paths are caught: e.g.
  MatMul or Softmax on INT64); index/shape inputs are INT32 or INT64; DOUBLE is a warning
  (TensorRT casts it down to FLOAT); UINT8 only as network I/O; INT8/INT4/FP8 only through Q/DQ;
- per-op restrictions kept as data in `ops/rules.json` (constant `axes` inputs, attribute
  values, unsupported outputs) plus Loop and If structure rules;
- QuantizeLinear / DequantizeLinear: at least 2 inputs, zero point absent or all zeros and not
  UINT8, quantized type INT8 (FP8/INT4 warn), scales positive and per-tensor or per-channel;
- graph inputs and outputs: only axis 0 (the batch) may be dynamic;
- no tensor of a type TensorRT does not have (STRING, COMPLEX, UINT16, ...).

Needs the `onnx` package (never torch).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from hrm_edge.errors import HrmEdgeError

# The operator tables and rules, package data of this package (pyproject.toml: package-data), read
# through importlib.resources so they are found in a checkout, an installed wheel or a zip alike.
TABLE_DIR = files("hrm_edge.runtimes.trt") / "ops"
SEVERITIES = ("error", "warning")


class TrtCheckError(HrmEdgeError, ValueError):
    """The check itself cannot run: unreadable graph, unknown TensorRT version, missing onnx package."""


@dataclass(frozen=True)
class Finding:
    """One problem: `severity` "error" (TensorRT would reject or mis-import it) or "warning"."""

    severity: str
    node: str
    op: str
    message: str

    def __str__(self) -> str:
        where = f"{self.node} ({self.op})" if self.op else (self.node or "graph")
        return f"{self.severity}: {where}: {self.message}"


@dataclass
class CheckReport:
    """Findings of one graph against one TensorRT version, with what was looked at."""

    path: str
    trt_version: str
    table_version: str
    findings: list[Finding] = field(default_factory=list)
    opset: int | None = None
    nodes: int = 0
    op_types: int = 0

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        verdict = "OK" if self.ok else "FAIL"
        table = "" if self.table_version == self.trt_version else f" (table {self.table_version})"
        return (f"{self.path}: TensorRT {self.trt_version}{table}: {verdict}, {len(self.errors)} error(s), "
                f"{len(self.warnings)} warning(s); opset {self.opset}, {self.nodes} nodes, {self.op_types} op types")


# --- tables -------------------------------------------------------------------------------------------


def _vtuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.strip().lstrip("v").split(".")[:2])
    except ValueError:
        raise TrtCheckError(f"TensorRT version {version!r} is not of the form MAJOR.MINOR (e.g. 10.3)") from None


def available_versions() -> list[str]:
    """TensorRT versions with an operator table, oldest first."""
    names = [p.name.removeprefix("trt-").removesuffix(".json") for p in TABLE_DIR.iterdir()
             if p.name.startswith("trt-") and p.name.endswith(".json")]
    return sorted(names, key=_vtuple)


@cache
def load_table(version: str) -> dict[str, Any]:
    """The operator table of one TensorRT version (exact table name, e.g. "10.3")."""
    path = TABLE_DIR / f"trt-{version}.json"
    if not path.is_file():
        raise TrtCheckError(f"no operator table for TensorRT {version}; tables: {', '.join(available_versions())}")
    return json.loads(path.read_text())


@cache
def load_rules() -> dict[str, Any]:
    return json.loads((TABLE_DIR / "rules.json").read_text())


def resolve_version(version: str) -> tuple[str, str | None]:
    """(table version to use, note or None). A version between tables uses the newest older table
    (conservative: later releases only add support); one past the newest uses the newest."""
    want = _vtuple(version)
    if len(want) < 2:
        raise TrtCheckError(f"TensorRT version {version!r} is not of the form MAJOR.MINOR (e.g. 10.3)")
    min_trt = _vtuple(load_rules()["min_trt"])
    if want < min_trt:
        raise TrtCheckError(f"TensorRT {version} is not supported: hrm-edge needs TensorRT >= "
                            f"{load_rules()['min_trt']} (strongly typed networks, explicit Q/DQ quantization)")
    tables = available_versions()
    older = [t for t in tables if _vtuple(t) <= want]
    chosen = older[-1] if older else tables[0]
    if _vtuple(chosen) == want:
        return chosen, None
    return chosen, (f"no operator table for TensorRT {version}; checked against the {chosen} table "
                    f"(tables: {', '.join(tables)})")


def _in_range(version: tuple[int, ...], rule: dict[str, Any]) -> bool:
    if "since" in rule and version < _vtuple(rule["since"]):
        return False
    return not ("until" in rule and version > _vtuple(rule["until"]))


# --- graph helpers --------------------------------------------------------------------------------------


def _onnx():
    try:
        import onnx
    except ImportError:
        raise TrtCheckError("check-trt needs the onnx package: pip install onnx") from None
    return onnx


@dataclass
class _Graph:
    """Everything the checks need about one model: types, constants, consumers, nodes in every scope."""

    model: Any
    types: dict[str, int] = field(default_factory=dict)  # tensor name -> onnx elem_type
    shapes: dict[str, list[int | str | None]] = field(default_factory=dict)
    consts: dict[str, Any] = field(default_factory=dict)  # name -> numpy array (initializers, Constant nodes)
    nodes: list[tuple[str, int, Any]] = field(default_factory=list)  # (scope, index, node)
    graph_io: set[str] = field(default_factory=set)
    consumers: dict[str, list[str]] = field(default_factory=dict)  # tensor name -> op types reading it


def _iter_scopes(graph: Any, scope: str = "") -> Iterator[tuple[str, Any]]:
    onnx = _onnx()
    yield scope, graph
    for i, node in enumerate(graph.node):
        for attr in node.attribute:
            label = f"{scope}{node.name or f'{node.op_type}#{i}'}.{attr.name}/"
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _iter_scopes(attr.g, label)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for j, g in enumerate(attr.graphs):
                    yield from _iter_scopes(g, f"{label}{j}/")


def _shape_of(value_info: Any) -> list[int | str | None] | None:
    tt = value_info.type.tensor_type
    if not tt.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


def _analyse(model: Any) -> _Graph:
    onnx = _onnx()
    from onnx import numpy_helper

    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # shape inference is a help, not a requirement
        inferred = model
    g = _Graph(model=inferred)
    for scope, graph in _iter_scopes(inferred.graph):
        for vi in [*graph.input, *graph.output, *graph.value_info]:
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                g.types[vi.name] = vi.type.tensor_type.elem_type
                shape = _shape_of(vi)
                if shape is not None:
                    g.shapes[vi.name] = shape
        for init in graph.initializer:
            g.types[init.name] = init.data_type
            g.shapes[init.name] = list(init.dims)
            try:
                g.consts[init.name] = numpy_helper.to_array(init)
            except Exception:
                g.consts[init.name] = None
        for i, node in enumerate(graph.node):
            g.nodes.append((scope, i, node))
            for name in node.input:
                g.consumers.setdefault(name, []).append(node.op_type)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attr in node.attribute:
                    if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                        g.types[node.output[0]] = attr.t.data_type
                        g.shapes[node.output[0]] = list(attr.t.dims)
                        try:
                            g.consts[node.output[0]] = numpy_helper.to_array(attr.t)
                        except Exception:
                            g.consts[node.output[0]] = None
                    elif attr.name in ("value_int", "value_ints"):
                        g.consts[node.output[0]] = attr.i if attr.name == "value_int" else list(attr.ints)
        # Identity of a constant is a constant for the parser (getWeightsFromIdentityOrConstant).
        for node in graph.node:
            if node.op_type == "Identity" and node.input and node.input[0] in g.consts:
                g.consts[node.output[0]] = g.consts[node.input[0]]
    g.graph_io = {v.name for v in [*inferred.graph.input, *inferred.graph.output]}
    return g


def _type_label(elem_type: int | None) -> str | None:
    if not elem_type:
        return None
    onnx = _onnx()
    name = onnx.TensorProto.DataType.Name(elem_type)
    return load_rules()["onnx_types"].get(name, name)


def _node_label(scope: str, index: int, node: Any) -> str:
    return f"{scope}{node.name or f'{node.op_type}#{index}'}"


def _attr(node: Any, name: str) -> Any:
    onnx = _onnx()
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return None


# --- checks ---------------------------------------------------------------------------------------------


class _Checker:
    def __init__(self, g: _Graph, table: dict[str, Any], version: tuple[int, ...], table_version: str) -> None:
        self.g, self.table, self.version, self.tv = g, table, version, table_version
        self.rules = load_rules()
        self.ops = table["ops"]
        self.findings: list[Finding] = []

    def add(self, severity: str, node: str, op: str, message: str) -> None:
        self.findings.append(Finding(severity, node, op, message))

    def run(self) -> list[Finding]:
        self.check_opset()
        self.check_io()
        for scope, index, node in self.g.nodes:
            self.check_node(_node_label(scope, index, node), node)
        self.check_tensor_types()
        return self.findings

    # graph level

    def check_opset(self) -> None:
        opset = self.table["opset"]
        default = [o.version for o in self.g.model.opset_import if o.domain in ("", "ai.onnx")]
        if not default:
            self.add("error", "", "", "the model imports no default-domain (ai.onnx) opset")
            return
        v = default[0]
        if not opset["min"] <= v <= opset["max"]:
            self.add("error", "", "", f"opset {v} is outside {opset['min']}..{opset['max']}, the range TensorRT "
                                      f"{self.tv}'s ONNX parser supports; re-export with opset <= {opset['max']}")
        for o in self.g.model.opset_import:
            if o.domain not in ("", "ai.onnx", "ai.onnx.ml") and any(
                    n.domain == o.domain for _, _, n in self.g.nodes):
                self.add("warning", "", "", f"custom opset domain {o.domain!r} (version {o.version}): its nodes "
                                            "need TensorRT plugins")

    def check_io(self) -> None:
        """Graph inputs: only axis 0 (the batch) may be dynamic, since the build profile varies only
        that axis. Graph outputs: a dynamic dim must be the inputs' batch symbol (on any axis, e.g.
        [K, batch] stacked outputs); every other dim static."""
        model = self.g.model
        allowed = set(self.table["data_types"])
        quantized = set(self.rules["quantized_types"])
        inits = {i.name for i in model.graph.initializer}
        inputs = [vi for vi in model.graph.input if vi.name not in inits]  # initializers listed as inputs: weights
        batch_symbols = {s[0] for vi in inputs if (s := _shape_of(vi)) and isinstance(s[0], str)}
        for kind, values in (("input", inputs), ("output", list(model.graph.output))):
            for vi in values:
                label = _type_label(vi.type.tensor_type.elem_type) if vi.type.HasField("tensor_type") else None
                if label is None:
                    self.add("error", vi.name, "", f"graph {kind} has no tensor type")
                    continue
                if label in self.rules["cast_down_types"]:
                    self.add("warning", vi.name, "", f"graph {kind} is {label}; TensorRT casts it down to FP32")
                elif label not in allowed:
                    self.add("error", vi.name, "", f"graph {kind} type {label} is not a TensorRT {self.tv} type")
                elif label in quantized:
                    self.add("warning", vi.name, "", f"graph {kind} type {label} is a quantized type; TensorRT "
                                                     "expects quantization inside the graph (Q/DQ)")
                shape = _shape_of(vi)
                if shape is None:
                    self.add("error", vi.name, "", f"graph {kind} has no shape; TensorRT needs the rank and every "
                                                   "non-batch dimension")
                    continue
                for axis, dim in enumerate(shape):
                    if isinstance(dim, int) and dim > 0:
                        continue
                    if kind == "input" and axis == 0:
                        continue
                    if kind == "output" and isinstance(dim, str) and dim in batch_symbols:
                        continue
                    what = repr(dim) if dim is not None else "unknown"
                    self.add("error", vi.name, "", f"graph {kind} dimension {axis} is dynamic ({what}); only the "
                                                   "batch axis may be dynamic, fix it at export")
        if len(batch_symbols) > 1:
            self.add("warning", "", "", f"batch axes use different names {sorted(batch_symbols)}; hrm-edge builds one "
                                        "optimization profile with the same batch for every input")

    def check_tensor_types(self) -> None:
        allowed = set(self.table["data_types"])
        seen: set[str] = set()
        for scope, index, node in self.g.nodes:
            for name in node.output:
                if not name or name in seen or name in self.g.graph_io:
                    continue
                seen.add(name)
                label = _type_label(self.g.types.get(name))
                if label and label not in allowed:
                    self.add("error", _node_label(scope, index, node), node.op_type,
                             f"output {name!r} is {label}, which TensorRT {self.tv} does not support")
        for name, elem in self.g.types.items():
            if name in seen or name in self.g.graph_io or name not in self.g.consts:
                continue
            label = _type_label(elem)
            if label in self.rules["cast_down_types"]:
                self.add("warning", name, "", f"initializer is {label}; TensorRT casts it down to FP32")
            elif label and label not in allowed:
                self.add("error", name, "", f"initializer is {label}, which TensorRT {self.tv} does not support")

    # node level

    def check_node(self, label: str, node: Any) -> None:
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            self.add("error", label, op, f"custom-domain op {node.domain}::{op} needs a TensorRT plugin; "
                                         "hrm-edge graphs use standard ops only")
            return
        entry = self.ops.get(op)
        if entry is None or not entry.get("supported"):
            why = f" ({entry['restrictions']})" if entry and entry.get("restrictions") else ""
            self.add("error", label, op, f"{op} is not supported by TensorRT {self.tv}'s ONNX parser{why}")
            return
        self.check_data_type(label, node, entry)
        self.check_index_inputs(label, node)
        self.check_constant_inputs(label, node)
        self.check_attributes(label, node)
        self.check_outputs(label, node)
        if op in ("QuantizeLinear", "DequantizeLinear"):
            self.check_qdq(label, node)
        elif op == "Loop":
            self.check_loop(label, node)
        elif op == "If":
            self.check_if(label, node)

    def _type_of(self, name: str) -> str | None:
        return _type_label(self.g.types.get(name)) if name else None

    def check_data_type(self, label: str, node: Any, entry: dict[str, Any]) -> None:
        op = node.op_type
        where = self.rules["data_input"].get(op, 0)
        if where == "skip" or op == "DequantizeLinear":  # DQ input types: check_qdq
            return
        names: list[tuple[str, str]] = []
        if where == "output":
            if node.output:
                names.append(("output", node.output[0]))
        elif len(node.input) > where and node.input[where]:
            names.append(("input", node.input[where]))
        if op in ("Cast", "CastLike") and node.output:
            names.append(("output", node.output[0]))
        if op == "QuantizeLinear":
            names = names[:1]  # the output type is the quantized type: checked in check_qdq
        types = entry.get("types", [])
        for role, name in names:
            t = self._type_of(name)
            if t is None:
                continue
            if (op == "Constant" and (t in self.rules["quantized_types"] or t == "UINT8")
                    and set(self.g.consumers.get(name, [])) <= {"QuantizeLinear", "DequantizeLinear"}):
                continue  # quantized weights / zero points feeding Q/DQ: checked in check_qdq
            if t in self.rules["cast_down_types"]:
                self.add("warning", label, op, f"{role} {name!r} is {t}; TensorRT casts it down to FP32")
            elif types and t not in types:
                hint = ""
                if t == "INT64" and "INT32" in types:
                    hint = "; cast to INT32 in the graph"
                elif t in self.rules["quantized_types"]:
                    hint = "; quantized types reach TensorRT only through QuantizeLinear/DequantizeLinear"
                self.add("error", label, op, f"{role} {name!r} is {t}; TensorRT {self.tv} supports {op} for "
                                             f"{', '.join(types)}{hint}")

    def check_index_inputs(self, label: str, node: Any) -> None:
        spec = self.rules["index_inputs"]
        for i in spec["ops"].get(node.op_type, []):
            if i < len(node.input) and node.input[i]:
                t = self._type_of(node.input[i])
                if t is not None and t not in spec["allowed"]:
                    self.add("error", label, node.op_type, f"index/shape input {i} {node.input[i]!r} is {t}; "
                                                           f"TensorRT takes {' or '.join(spec['allowed'])}")

    def check_constant_inputs(self, label: str, node: Any) -> None:
        for rule in self.rules["constant_inputs"]:
            if node.op_type not in rule["ops"] or not _in_range(self.version, rule):
                continue
            i = rule["input"]
            if i < len(node.input) and node.input[i] and node.input[i] not in self.g.consts:
                self.add(rule["severity"], label, node.op_type,
                         f"`{rule['what']}` (input {i}, {node.input[i]!r}) is computed at run time; TensorRT "
                         f"{self.tv} needs it to be a constant initializer")
            if node.op_type == "Dropout" and i < len(node.input) and node.input[i] in self.g.consts:
                import numpy as np

                value = self.g.consts[node.input[i]]
                if value is not None and bool(np.any(np.asarray(value))):
                    self.add("error", label, "Dropout", "training_mode is true; TensorRT runs Dropout in inference "
                                                        "mode only")

    def check_attributes(self, label: str, node: Any) -> None:
        for rule in self.rules["attribute_values"]:
            if rule["op"] != node.op_type:
                continue
            value = _attr(node, rule["attr"])
            if value is None:
                continue
            if isinstance(value, bytes):
                value = value.decode()
            if rule.get("all_ones"):
                if any(int(v) != 1 for v in value):
                    self.add("error", label, node.op_type, f"{rule['attr']}={list(value)} is unsupported: "
                                                           "must be empty or all ones")
            elif value not in rule["allowed"]:
                self.add("error", label, node.op_type, f"{rule['attr']}={value!r} is unsupported; TensorRT "
                                                       f"supports {rule['allowed']}")

    def check_outputs(self, label: str, node: Any) -> None:
        for rule in self.rules["unsupported_outputs"]:
            if rule["op"] != node.op_type:
                continue
            for i in rule["outputs"]:
                if i < len(node.output) and node.output[i]:
                    self.add("error", label, node.op_type, f"output {i} ({node.output[i]!r}) is unsupported; "
                                                           "only the first output may be used")

    def check_qdq(self, label: str, node: Any) -> None:
        import numpy as np

        op = node.op_type
        rules = self.rules["qdq"]
        if len(node.input) < rules["min_inputs"] or not node.input[1]:
            self.add("error", label, op, "needs a scale input (input 1)")
            return
        # The quantized type: the zero point's type, else output_dtype, else UINT8 by the ONNX default.
        zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if op == "QuantizeLinear":
            qtype = self._type_of(zp_name) if zp_name else None
            if qtype is None:
                out_dtype = _attr(node, "output_dtype")
                qtype = _type_label(out_dtype) if out_dtype else None
            if qtype is None and not zp_name:
                self.add("error", label, op, "no zero point: ONNX (and ONNX Runtime) quantize to UINT8 here, "
                                             "TensorRT to INT8; give an INT8 zero point of 0")
                qtype = "INT8"
        else:
            qtype = self._type_of(node.input[0]) or (self._type_of(zp_name) if zp_name else None)
        allowed_q = [t for t in self.rules["quantized_types"] if t in self.table["data_types"]]
        if qtype == "UINT8" or (zp_name and self._type_of(zp_name) == "UINT8"):
            self.add("error", label, op, "UINT8 quantization: TensorRT supports only signed symmetric INT8 "
                                         "(its parser would silently quantize to INT8 instead); export with an "
                                         "INT8 zero point of 0")
        elif qtype is not None and qtype not in allowed_q:
            self.add("error", label, op, f"quantized type {qtype} is not supported; TensorRT {self.tv} quantizes to "
                                         f"{', '.join(allowed_q)}")
        elif qtype is not None and qtype != "INT8":
            self.add("warning", label, op, f"quantized type {qtype}: hrm-edge's INT8 path expects INT8")
        if zp_name:
            zp = self.g.consts.get(zp_name)
            if zp_name not in self.g.consts:
                self.add("warning", label, op, f"zero point {zp_name!r} is computed at run time; TensorRT requires "
                                               "it to be all zeros")
            elif zp is not None and np.any(np.asarray(zp) != 0):
                self.add("error", label, op, f"zero point {zp_name!r} is not zero ({_brief(zp)}); TensorRT only "
                                             "supports symmetric quantization (zero point 0)")
        scale_name = node.input[1]
        scale = self.g.consts.get(scale_name)
        scale_shape = self.g.shapes.get(scale_name)
        if scale is not None:
            s = np.asarray(scale, dtype=np.float64)
            if s.size == 0 or not np.all(s > 0):
                self.add("error", label, op, f"scale {scale_name!r} must be all positive ({_brief(scale)})")
            scale_shape = list(s.shape)
        elif scale_name not in self.g.consts:
            self.add("warning", label, op, f"scale {scale_name!r} is computed at run time; hrm-edge exports "
                                           "constant scales")
        if scale_shape is None:
            return
        if any(not isinstance(d, int) for d in scale_shape):
            self.add("error", label, op, f"scale {scale_name!r} has a dynamic shape; TensorRT needs a static one")
            return
        size = int(np.prod(scale_shape)) if scale_shape else 1
        if zp_name and zp_name in self.g.consts and self.g.consts[zp_name] is not None:
            zsize = int(np.asarray(self.g.consts[zp_name]).size)
            if zsize != size:
                self.add("error", label, op, f"scale has {size} value(s) but the zero point {zsize}; they must match")
        if size == 1:
            return
        data_shape = self.g.shapes.get(node.input[0])
        if len(scale_shape) != 1:
            kind = "block" if data_shape is not None and len(scale_shape) == len(data_shape) else "multi-dimensional"
            self.add("error", label, op, f"{kind} quantization scale of shape {scale_shape}; use a per-tensor or "
                                         "per-channel (1-D, along `axis`) scale for INT8")
            return
        if _attr(node, "block_size"):
            self.add("error", label, op, "block quantization (block_size) is not an INT8 path in TensorRT")
            return
        if data_shape is not None:
            axis = _attr(node, "axis")
            axis = 1 if axis is None else int(axis)
            axis = axis + len(data_shape) if axis < 0 else axis
            if not 0 <= axis < len(data_shape):
                self.add("error", label, op, f"axis {axis} is out of range for rank {len(data_shape)}")
            elif isinstance(data_shape[axis], int) and data_shape[axis] != size:
                self.add("error", label, op, f"per-channel scale has {size} values but the input has "
                                             f"{data_shape[axis]} along axis {axis}")

    def check_loop(self, label: str, node: Any) -> None:
        body = _attr(node, "body")
        if body is None:
            return
        n_carried = max(len(node.input) - 2, 0)
        n_scan = len(body.output) - 1 - n_carried
        trip = node.input[0] if node.input else ""
        if n_scan > 0 and (not trip or trip not in self.g.consts):
            self.add("error", label, "Loop", f"{n_scan} scan output(s) with a trip count that is not a constant; "
                                             "TensorRT needs a static scan output length")
        for k in range(n_carried):
            bin_, bout = body.input[2 + k], body.output[1 + k]
            sin, sout = _shape_of(bin_), _shape_of(bout)
            if sin is None or sout is None or len(sin) != len(sout):
                if sin is not None and sout is not None:
                    self.add("error", label, "Loop", f"carried value {bin_.name!r} changes rank across iterations")
                continue
            for a, b in zip(sin, sout, strict=True):
                if isinstance(a, int) and isinstance(b, int) and a != b:
                    self.add("error", label, "Loop", f"carried value {bin_.name!r} changes shape {sin} -> {sout}; "
                                                     "TensorRT needs the same shape in every iteration")
                    break

    def check_if(self, label: str, node: Any) -> None:
        then_g, else_g = _attr(node, "then_branch"), _attr(node, "else_branch")
        if then_g is None or else_g is None:
            return
        if len(then_g.output) != len(else_g.output):
            self.add("error", label, "If", "the two branches have different numbers of outputs")
            return
        for a, b in zip(then_g.output, else_g.output, strict=True):
            if a.name == b.name:
                self.add("error", label, "If", f"both branches name an output {a.name!r}; TensorRT needs "
                                                "different names")
            sa, sb = _shape_of(a), _shape_of(b)
            if sa is not None and sb is not None and len(sa) != len(sb):
                self.add("error", label, "If", f"branch outputs {a.name!r} and {b.name!r} have ranks {len(sa)} and "
                                               f"{len(sb)}; TensorRT needs the same rank")


def _brief(value: Any) -> str:
    import numpy as np

    a = np.asarray(value).ravel()
    text = ", ".join(f"{v:g}" for v in a[:4])
    return text + (", ..." if a.size > 4 else "")


# --- entry points ---------------------------------------------------------------------------------------


def _load_model(onnx_path: str | Path | Any) -> tuple[Any, str]:
    onnx = _onnx()
    if isinstance(onnx_path, onnx.ModelProto):
        return onnx_path, "model"
    path = Path(onnx_path)
    if not path.is_file():
        raise TrtCheckError(f"{path}: no such ONNX file")
    try:
        return onnx.load(str(path)), str(path)
    except Exception as exc:  # protobuf DecodeError and friends
        raise TrtCheckError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None


def check_report(onnx_path: str | Path | Any, trt_version: str, strict: bool = False) -> CheckReport:
    """Check one ONNX file (or ModelProto) against TensorRT `trt_version` ("10.3", "10.13.2", ...).
    With `strict`, warnings are reported as errors."""
    table_version, note = resolve_version(trt_version)
    model, where = _load_model(onnx_path)
    g = _analyse(model)
    checker = _Checker(g, load_table(table_version), _vtuple(trt_version), table_version)
    findings = checker.run()
    if note:
        findings.insert(0, Finding("warning", "", "", note))
    if strict:
        findings = [Finding("error", f.node, f.op, f.message) for f in findings]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    ops = Counter(n.op_type for _, _, n in g.nodes)
    return CheckReport(path=where, trt_version=trt_version, table_version=table_version, findings=findings,
                       opset=opset, nodes=sum(ops.values()), op_types=len(ops))


def check_trt(onnx_path: str | Path | Any, trt_version: str, strict: bool = False) -> list[Finding]:
    """The findings of `check_report` (empty list: nothing TensorRT `trt_version` would reject)."""
    return check_report(onnx_path, trt_version, strict).findings


def summarize(findings: list[Finding]) -> str:
    """One line: counts by severity."""
    errors = sum(f.severity == "error" for f in findings)
    return f"{'OK' if not errors else 'FAIL'}: {errors} error(s), {len(findings) - errors} warning(s)"

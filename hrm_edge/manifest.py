"""The bundle manifest (`manifest.json`) as typed dataclasses, with its one reader and one writer.

Standard library only (no numpy, no torch). `read_manifest` / `Manifest.from_dict` check every
field's type and allowed values and raise `BundleError` with one line naming the field;
`write_manifest` / `Manifest.to_dict` write the JSON every bundle has had since schema_version 1
(same keys, same order), so bundles exported before this module existed open unchanged.

Shapes of a graph's tensors (`TensorSpec.shape`) hold ints, dimension names ("batch") or None.
Top-level fields that only some commands need (`halting`, `reference`, ...) may be absent: a
TensorRT build needs only the graphs; `need_reference` / `need_halting` name them when missing.

The reader is the first line of a bundle's defence: every size a bundle reader allocates from is
capped (`MAX_*` below) before anything is allocated, and every file name is a plain name inside the
bundle directory (`FILE_NAME`). `manifest_digest` is the bundle's identity: one sha256 over the
canonical JSON of the manifest, which holds every other file's sha256 (`hrm_edge.bundle`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from hrm_edge.contract import GRAPH_KINDS, INT8_TARGETS, PRECISIONS
from hrm_edge.errors import BundleError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
# The detached Ed25519 signature of the manifest digest (`hrm_edge.signing`); not listed in `files`.
SIGNATURE = "manifest.sig"

# Caps, checked by the reader before any reader of a bundle allocates from these fields.
MAX_MANIFEST_BYTES = 64 << 20  # manifest.json itself
MAX_SEGMENTS = 1024  # halting.max_steps, reference.max_steps, graphs[].k (HRM/TRM train with 16)
MAX_DIM = 1 << 20  # one tensor dimension, seq_len, vocab_size, total_len
MAX_RANK = 8  # dimensions of one tensor
MAX_TENSORS = 64  # inputs or outputs of one graph
MAX_GRAPHS = 64
MAX_FILES = 256
MAX_REFERENCE_PUZZLES = 4096
MAX_REFERENCE_BYTES = 1 << 30  # reference.npz's largest array, step_logits fp32 [T, N, S, V]
MAX_PUZZLE_ROWS = 1 << 24  # puzzle_rows: original rows and ids kept
# A file of the bundle: a plain name inside the bundle directory (no path separator, no "..", no
# leading dot, no absolute path), at most 255 characters.
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}")

# `GraphEntry.only_on`: the one runtime a graph runs on. "ort-cpu": ONNX Runtime's CPU execution
# provider only (the graph uses com.microsoft contrib ops; `hrm_edge.export.fuse`).
ORT_CPU = "ort-cpu"
ONLY_ON = (ORT_CPU,)

_SHA256 = re.compile(r"[0-9a-f]{64}")
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
               float: "a number", type(None): "null"}


def _json_type(value: Any) -> str:
    return next((name for t, name in _JSON_TYPES.items() if isinstance(value, t)), type(value).__name__)


class _Fields:
    """Typed reads from one JSON object of a manifest; every failure is a one-line `BundleError`
    that names the field by its path (e.g. `graphs["segment.fp32"].precision`)."""

    def __init__(self, data: Any, where: str, path: str = "") -> None:
        if not isinstance(data, dict):
            what = f"field '{path}'" if path else "the manifest"
            raise BundleError(f"{where}: {what} must be an object, not {_json_type(data)}")
        self.data, self.where, self.path = data, where, path

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, message: str) -> NoReturn:
        raise BundleError(f"{self.where}: field '{self.name(key)}' {message}")

    def typed(self, key: str, types: tuple[type, ...], required: bool) -> Any:
        if key not in self.data or (self.data[key] is None and not required):
            if required:
                raise BundleError(f"{self.where}: missing field '{self.name(key)}'")
            return None
        value = self.data[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            self.fail(key, f"must be {' or '.join(_JSON_TYPES[t] for t in types)}, not {_json_type(value)}")
        return value

    def text(self, key: str, required: bool = True) -> Any:
        return self.typed(key, (str,), required)

    def integer(self, key: str, required: bool = True, minimum: int | None = None, maximum: int | None = None) -> Any:
        value = self.typed(key, (int,), required)
        if value is not None and minimum is not None and value < minimum:
            self.fail(key, f"is {value}, below {minimum}")
        if value is not None and maximum is not None and value > maximum:
            self.fail(key, f"is {value}, above the cap {maximum}")
        return value

    def boolean(self, key: str, required: bool = True) -> Any:
        return self.typed(key, (bool,), required)

    def file_name(self, key: str, required: bool = True) -> Any:
        """A file of the bundle (`FILE_NAME`): a plain name inside the bundle directory."""
        value = self.text(key, required)
        if value is not None:
            check_file_name(value, lambda message: self.fail(key, message))
        return value

    def names(self, key: str, cap: int = MAX_GRAPHS) -> list[str]:
        """An optional list of at most `cap` strings (absent: empty)."""
        value = self.typed(key, (list,), False) or []
        self.capped(key, value, cap)
        if not all(isinstance(v, str) for v in value):
            self.fail(key, "must be a list of strings")
        return value

    def capped(self, key: str, items: Any, cap: int) -> None:
        if items is not None and len(items) > cap:
            self.fail(key, f"has {len(items)} entries, above the cap {cap}")

    def number(self, key: str, required: bool = True) -> Any:
        return self.typed(key, (int, float), required)

    def obj(self, key: str, required: bool = True) -> Any:
        return self.typed(key, (dict,), required)

    def choice(self, key: str, allowed: tuple[str, ...], required: bool = True) -> Any:
        value = self.text(key, required)
        if value is not None and value not in allowed:
            self.fail(key, f"is {value!r}, not one of {', '.join(allowed)}")
        return value

    def sub(self, key: str, required: bool = True) -> _Fields | None:
        value = self.obj(key, required)
        return None if value is None else _Fields(value, self.where, self.name(key))

    def text_map(self, key: str, required: bool = True) -> dict[str, str] | None:
        """An object of strings (name -> text)."""
        value = self.obj(key, required)
        if value is not None:
            for k, v in value.items():
                if not isinstance(v, str):
                    self.fail(key, f"must map names to strings; {k!r} is {_json_type(v)}")
        return value


def check_file_name(name: str, fail: Any) -> None:
    """Call `fail(message)` unless `name` is a plain file name of the bundle (`FILE_NAME`) other than
    the manifest and its signature."""
    if not FILE_NAME.fullmatch(name):
        fail(f"is {name!r}, not a plain file name inside the bundle (letters, digits, '.', '_', '+', '-'; "
             "no path separator, no leading dot)")
    if name in (MANIFEST, SIGNATURE):
        fail(f"is {name!r}, which the bundle never lists")


def canonical_json(data: Any) -> bytes:
    """The canonical form of a JSON value: sorted keys, no whitespace, UTF-8."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def manifest_digest(data: Any) -> str:
    """The bundle's identity, "sha256:<64 hex>": sha256 of the manifest's canonical JSON."""
    return "sha256:" + hashlib.sha256(canonical_json(data)).hexdigest()


# ----------------------------------------------------------------------------------------------
# parts


@dataclass(kw_only=True)
class TensorSpec:
    """One graph input or output: dtype ("float32", "int64", ...) and shape (ints, dim names, None)."""

    dtype: str
    shape: list[int | str | None]

    @classmethod
    def read(cls, data: Any, where: str, path: str) -> TensorSpec:
        f = _Fields(data, where, path)
        shape = f.typed("shape", (list,), True)
        if any(d is not None and (isinstance(d, bool) or not isinstance(d, (int, str))) for d in shape):
            f.fail("shape", f"must hold integers, names or null, not {shape!r}")
        f.capped("shape", shape, MAX_RANK)
        if any(isinstance(d, int) and not 0 <= d <= MAX_DIM for d in shape):
            f.fail("shape", f"has a dimension outside 0..{MAX_DIM}: {shape!r}")
        return cls(dtype=f.text("dtype"), shape=list(shape))


def _read_tensors(f: _Fields, key: str) -> dict[str, TensorSpec]:
    """Inputs or outputs: on disk a list of {name, shape, dtype} (also read: an object name -> {dtype, shape})."""
    value = f.typed(key, (list, dict), False)
    if value is None:
        return {}
    f.capped(key, value, MAX_TENSORS)
    if isinstance(value, dict):
        return {n: TensorSpec.read(v, f.where, f"{f.name(key)}.{n}") for n, v in value.items()}
    out = {}
    for i, item in enumerate(value):
        spec = _Fields(item, f.where, f"{f.name(key)}[{i}]")
        out[spec.text("name")] = TensorSpec.read(item, f.where, spec.path)
    return out


def _write_tensors(tensors: dict[str, TensorSpec]) -> list[dict[str, Any]]:
    return [{"name": n, "shape": list(t.shape), "dtype": t.dtype} for n, t in tensors.items()]


def _without_none(items: dict[str, Any], keep: tuple[str, ...] = ()) -> dict[str, Any]:
    return {k: v for k, v in items.items() if v is not None or k in keep}


@dataclass(kw_only=True)
class GraphEntry:
    """One ONNX graph of a bundle.

    kind: `contract.GRAPH_KINDS`; precision: `contract.PRECISIONS`; k: segments per call (unrolled
    graphs; None otherwise); target: what an int8 graph was quantized for (`contract.INT8_TARGETS`);
    only_on: the one runtime the graph runs on (`ONLY_ON`; None: any ONNX runtime and TensorRT);
    embed_graph: the embed graph producing its x input (segment graphs that take x); bytes: file size;
    fusion: what `hrm_edge.export.fuse` fused; quantization / calibration / calib_parity / report: the
    INT8 pipeline's record (`hrm_edge.quant.quantize`), kept as written; export_seconds: wall time."""

    file: str
    kind: str
    precision: str
    target: str | None = None
    only_on: str | None = None
    embed_graph: str | None = None
    k: int | None = None
    opset: int | None = None
    inputs: dict[str, TensorSpec] = field(default_factory=dict)
    outputs: dict[str, TensorSpec] = field(default_factory=dict)
    bytes: int | None = None
    op_types: dict[str, int] | None = None
    fusion: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    calib_parity: dict[str, Any] | None = None
    export_seconds: float | None = None
    report: dict[str, str] | None = None

    @property
    def takes_x(self) -> bool:
        """The graph takes the input embedding x instead of tokens/puzzle_ids."""
        return "x" in self.inputs

    @classmethod
    def from_dict(cls, data: Any, where: str, path: str) -> GraphEntry:
        f = _Fields(data, where, path)
        kind = f.choice("kind", GRAPH_KINDS)
        op_types = f.obj("op_types", False)
        if op_types is not None and not all(isinstance(v, int) and not isinstance(v, bool) for v in op_types.values()):
            f.fail("op_types", "must map op types to integer counts")
        report = f.text_map("report", False)
        for key, name in (report or {}).items():
            check_file_name(name, lambda message, key=key: f.fail(f"report.{key}", message))
        return cls(file=f.file_name("file"), kind=kind, precision=f.choice("precision", PRECISIONS),
                   target=f.choice("target", INT8_TARGETS, False), only_on=f.choice("only_on", ONLY_ON, False),
                   embed_graph=f.text("embed_graph", False), k=f.integer("k", kind == "unrolled", 1, MAX_SEGMENTS),
                   opset=f.integer("opset", False, 1), inputs=_read_tensors(f, "inputs"),
                   outputs=_read_tensors(f, "outputs"), bytes=f.integer("bytes", False, 0), op_types=op_types,
                   fusion=f.obj("fusion", False), quantization=f.obj("quantization", False),
                   calibration=f.obj("calibration", False), calib_parity=f.obj("calib_parity", False),
                   export_seconds=f.number("export_seconds", False), report=report)

    def to_dict(self) -> dict[str, Any]:
        return _without_none({
            "file": self.file, "kind": self.kind, "precision": self.precision, "target": self.target,
            "only_on": self.only_on, "embed_graph": self.embed_graph, "k": self.k, "opset": self.opset,
            "inputs": _write_tensors(self.inputs), "outputs": _write_tensors(self.outputs), "bytes": self.bytes,
            "op_types": self.op_types, "fusion": self.fusion, "quantization": self.quantization,
            "calibration": self.calibration, "calib_parity": self.calib_parity,
            "export_seconds": self.export_seconds, "report": self.report}, keep=("k",))


@dataclass(kw_only=True)
class ModelInfo:
    """The exported model: family ("hrm" | "trm"), its config (`hrm_edge.model.config` as a dict),
    parameter count and total_len (P = seq_len + puzzle-embedding rows, the carry's length)."""

    config: dict[str, Any]
    family: str | None = None
    parameters: int | None = None
    total_len: int | None = None

    @classmethod
    def read(cls, f: _Fields) -> ModelInfo:
        config = f.sub("config")
        for key in ("seq_len", "vocab_size", "hidden_size"):  # what the bundle side sizes arrays by
            config.integer(key, False, 1, MAX_DIM)
        return cls(config=config.data, family=f.text("family", False),
                   parameters=f.integer("parameters", False, 0), total_len=f.integer("total_len", False, 1, MAX_DIM))

    def to_dict(self) -> dict[str, Any]:
        return _without_none({"family": self.family, "config": self.config, "parameters": self.parameters,
                              "total_len": self.total_len})


@dataclass(kw_only=True)
class TaskInfo:
    """The puzzle task (a codec name of `hrm_edge.puzzles`), its sequence length and vocabulary size."""

    name: str
    seq_len: int | None = None
    vocab_size: int | None = None

    @classmethod
    def read(cls, f: _Fields) -> TaskInfo:
        return cls(name=f.text("name"), seq_len=f.integer("seq_len", False, 1, MAX_DIM),
                   vocab_size=f.integer("vocab_size", False, 1, MAX_DIM))

    def to_dict(self) -> dict[str, Any]:
        return _without_none({"name": self.name, "seq_len": self.seq_len, "vocab_size": self.vocab_size})


@dataclass(kw_only=True)
class Halting:
    """Halting defaults: the policy text (`hrm_edge.act.parse_policy`) and the segment cap."""

    default_policy: str
    max_steps: int

    @classmethod
    def read(cls, f: _Fields) -> Halting:
        return cls(default_policy=f.text("default_policy"), max_steps=f.integer("max_steps", True, 1, MAX_SEGMENTS))

    def to_dict(self) -> dict[str, Any]:
        return {"default_policy": self.default_policy, "max_steps": self.max_steps}


@dataclass(kw_only=True)
class Reference:
    """The golden outputs: their file (reference.npz), puzzle count, the policy and segment cap they
    were run under, the puzzle source ("<task> <split>") and the runtime that produced them."""

    file: str
    puzzles: int
    policy: str
    max_steps: int
    source: str | None = None
    runtime: str | None = None

    @classmethod
    def read(cls, f: _Fields) -> Reference:
        return cls(file=f.file_name("file"), puzzles=f.integer("puzzles", True, 0, MAX_REFERENCE_PUZZLES),
                   policy=f.text("policy"), max_steps=f.integer("max_steps", True, 1, MAX_SEGMENTS),
                   source=f.text("source", False),
                   runtime=f.text("runtime", False))

    def to_dict(self) -> dict[str, Any]:
        return _without_none({"file": self.file, "puzzles": self.puzzles, "policy": self.policy,
                              "max_steps": self.max_steps, "source": self.source, "runtime": self.runtime})


@dataclass(kw_only=True)
class PuzzleRows:
    """A pruned puzzle-embedding table: the original ids kept (row i holds kept_original_ids[i])
    and the original table's row count."""

    kept_original_ids: list[int]
    original_rows: int

    @classmethod
    def read(cls, f: _Fields) -> PuzzleRows:
        rows = f.integer("original_rows", True, 1, MAX_PUZZLE_ROWS)
        kept = f.typed("kept_original_ids", (list,), True)
        f.capped("kept_original_ids", kept, rows)
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < rows for i in kept):
            f.fail("kept_original_ids", f"must be a list of integers in 0..{rows - 1} (original_rows - 1)")
        return cls(kept_original_ids=list(kept), original_rows=rows)

    def to_dict(self) -> dict[str, Any]:
        return {"kept_original_ids": self.kept_original_ids, "original_rows": self.original_rows}


@dataclass(kw_only=True)
class SourceCheckpoint:
    """Provenance of the exported checkpoint (its path absolute); any field may be unknown (None)."""

    format: str | None = None
    path: str | None = None
    sha256: str | None = None
    step: int | None = None

    @classmethod
    def read(cls, f: _Fields) -> SourceCheckpoint:
        return cls(format=f.text("format", False), path=f.text("path", False), sha256=f.text("sha256", False),
                   step=f.integer("step", False))

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "path": self.path, "sha256": self.sha256, "step": self.step}


@dataclass(kw_only=True)
class DeviceFiles:
    """A device (Jetson) bundle's extras: the runtime wheel, its README and JetPack -> TensorRT versions."""

    runtime_wheel: str
    readme: str
    jetpack_tensorrt: dict[str, str]

    @classmethod
    def read(cls, f: _Fields) -> DeviceFiles:
        return cls(runtime_wheel=f.file_name("runtime_wheel"), readme=f.file_name("readme"),
                   jetpack_tensorrt=f.text_map("jetpack_tensorrt"))

    def to_dict(self) -> dict[str, Any]:
        return {"runtime_wheel": self.runtime_wheel, "readme": self.readme, "jetpack_tensorrt": self.jetpack_tensorrt}


@dataclass(kw_only=True)
class GateRun:
    """A parity gate that export ran on the bundle before sealing it (`hrm-edge export`: one per
    reduced precision, "fp16" and "int8").

    name: the gate ("parity"); precision: the graphs it compared ("fp16" or "int8"); data: "<task> <split>" of
    the puzzles; puzzles, policy and max_steps: what it ran; passed: every check of every graph passed;
    graphs: graph name -> its checks (`hrm_edge.parity.gate` records: name, value, threshold, passed);
    file: the gate's puzzles with the fp32 reference's run on them (`hrm_edge.bundle.GATE_SET`), from
    which `verify` re-runs the gate on a device (None: bundles written before it); dropped: graphs that
    failed the gate and were left out of the bundle because another graph of their INT8 target passed."""

    name: str
    precision: str
    data: str
    puzzles: int
    policy: str
    max_steps: int
    passed: bool
    graphs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    file: str | None = None
    dropped: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, data: Any, where: str, path: str) -> GateRun:
        f = _Fields(data, where, path)
        graphs = f.obj("graphs")
        for name, checks in graphs.items():
            if not isinstance(checks, list) or not all(isinstance(c, dict) for c in checks):
                f.fail(f"graphs.{name}", "must be a list of check objects")
        return cls(name=f.text("name"), precision=f.text("precision"), data=f.text("data"),
                   puzzles=f.integer("puzzles", True, 0), policy=f.text("policy"),
                   max_steps=f.integer("max_steps", True, 1, MAX_SEGMENTS), passed=f.boolean("passed"),
                   graphs=graphs, file=f.file_name("file", False), dropped=f.names("dropped"))

    def to_dict(self) -> dict[str, Any]:
        return _without_none({"name": self.name, "precision": self.precision, "data": self.data,
                              "puzzles": self.puzzles, "policy": self.policy, "max_steps": self.max_steps,
                              "passed": self.passed, "graphs": self.graphs, "file": self.file,
                              "dropped": self.dropped or None})


# ----------------------------------------------------------------------------------------------
# the manifest


@dataclass(kw_only=True)
class Manifest:
    """A bundle's manifest. files: file name -> sha256 (hex) of every file but manifest.json (and its
    signature); exporter: library versions at export; card: the checkpoint's model card (free form);
    created: UTC time of export (ISO 8601); export_seconds: wall time of the export; carry_init: the
    initial-carry file; gates: the parity gates export ran (absent when none ran). Not written:
    `where` names the manifest in error messages, `digest` (`manifest_digest`) is the bundle's
    identity as read (None for a manifest built in memory)."""

    schema_version: int = SCHEMA_VERSION
    created: str | None = None
    model: ModelInfo
    task: TaskInfo
    halting: Halting | None = None
    graphs: dict[str, GraphEntry] = field(default_factory=dict)
    carry_init: str | None = None
    puzzle_rows: PuzzleRows | None = None
    reference: Reference | None = None
    gates: list[GateRun] = field(default_factory=list)
    source_checkpoint: SourceCheckpoint | None = None
    card: dict[str, Any] | None = None
    exporter: dict[str, str] | None = None
    device: DeviceFiles | None = None
    files: dict[str, str] = field(default_factory=dict)
    export_seconds: float | None = None
    where: str = field(default=MANIFEST, compare=False, repr=False)
    digest: str | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST) -> Manifest:
        """Parse and validate a manifest's JSON object; `where` names it in the one-line errors."""
        version = data.get("schema_version") if isinstance(data, dict) else None
        if not isinstance(version, int) or isinstance(version, bool):
            raise BundleError(f"{where}: no integer schema_version")
        if version > SCHEMA_VERSION:
            raise BundleError(f"{where}: schema_version {version} is newer than this hrm-edge reads "
                              f"({SCHEMA_VERSION}); upgrade hrm-edge on this device")
        f = _Fields(data, where)
        f.capped("graphs", f.obj("graphs"), MAX_GRAPHS)
        graphs = {name: GraphEntry.from_dict(entry, where, f'graphs["{name}"]')
                  for name, entry in f.obj("graphs").items()}
        files = f.obj("files")
        f.capped("files", files, MAX_FILES)
        for name, digest in files.items():
            check_file_name(name, lambda message, name=name: f.fail(f'files["{name}"]', message))
            if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
                f.fail("files", f"must map file names to hex sha256 digests; {name!r} has {digest!r}")
        gates = f.typed("gates", (list,), False) or []
        f.capped("gates", gates, MAX_GRAPHS)

        def part(key: str, reader: Any, required: bool = False) -> Any:
            sub = f.sub(key, required)
            return None if sub is None else reader(sub)

        manifest = cls(
            schema_version=version, created=f.text("created", False), model=part("model", ModelInfo.read, True),
            task=part("task", TaskInfo.read, True), halting=part("halting", Halting.read), graphs=graphs,
            carry_init=f.file_name("carry_init", False), puzzle_rows=part("puzzle_rows", PuzzleRows.read),
            reference=part("reference", Reference.read),
            gates=[GateRun.read(g, where, f"gates[{i}]") for i, g in enumerate(gates)],
            source_checkpoint=part("source_checkpoint", SourceCheckpoint.read), card=f.obj("card", False),
            exporter=f.text_map("exporter", False), device=part("device", DeviceFiles.read), files=dict(files),
            export_seconds=f.number("export_seconds", False), where=where, digest=manifest_digest(data))
        for name, entry in graphs.items():
            embed = graphs.get(entry.embed_graph) if entry.embed_graph is not None else None
            if entry.embed_graph is not None and (embed is None or embed.kind != "embed"):
                f.fail(f'graphs["{name}"].embed_graph', f"is {entry.embed_graph!r}, not an embed graph of this bundle")
        manifest._check_reference_size(f)
        return manifest

    def _check_reference_size(self, f: _Fields) -> None:
        """reference.npz's largest array, step_logits fp32 [T, N, S, V], stays under MAX_REFERENCE_BYTES."""
        seq = self.task.seq_len or self.model.config.get("seq_len")
        vocab = self.task.vocab_size or self.model.config.get("vocab_size")
        if self.reference is None or not isinstance(seq, int) or not isinstance(vocab, int):
            return
        size = 4 * self.reference.max_steps * self.reference.puzzles * seq * vocab
        if size > MAX_REFERENCE_BYTES:
            f.fail("reference", f"step_logits would be {size / 2**20:.0f} MiB "
                                f"(max_steps x puzzles x seq_len x vocab_size x 4), above the cap "
                                f"{MAX_REFERENCE_BYTES >> 20} MiB")

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to manifest.json (schema_version 1's keys and order)."""
        def opt(part: Any) -> Any:
            return None if part is None else part.to_dict()

        return _without_none({
            "schema_version": self.schema_version, "created": self.created, "model": self.model.to_dict(),
            "task": self.task.to_dict(), "halting": opt(self.halting),
            "graphs": {n: g.to_dict() for n, g in self.graphs.items()}, "carry_init": self.carry_init,
            "puzzle_rows": opt(self.puzzle_rows), "reference": opt(self.reference),
            "gates": [g.to_dict() for g in self.gates] or None, "source_checkpoint": opt(self.source_checkpoint),
            "card": self.card, "exporter": self.exporter,
            "device": opt(self.device), "files": self.files, "export_seconds": self.export_seconds,
        }, keep=("created", "halting", "carry_init", "puzzle_rows", "reference", "source_checkpoint", "card",
                 "exporter", "export_seconds"))

    def need_reference(self) -> Reference:
        """The golden-output record, or a one-line error for a bundle without one."""
        if self.reference is None:
            raise BundleError(f"{self.where}: missing field 'reference' (the golden outputs; re-export the bundle)")
        return self.reference

    def need_halting(self) -> Halting:
        """The halting defaults, or a one-line error for a bundle without them."""
        if self.halting is None:
            raise BundleError(f"{self.where}: missing field 'halting' (the default policy and segment cap)")
        return self.halting


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are unique (two readers could otherwise see two different manifests)."""
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {twice!r}")
    return data


def parse_manifest_json(text: bytes | str, where: str) -> Manifest:
    """Parse manifest.json's bytes (at most MAX_MANIFEST_BYTES; unique keys) and validate them."""
    if len(text) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{where}: {len(text)} bytes, above the cap {MAX_MANIFEST_BYTES} for a manifest")
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{where}: not valid JSON ({exc})") from None
    except RecursionError:
        raise BundleError(f"{where}: JSON nested too deeply for a manifest") from None
    return Manifest.from_dict(data, where)


def read_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest.json file (`BundleError` naming the file and field otherwise);
    its size is checked before it is read."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path}: {size} bytes, above the cap {MAX_MANIFEST_BYTES} for a manifest")
    return parse_manifest_json(path.read_bytes(), str(path))


def write_manifest(manifest: Manifest, path: str | Path) -> Path:
    """Write `manifest` as JSON (indent 2); it is read back first, so nothing the reader refuses is written.
    Sets `manifest.digest` to the digest of what was written."""
    text = json.dumps(manifest.to_dict(), indent=2, default=str)
    manifest.digest = parse_manifest_json(text, str(path)).digest
    path = Path(path)
    path.write_text(text)
    return path

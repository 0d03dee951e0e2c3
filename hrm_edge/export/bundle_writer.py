"""Write a deployable bundle from a checkpoint, atomically: graphs, manifest, initial carry and
golden reference outputs. Everything is written into a temporary sibling directory that is
swapped into place only when complete, under an exclusive lock, so an interrupted export leaves
nothing half-written and a second exporter to the same path fails at once.

Graphs (`GraphSpec`): the portable standard-op graphs of `hrm_edge.export.graphs` (segment,
K-unrolled, ACT loop, embed), and the fused CPU segment graph `segment.fp32-cpufused`: the segment
graph taking x rewritten into ONNX Runtime contrib ops (`hrm_edge.export.fuse`, the bench's
`ort-fp32-cpufused` row), listed with `only_on="ort-cpu"` and its embed graph `embed.fp32`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hrm_edge import __version__
from hrm_edge.act import parse_policy, solve_in_batches
from hrm_edge.bundle import CARRY_INIT, REFERENCE, BundleError, remap_ids
from hrm_edge.files import check_output_dir, exclusive_lock, remove_stale_partials, replace_dir, sha256_file
from hrm_edge.manifest import (
    MANIFEST,
    ORT_CPU,
    SIGNATURE,
    GateRun,
    GraphEntry,
    Halting,
    Manifest,
    ModelInfo,
    PuzzleRows,
    Reference,
    SourceCheckpoint,
    TaskInfo,
    TensorSpec,
    write_manifest,
)
from hrm_edge.model.checkpoint import Checkpoint
from hrm_edge.puzzles.datasets import PuzzleSet


@dataclass(frozen=True)
class GraphSpec:
    """One graph to export: kind "segment" | "unrolled" | "act_loop" | "embed", precision "fp32" |
    "fp16"; `cpu_fused`: the fp32 segment graph taking x, fused for ONNX Runtime's CPU EP (its embed
    graph is exported with it)."""

    kind: str
    precision: str = "fp32"
    k: int | None = None
    cpu_fused: bool = False

    def __post_init__(self) -> None:
        if self.cpu_fused and (self.kind, self.precision) != ("segment", "fp32"):
            raise BundleError(f"only the fp32 segment graph has a fused CPU form, not {self.kind} {self.precision}")

    @property
    def name(self) -> str:
        stem = {"segment": "segment", "unrolled": f"unrolled{self.k}", "act_loop": "act_loop", "embed": "embed"}
        return f"{stem[self.kind]}.{self.precision}{'-cpufused' if self.cpu_fused else ''}"

    @property
    def embed(self) -> GraphSpec | None:
        """The embed graph this graph needs (the fused graph takes x), or None."""
        return GraphSpec("embed", self.precision) if self.cpu_fused else None


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    versions = {"hrm_edge": __version__, "torch": str(torch.__version__), "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}
    with contextlib.suppress(ImportError):
        import onnxscript

        versions["onnxscript"] = onnxscript.__version__
    return versions


def reference_outputs(ck: Checkpoint, golden: PuzzleSet, policy: str, max_steps: int,
                      kept_ids: list[int] | None = None) -> dict[str, np.ndarray]:
    """Golden outputs of the fp32 PyTorch reference on CPU (fields: hrm_edge.bundle.REFERENCE_FIELDS).
    Puzzle ids are stored as the original identifiers; `kept_ids` maps them for a pruned model."""
    from hrm_edge.model.runner import TorchSegmentRunner

    runner = TorchSegmentRunner(ck.model, "cpu")
    ids = golden.puzzle_ids if kept_ids is None else remap_ids(golden.puzzle_ids, kept_ids)
    recorded = solve_in_batches(runner, golden.inputs, ids, parse_policy("fixed"), max_steps,
                                batch_size=64, record_logits=True)
    by_policy = solve_in_batches(runner, golden.inputs, ids, parse_policy(policy), max_steps, batch_size=64)
    labels = golden.labels if golden.labels is not None else np.zeros_like(golden.inputs)
    return {"inputs": golden.inputs, "puzzle_ids": golden.puzzle_ids, "labels": labels,
            "predictions": by_policy.predictions, "steps": by_policy.steps,
            "step_predictions": recorded.step_predictions, "step_q_halt": recorded.step_q_halt,
            "step_q_continue": recorded.step_q_continue, "step_logits": recorded.step_logits}


def _export_cpu_fused(ck: Checkpoint, path: Path, opset: int) -> dict[str, Any]:
    """Write the fused CPU segment graph: the fp32 segment graph taking x, traced in memory and
    rewritten by `fuse_model` (the bench's `ort-fp32-cpufused` construction); returns what was fused.
    The standard-op checker refuses its contrib ops, so ONNX Runtime's CPU EP loads it instead."""
    import onnx

    from hrm_edge.export import graphs
    from hrm_edge.export.fuse import fuse_model
    from hrm_edge.runtimes.ort.loader import make_session

    fused, report = fuse_model(graphs.segment_proto(ck.model, opset=opset, dtype="float32", embed_inside=False))
    onnx.save(fused, str(path))
    make_session(path, threads=1)
    return report.to_dict()


def _export_graph(ck: Checkpoint, spec: GraphSpec, path: Path, opset: int, max_steps: int,
                  exported: dict[str, Path]) -> None:
    """Export one portable graph; unrolled and loop graphs are composed from the segment graph of
    the same precision in `exported` (exported first when missing), so each weight is traced once."""
    from hrm_edge.export import graphs

    dtype = {"fp32": "float32", "fp16": "float16"}[spec.precision]
    segment = exported.get(f"segment.{spec.precision}")
    if spec.kind == "segment":
        graphs.export_segment(ck.model, path, opset=opset, dtype=dtype)
    elif spec.kind == "embed":
        graphs.export_embed(ck.model, path, opset=opset, dtype=dtype)
    elif spec.kind == "unrolled":
        graphs.export_unrolled(ck.model, path, k=spec.k, opset=opset, dtype=dtype, segment=segment)
    elif spec.kind == "act_loop":
        graphs.export_act_loop(ck.model, path, max_steps=max_steps, opset=opset, dtype=dtype, segment=segment)
    else:
        raise BundleError(f"unknown graph kind {spec.kind!r}")


def _graph_entry(spec: GraphSpec, path: Path, summary: dict[str, Any], fusion: dict[str, Any] | None,
                 seconds: float) -> GraphEntry:
    """The manifest entry of an exported graph (`summary`: `onnx_utils.graph_summary` of its file)."""
    def tensors(items: list[dict[str, Any]]) -> dict[str, TensorSpec]:
        return {t["name"]: TensorSpec(dtype=t["dtype"], shape=list(t["shape"])) for t in items}

    inputs = tensors(summary["inputs"])
    return GraphEntry(file=path.name, kind=spec.kind, precision=spec.precision, k=spec.k,
                      only_on=ORT_CPU if spec.cpu_fused else None,
                      embed_graph=spec.embed.name if spec.embed and "x" in inputs else None,
                      opset=summary["opset"], inputs=inputs, outputs=tensors(summary["outputs"]),
                      bytes=path.stat().st_size, op_types=summary["op_types"], fusion=fusion,
                      export_seconds=round(seconds, 2))


def _with_embed_graphs(specs: list[GraphSpec]) -> list[GraphSpec]:
    """`specs` plus the embed graphs they need, segment graphs first (others compose from them)."""
    out = list(dict.fromkeys([*specs, *(s.embed for s in specs if s.embed is not None)]))
    return sorted(out, key=lambda sp: sp.kind != "segment")


def source_checkpoint(ck: Checkpoint) -> SourceCheckpoint:
    """Provenance of the exported checkpoint; its path absolute, so `parity` and `bench` find it from any
    working directory."""
    path = ck.provenance.get("path")
    return SourceCheckpoint(format=ck.provenance.get("format"), path=str(Path(path).resolve()) if path else None,
                            sha256=ck.provenance.get("sha256"), step=ck.provenance.get("step"))


def _seal(tmp: Path, manifest: Manifest, gate: Callable[[Path, Manifest], list[GateRun]] | None,
          sign: Callable[[str], bytes] | None) -> None:
    """Write the manifest; with `gate`, run it on the written bundle and record its results in the
    manifest (the gate may leave graphs out: `drop_graph`); with `sign`, write the signature of the
    final digest (`Manifest.digest`) as manifest.sig."""
    write_manifest(manifest, tmp / MANIFEST)
    if gate is not None:
        runs = gate(tmp, manifest)
        manifest.gates += runs
        for file in {run.file for run in runs if run.file is not None}:  # the gate's puzzles, written by it
            manifest.files[file] = sha256_file(tmp / file)
        write_manifest(manifest, tmp / MANIFEST)
    if sign is not None:
        (tmp / SIGNATURE).write_bytes(sign(manifest.digest))


def drop_graph(tmp: Path, manifest: Manifest, name: str) -> None:
    """Leave graph `name` out of the bundle being written in `tmp`: its file, its hash and its entry."""
    entry = manifest.graphs.pop(name)
    manifest.files.pop(entry.file, None)
    (tmp / entry.file).unlink(missing_ok=True)
    write_manifest(manifest, tmp / MANIFEST)


def check_bundle_target(out: Path, force: bool) -> None:
    """Refuse an output that exists without `force`, and with `force` anything but a bundle or an empty
    directory (so that a mistyped `-o` never deletes a home directory); the location must be writable."""
    check_output_dir(out, "bundle directory")
    if not (out.exists() or out.is_symlink()):
        return
    if not force:
        raise BundleError(f"{out}: already exists (use --force to replace it)")
    if not out.is_dir() or out.is_symlink():
        raise BundleError(f"{out}: exists and is not a directory; --force replaces only a bundle")
    if not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise BundleError(f"{out}: not a bundle (no {MANIFEST}) and not empty; --force replaces only a bundle")


def _exclusive(export: Callable[..., Path]) -> Callable[..., Path]:
    """Run `export(ck, out, ..., force=, log=)` holding `exclusive_lock(out)` (`.NAME.lock` beside
    `out`) throughout, so that a second export to `out` fails at once: the target checked
    (`check_bundle_target`), then the `.NAME.*.partial` siblings of a killed export removed and
    reported. The export builds the bundle in such a sibling and swaps it into place atomically
    (`hrm_edge.files.replace_dir`): an existing bundle stays whole at `out` until the new one is
    complete."""
    @functools.wraps(export)
    def locked(ck: Checkpoint, out: Path, *args: Any, force: bool = False, log: Callable[[str], None] = print,
               **kwargs: Any) -> Path:
        out = check_output_dir(out, "bundle directory")
        with exclusive_lock(out):
            check_bundle_target(out, force)
            stale = remove_stale_partials(out)
            if stale:
                log(f"removed {len(stale)} stale partial export(s) of a killed export: "
                    f"{', '.join(p.name for p in stale)}")
            return export(ck, out, *args, force=force, log=log, **kwargs)

    return locked


@_exclusive
def write_bundle(ck: Checkpoint, out: Path, specs: list[GraphSpec], golden: PuzzleSet, *, policy: str = "q",
                 max_steps: int | None = None, opset: int = 18, force: bool = False,
                 keep_puzzle_ids: list[int] | None = None,
                 log: Callable[[str], None] = print,
                 extra_steps: Callable[[Path, Manifest, Checkpoint], None] | None = None,
                 gate: Callable[[Path, Manifest], list[GateRun]] | None = None,
                 sign: Callable[[str], bytes] | None = None) -> Path:
    """Export `specs` of `ck` into bundle directory `out`; `golden` puzzles give reference.npz.

    `keep_puzzle_ids`: keep only these puzzle-embedding rows (original ids; the manifest maps them).

    `extra_steps(tmp_dir, manifest, ck)` may add files and graphs (e.g. INT8) before hashing; `ck` is the
    checkpoint as exported (puzzle rows already pruned). `gate(tmp_dir, manifest)` runs a gate on the
    complete bundle and returns its records (one per precision), written into the manifest (`Manifest.gates`);
    `sign(digest)` returns the signature of the final digest, written as manifest.sig (`_seal`)."""
    from hrm_edge.export.onnx_utils import check_graph, graph_summary

    if ck.task is None:
        raise BundleError("the checkpoint does not say its task: pass --task")
    steps = max_steps or ck.config.halt_max_steps
    puzzle_rows = None
    if keep_puzzle_ids is not None:
        from hrm_edge.export.puzzle_rows import prune_puzzle_embeddings

        full_rows = ck.config.num_puzzle_identifiers
        ck = dataclasses.replace(ck, model=prune_puzzle_embeddings(ck.model, keep_puzzle_ids))
        ck.config = ck.model.config
        puzzle_rows = PuzzleRows(kept_original_ids=list(keep_puzzle_ids), original_rows=full_rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        t_start = time.perf_counter()
        graphs: dict[str, GraphEntry] = {}
        exported: dict[str, Path] = {}
        for spec in _with_embed_graphs(specs):
            t0 = time.perf_counter()
            path = tmp / f"{spec.name}.onnx"
            log(f"exporting {spec.name} ...")
            fusion = None
            if spec.cpu_fused:
                fusion = _export_cpu_fused(ck, path, opset)
            else:
                _export_graph(ck, spec, path, opset, steps, exported)
                check_graph(path)
            exported[spec.name] = path
            summary = graph_summary(path)
            graphs[spec.name] = _graph_entry(spec, path, summary, fusion, time.perf_counter() - t0)
            log(f"  {spec.name}: {path.stat().st_size / 1e6:.2f} MB, {summary['node_count']} nodes, "
                f"{time.perf_counter() - t0:.1f} s")
        h_init = ck.model.inner.H_init.detach().float().cpu().numpy()
        l_init = ck.model.inner.L_init.detach().float().cpu().numpy()
        np.savez(tmp / CARRY_INIT, H_init=h_init, L_init=l_init)
        log(f"running the PyTorch reference on {len(golden)} golden puzzles ...")
        np.savez_compressed(tmp / REFERENCE, **reference_outputs(ck, golden, policy, steps, keep_puzzle_ids))
        manifest = Manifest(
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            model=ModelInfo(family=getattr(ck.config, "family", "hrm"), config=ck.config.to_dict(),
                            parameters=ck.model.parameter_count(), total_len=ck.config.total_len),
            task=TaskInfo(name=ck.task, seq_len=ck.config.seq_len, vocab_size=ck.config.vocab_size),
            halting=Halting(default_policy=policy, max_steps=steps),
            graphs=graphs,
            carry_init=CARRY_INIT,
            puzzle_rows=puzzle_rows,
            reference=Reference(file=REFERENCE, puzzles=len(golden), policy=policy, max_steps=steps,
                                source=f"{golden.task} {golden.split}", runtime="torch cpu float32"),
            source_checkpoint=source_checkpoint(ck),
            card=ck.card,
            exporter=library_versions(),
            where=str(tmp / MANIFEST),
        )
        if extra_steps is not None:
            extra_steps(tmp, manifest, ck)
        manifest.files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest.export_seconds = round(time.perf_counter() - t_start, 2)
        _seal(tmp, manifest, gate, sign)
        for p in tmp.iterdir():
            os.chmod(p, 0o644)
        os.chmod(tmp, 0o755)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out

"""`hrm-edge build` and `hrm-edge check-trt`: TensorRT engines from a bundle, and the static check.

Add them to the `hrm-edge` group with `cli.add_command(build)` and `cli.add_command(check_trt)`.
Nothing here imports torch; TensorRT, cuda-python and onnx are imported inside the commands that
need them, so `--help` and the bundle side work everywhere. Errors are `HrmEdgeError`s (one line).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import click

from hrm_edge.errors import HrmEdgeError
from hrm_edge.manifest import GraphEntry
from hrm_edge.runtimes.trt.builder import TARGETS

TARGET_NAMES = tuple(TARGETS)


class TrtCheckFailedError(HrmEdgeError):
    """check-trt found errors."""


def select_segment_graph(manifest_graphs: dict[str, GraphEntry], precision: str, where: str = "bundle") -> str:
    """The bundle's segment graph to build an engine of `precision` from: a portable graph of kind
    "segment" with that precision; for int8 the one quantized for TensorRT (target "tensorrt")."""
    candidates = sorted(
        name for name, e in manifest_graphs.items()
        if e.kind == "segment" and e.precision == precision and e.only_on is None
        and (precision != "int8" or e.target == "tensorrt"))
    if len(candidates) == 1:
        return candidates[0]
    segments = ", ".join(f"{n} ({e.precision}{'/' + e.target if e.target else ''})"
                         for n, e in sorted(manifest_graphs.items()) if e.kind == "segment") or "none"
    if not candidates:
        want = "int8 segment graph with target tensorrt" if precision == "int8" else f"{precision} segment graph"
        raise HrmEdgeError(f"{where}: no {want}; segment graphs: {segments}; re-export the bundle or pass --graph")
    raise HrmEdgeError(f"{where}: several {precision} segment graphs ({', '.join(candidates)}); "
                       "choose one with --graph")


def _manifest_shapes(entry: GraphEntry) -> dict[str, list[Any]] | None:
    """{input name: shape} of a graph as its manifest entry records it (None when it records none)."""
    return {name: list(spec.shape) for name, spec in entry.inputs.items()} or None


@click.command("build")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--precision", type=click.Choice(["fp16", "int8"]), required=True,
              help="fp16: from the bundle's fp16 segment graph; int8: from its Q/DQ graph for TensorRT.")
@click.option("--target", type=click.Choice(TARGET_NAMES), default="desktop", show_default=True,
              help="Device class: sets the workspace limit and the default batch profile.")
@click.option("--batch", "batch_text", metavar="MIN:OPT:MAX", help="Batch profile (default: the target's).")
@click.option("--graph", "graph_name", help="Graph name in the manifest (default: the segment graph of --precision).")
@click.option("--workspace-mb", type=click.IntRange(64), help="TensorRT workspace limit (default: the target's).")
@click.option("--timing-cache", type=click.Path(dir_okay=False),
              help="Timing cache file to reuse and update (default: timing.cache beside the engine).")
@click.option("--print-trtexec", is_flag=True, help="Print the equivalent trtexec command and exit.")
@click.option("--verbose", is_flag=True, help="TensorRT's verbose log.")
def build(bundle: str, precision: str, target: str, batch_text: str | None, graph_name: str | None,
          workspace_mb: int | None, timing_cache: str | None, print_trtexec: bool, verbose: bool) -> None:
    """Build a TensorRT engine of BUNDLE's segment graph for this GPU.

    Writes BUNDLE/engines/<gpu>-trt<version>/<graph>.engine and <graph>.engine.json (TensorRT
    version, GPU, compute capability, profile, hashes). Engines run only on the GPU model and
    TensorRT version that built them.
    """
    from hrm_edge.bundle import open_bundle
    from hrm_edge.runtimes.trt.builder import build_engine, parse_batch, trtexec_command
    from hrm_edge.runtimes.trt.runner import current_environment, engine_dir_name

    b = open_bundle(bundle)
    name = graph_name or select_segment_graph(b.graphs, precision, str(b.path))
    onnx_path = b.graph_path(name)
    entry = b.graph(name)
    if entry.kind != "segment":
        raise HrmEdgeError(f"{b.path}: graph {name!r} is a {entry.kind} graph; the TensorRT runtime runs "
                           "segment graphs")
    if entry.only_on is not None:
        raise HrmEdgeError(f"{b.path}: graph {name!r} runs only on {entry.only_on}, not on TensorRT")
    if entry.precision != precision:
        raise HrmEdgeError(f"{b.path}: graph {name!r} is {entry.precision}, not {precision}")
    batch = parse_batch(batch_text) if batch_text else TARGETS[target].batch
    shapes = _manifest_shapes(entry)
    if print_trtexec:
        try:
            engine_dir = b.path / "engines" / engine_dir_name(current_environment())
        except HrmEdgeError:  # no TensorRT or GPU here: a neutral directory name
            engine_dir = b.path / "engines" / "trtexec"
        engine = engine_dir / f"{name}.engine"
        click.echo(trtexec_command(onnx_path, engine, batch, shapes, target, workspace_mb,
                                   timing_cache or engine_dir / "timing.cache", verbose))
        return
    engine_dir = b.path / "engines" / engine_dir_name(current_environment())
    engine = engine_dir / f"{name}.engine"
    manifest_sha = hashlib.sha256((b.path / "manifest.json").read_bytes()).hexdigest()
    sidecar = build_engine(onnx_path, engine, precision, target, batch, timing_cache or engine_dir / "timing.cache",
                           workspace_mb, verbose,
                           extra_sidecar={"bundle_graph": name, "bundle_manifest_sha256": manifest_sha})
    click.echo(f"{engine}: TensorRT {sidecar['tensorrt_version']} {precision} engine for {sidecar['gpu_name']} "
               f"(sm {sidecar['compute_capability']}), batch {batch[0]}:{batch[1]}:{batch[2]}, "
               f"{sidecar['engine_bytes'] / 1e6:.1f} MB, built in {sidecar['build_seconds']:.0f} s")


@click.command("check-trt")
@click.argument("path", type=click.Path(exists=True))
@click.option("--trt", "trt_version", default="10.3", show_default=True,
              help="TensorRT version to check against (tables: 10.3 = JetPack 6.x, 10.13 = JetPack 7.x).")
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
@click.option("--graph", "graph_names", multiple=True, help="Bundle graph(s) to check (default: TensorRT candidates).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per graph instead of text.")
def check_trt(path: str, trt_version: str, strict: bool, graph_names: tuple[str, ...], as_json: bool) -> None:
    """Check an ONNX file, or a bundle's graphs, for TensorRT without TensorRT or a GPU.

    Exits non-zero when a graph has errors. In a bundle, int8 graphs quantized for the CPU
    (target other than tensorrt) and graphs for one other runtime only (the fused CPU graph) are
    skipped unless named with --graph.
    """
    from hrm_edge.runtimes.trt.check import check_report

    p = Path(path)
    targets: list[tuple[str, Path]] = []
    if p.is_dir():
        from hrm_edge.bundle import open_bundle

        b = open_bundle(p)
        names = list(graph_names) or sorted(b.graphs)
        for name in names:
            entry = b.graph(name)
            skip = None
            if entry.precision == "int8" and entry.target != "tensorrt":
                skip = f"int8 graph for target {entry.target!r}, not for TensorRT"
            elif entry.only_on is not None:
                skip = f"runs only on {entry.only_on}, not on TensorRT"
            if skip and not graph_names:
                if not as_json:
                    click.echo(f"skip {name}: {skip}")
                continue
            targets.append((name, b.graph_path(name)))
    else:
        if graph_names:
            raise click.UsageError("--graph applies to a bundle directory, not an ONNX file")
        targets.append((p.name, p))
    failed = 0
    errors = 0
    for name, file in targets:
        report = check_report(file, trt_version, strict=strict)
        errors += len(report.errors)
        failed += not report.ok
        if as_json:
            click.echo(json.dumps({"graph": name, "path": str(file), "trt_version": trt_version,
                                   "table": report.table_version, "ok": report.ok,
                                   "findings": [f.__dict__ for f in report.findings]}))
            continue
        for finding in report.findings:
            click.echo(f"  {finding}")
        click.echo(report.summary())
    if failed:
        raise TrtCheckFailedError(f"{errors} error(s) in {failed} of {len(targets)} graph(s) for TensorRT "
                                  f"{trt_version}")

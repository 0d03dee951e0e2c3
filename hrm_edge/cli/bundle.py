"""`hrm-edge export`, `verify`, `parity` and `keygen`: make a bundle, re-check it, gate it against
PyTorch, make a key pair to sign bundles with.

`verify` with the ONNX Runtime or TensorRT runtime needs no torch; `export` and `parity` do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from hrm_edge.act import SolveResult, parse_policy
from hrm_edge.bundle import (
    GATE_SET,
    BundleError,
    check_digest,
    check_signature,
    open_bundle,
    unlisted_files,
    verify_files,
)
from hrm_edge.cli.common import load_for_cli
from hrm_edge.errors import HrmEdgeError
from hrm_edge.files import check_output_dir, exclusive_lock
from hrm_edge.manifest import MANIFEST, MAX_SEGMENTS, SIGNATURE, GateRun, Manifest, read_manifest
from hrm_edge.parity import (
    DEFAULT_GATES,
    VERIFY_GATES,
    compare,
    gate,
    golden_result,
    host_checks,
    junit_xml,
    plot_parity,
    with_overrides,
)
from hrm_edge.progress import ClosedLoopProgress
from hrm_edge.runtimes.solver import RUNTIMES

if TYPE_CHECKING:  # torch-free at run time: verify and solve on a bundle must import without torch
    from hrm_edge.bundle import Bundle
    from hrm_edge.model.checkpoint import Checkpoint


def _puzzle_set(data: str | None, task: str, split: str, limit: int | None) -> Any:
    from hrm_edge.puzzles.datasets import calib_data_dir, load_puzzle_set, missing_set_message

    path = Path(data) if data else calib_data_dir(task)
    if not path.exists():
        raise HrmEdgeError(f"no puzzle set at {path}" if data else missing_set_message(task))
    pset = load_puzzle_set(path, split=None if path.is_file() else split)
    if limit:
        pset.inputs, pset.puzzle_ids = pset.inputs[:limit], pset.puzzle_ids[:limit]
        pset.labels = None if pset.labels is None else pset.labels[:limit]
        pset.meta, pset.names, pset.difficulty = pset.meta[:limit], pset.names[:limit], pset.difficulty[:limit]
    return pset


@click.command(name="export")
@click.argument("ckpt", type=click.Path(exists=True))
@click.option("-o", "--output", required=True, type=click.Path(), help="Bundle directory to create.")
@click.option("--task", help="Task, if the checkpoint does not record it.")
@click.option("--seq-len", type=click.IntRange(1), help="seq_len for official checkpoints without dataset.json.")
@click.option("--fp16/--no-fp16", default=True, show_default=True, help="Also export the FP16 segment graph.")
@click.option("--cpu-fused/--no-cpu-fused", default=True, show_default=True,
              help="Also export the fused CPU segment graph (segment.fp32-cpufused: ONNX Runtime CPU EP only, "
                   "contrib ops) and its embed graph (embed.fp32); with --int8, also the cpu INT8 graph fused "
                   "(segment.int8-cpufused, held by the validation gate on its own).")
@click.option("--unroll", "unroll", multiple=True, type=click.IntRange(2), help="Add a K-segment graph (repeatable).")
@click.option("--act-loop", is_flag=True, help="Add the whole ACT loop as one ONNX Loop graph.")
@click.option("--golden-data", type=click.Path(exists=True), help="Puzzle set for reference.npz (default calib_data).")
@click.option("--golden", "golden_count", type=click.IntRange(1), default=16, show_default=True,
              help="Golden puzzles in reference.npz.")
@click.option("--gate-puzzles", type=click.IntRange(0),
              help="Puzzles of the parity gate export runs on the FP16 and INT8 graphs, kept in the bundle for "
                   "`verify` to re-run on a device (gate_set.npz; from --golden-data; default: the whole "
                   "validation set; 0: no gate, not with --int8).")
@click.option("--policy", default="q", show_default=True, help="Default halting policy recorded in the manifest.")
@click.option("--max-steps", type=click.IntRange(1, MAX_SEGMENTS),
              help="Default segment cap (default: halt_max_steps).")
@click.option("--opset", type=click.IntRange(18, 20), default=18, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing bundle.")
@click.option("--puzzle-ids", help="Keep only these puzzle-embedding rows (comma-separated original ids; 0 is kept).")
@click.option("--arc-tasks", help="Keep the rows of these ARC tasks and their augmentations (comma-separated).")
@click.option("--identifiers", type=click.Path(exists=True), help="The dataset's identifiers.json (for --arc-tasks).")
@click.option("--int8", is_flag=True,
              help="Add INT8 graph(s): ACT-aware calibration, mixed-precision search, then the parity gate.")
@click.option("--int8-target", "int8_targets", multiple=True,
              help="cpu | tensorrt, or optimum preset names avx512_vnni | arm64 | tensorrt (default: cpu; "
                   "jetson: tensorrt).")
@click.option("--calib", "calib_method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True, help="Calibration method.")
@click.option("--calib-size", type=click.IntRange(1), default=1024, show_default=True,
              help="Calibration puzzles (statistics and the search's closed-loop gate; at most the set's size).")
@click.option("--calib-data", type=click.Path(exists=True), help="Calibration set (default: calib_data/<task> calib).")
@click.option("--search/--no-search", default=True, show_default=True,
              help="Keep the most sensitive layers in float until the parity gate passes on calibration puzzles.")
@click.option("--max-float-share", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="The search keeps at most this share of the INT8 sites in float (1: as many as the gate needs; "
                   "float sites still store int8 weights, so the file stays small, but they compute in float).")
@click.option("--int8-activation-scale", "activation_scale", type=click.Choice(["auto", "tensor", "row"]),
              default="auto", show_default=True,
              help="INT8 graphs (cpu and tensorrt): one activation scale per tensor (cpu: per call; tensorrt: "
                   "calibrated), one per row (token) and call, or auto: per-tensor, and per-row too when per-tensor "
                   "keeps more than 10% of the sites in float or fails; the passing graph with fewer float sites is "
                   "kept, per-tensor where neither passes (docs/int8.md).")
@click.option("--qat-steps", type=click.IntRange(0), default=0, show_default=True,
              help="With --int8: first fine-tune N steps with fake quantization (`hrm-edge qat`; run in "
                   "OUTPUT-qat, resumable), export the fine-tuned model; the gate stays against CKPT.")
@click.option("--target", type=click.Choice(["host", "jetson"]), default="host", show_default=True,
              help="jetson: also pack the torch-free runtime wheel and README-device.md, and write OUTPUT.tar.gz.")
@click.option("--sign", "sign_key", type=click.Path(exists=True, dir_okay=False),
              help="Ed25519 private key (PEM; `hrm-edge keygen`): write manifest.sig, the signature of the bundle "
                   "digest, for `verify --public-key`.")
def export_cmd(ckpt: str, output: str, task: str | None, seq_len: int | None, fp16: bool, cpu_fused: bool,
               unroll: tuple[int, ...], act_loop: bool, golden_data: str | None, golden_count: int, policy: str,
               max_steps: int | None, opset: int, force: bool, puzzle_ids: str | None, arc_tasks: str | None,
               gate_puzzles: int | None,
               identifiers: str | None, int8: bool, int8_targets: tuple[str, ...], calib_method: str,
               calib_size: int, calib_data: str | None, search: bool, max_float_share: float,
               activation_scale: str, qat_steps: int, target: str, sign_key: str | None) -> None:
    """Export CKPT to a bundle: ONNX graphs, manifest, initial carry, golden outputs (atomic).

    Prints the bundle digest (sha256 of the canonical manifest) to pin with `verify --expect`."""
    from hrm_edge.export.bundle_writer import GraphSpec, write_bundle
    from hrm_edge.export.device_bundle import add_device_files, write_tarball

    parse_policy(policy)
    # Exclusive and atomic (hrm_edge.export.bundle_writer._exclusive): checked before any work, locked until
    # the command ends, the old bundle (--force) whole at OUTPUT until the new one is complete.
    from hrm_edge.export.bundle_writer import check_bundle_target

    check_output_dir(output, "bundle directory")
    click.get_current_context().with_resource(exclusive_lock(output))  # held until the command ends
    check_bundle_target(Path(output), force)
    gated = tuple(p for p, on in (("fp16", fp16), ("int8", int8)) if on) if gate_puzzles != 0 else ()
    if int8 and gate_puzzles == 0:
        raise click.UsageError("--gate-puzzles 0: an INT8 graph is never shipped without its parity gate")
    parity_dir = Path(output).parent / f"{Path(output).name}-parity"
    if gated:
        check_output_dir(parity_dir, "parity directory")
    sign = None
    if sign_key:
        from hrm_edge.signing import load_private_key, sign_digest

        key = load_private_key(sign_key)  # before the export: a bad key fails in a second, not after it

        def sign(digest: str) -> bytes:
            return sign_digest(key, digest)
    ck = load_for_cli(ckpt, task, seq_len)
    task = task or ck.task
    if task is None:
        raise click.UsageError("the checkpoint does not say its task: pass --task")
    ck.task = task
    fine_tuned = None  # --qat-steps: the fine-tuned checkpoint, also compared in the report
    if qat_steps:
        if not int8:
            raise click.UsageError("--qat-steps needs --int8")
        from hrm_edge.quant.qat import QatConfig, run_qat

        flavour = (int8_targets or (("tensorrt",) if target == "jetson" else ("cpu",)))[0]
        scale = "row" if activation_scale == "row" else "tensor"  # auto: per-tensor first
        run = run_qat(ck, Path(output).parent / f"{Path(output).name}-qat",
                      QatConfig(flavour=flavour, activation_scale=scale, steps=qat_steps), resume=True,
                      log=lambda m: click.echo(m, err=True))
        ck = load_for_cli(str(run.checkpoint), task, seq_len)
        fine_tuned = str(run.checkpoint)
    golden = _puzzle_set(golden_data, task, "val", golden_count)
    specs = [GraphSpec("segment", "fp32")]
    if cpu_fused:
        specs.append(GraphSpec("segment", "fp32", cpu_fused=True))
    if fp16:
        specs.append(GraphSpec("segment", "fp16"))
    specs += [GraphSpec("unrolled", "fp32", k) for k in unroll]
    if act_loop:
        specs.append(GraphSpec("act_loop", "fp32"))
    if target == "jetson" and not fp16:
        raise click.UsageError("--target jetson needs the FP16 graph (TensorRT builds FP16 engines from it)")
    hooks = []
    if int8:
        from hrm_edge.export.puzzle_rows import calib_for_kept_ids
        from hrm_edge.quant.quantize import add_int8_graphs

        calib = _puzzle_set(calib_data, task, "calib", None)
        targets = int8_targets or (("tensorrt",) if target == "jetson" else ("cpu",))

        def add_int8(tmp: Path, manifest: Manifest, exported: Checkpoint) -> None:
            rows = manifest.puzzle_rows
            calib_rows = calib if rows is None else calib_for_kept_ids(calib, rows.kept_original_ids)
            add_int8_graphs(tmp, manifest, exported, calib_rows, targets=targets, method=calib_method,
                            calib_size=calib_size, search=search, max_excluded_share=max_float_share,
                            activation_scale=activation_scale, cpu_fused=cpu_fused,
                            log=lambda m: click.echo(m, err=True),
                            gate_puzzles=len(_puzzle_set(golden_data, task, "val", gate_puzzles)),  # estimate
                            gate_fp16="fp16" in gated)

        hooks.append(add_int8)
    if target == "jetson":
        hooks.append(add_device_files)

    def extra(tmp: Path, manifest: Manifest, exported: Checkpoint) -> None:
        for hook in hooks:
            hook(tmp, manifest, exported)
    kept = None
    if puzzle_ids or arc_tasks:
        from hrm_edge.export.puzzle_rows import select_ids

        try:
            ids = [int(x) for x in puzzle_ids.split(",")] if puzzle_ids else []
        except ValueError:
            raise click.UsageError(f"--puzzle-ids {puzzle_ids!r}: expected comma-separated integers") from None
        kept = select_ids(ck.config.num_puzzle_identifiers, ids, arc_tasks.split(",") if arc_tasks else (),
                          identifiers)
    gate_failed: list[HrmEdgeError] = []

    def parity_gate(tmp: Path, manifest: Manifest) -> list[GateRun]:
        """The parity gate of the FP16 and INT8 graphs on the validation set, run on the finished bundle
        before it is sealed, its puzzles and the fp32 reference's run on them kept (`GATE_SET`) for
        `verify`. An INT8 graph that fails while another of its target passes is left out (`_dropped`);
        any other failure is recorded (passed: false), the bundle still written, and export exits
        non-zero."""
        from hrm_edge.export.bundle_writer import drop_graph

        click.echo(f"parity gate of the {' and '.join(p.upper() for p in gated)} graphs on the validation set:",
                   err=True)
        (parity_dir / "parity.json").unlink(missing_ok=True)
        failure = None
        try:
            click.get_current_context().invoke(parity, bundle=str(tmp), checkpoint=ckpt, data=golden_data,
                                               limit=gate_puzzles, precision=gated, out_dir=str(parity_dir),
                                               save_reference=str(tmp / GATE_SET))
        except HrmEdgeError as exc:
            if not (parity_dir / "parity.json").is_file():
                raise
            failure = exc
        if fine_tuned:  # for the report: the same graphs against the fine-tuned model (not a gate)
            click.echo("INT8 against the fine-tuned model (report only):", err=True)
            with contextlib.suppress(HrmEdgeError):
                click.get_current_context().invoke(parity, bundle=str(tmp), checkpoint=fine_tuned, data=golden_data,
                                                   limit=gate_puzzles, precision=("int8",),
                                                   out_dir=str(parity_dir.parent / f"{parity_dir.name}-vs-qat"))
        report = json.loads((parity_dir / "parity.json").read_text())
        dropped = _dropped(report, manifest)
        for name, why in dropped.items():
            click.echo(f"left out {name}: {why}", err=True)
            drop_graph(tmp, manifest, name)
        runs = [dataclasses.replace(_gate_record(report, precision, manifest), file=GATE_SET,
                                    dropped=[n for n in dropped if report["graphs"][n]["precision"] == precision])
                for precision in gated]
        if failure is not None and not all(run.passed for run in runs):
            gate_failed.append(failure)
        return runs

    out = write_bundle(ck, Path(output), specs, golden, policy=policy, max_steps=max_steps, opset=opset, force=force,
                       log=lambda m: click.echo(m, err=True), extra_steps=extra, keep_puzzle_ids=kept,
                       gate=parity_gate if gated else None, sign=sign)
    if gated:  # the gate ran on the bundle before it was swapped into place: name where it is now
        report_path = parity_dir / "parity.json"
        report = json.loads(report_path.read_text())
        report["bundle"] = str(out)
        report_path.write_text(json.dumps(report, indent=2))
    if target == "jetson":
        tarball = write_tarball(out)
        click.echo(f"wrote {tarball} ({tarball.stat().st_size / 1e6:.1f} MB)", err=True)
    manifest = read_manifest(out / MANIFEST)
    sizes = ", ".join(f"{n} {(out / g.file).stat().st_size / 1e6:.2f} MB" for n, g in manifest.graphs.items())
    click.echo(f"wrote {out}: {sizes}; {manifest.export_seconds} s")
    click.echo(f"bundle digest: {manifest.digest}")
    if sign is not None:
        click.echo(f"signed: {out / SIGNATURE} (Ed25519, key {sign_key})")
    if gate_failed:
        raise gate_failed[0]


def _gate_record(report: dict[str, Any], precision: str, manifest: Manifest) -> GateRun:
    """The manifest's record of a `parity` run (its parity.json report) on the graphs of `precision`
    that the bundle (`manifest`) ships."""
    graphs = {name: entry["gates"] for name, entry in report["graphs"].items()
              if entry["precision"] == precision and name in manifest.graphs}
    return GateRun(name="parity", precision=precision, data=report["data"], puzzles=report["puzzles"],
                   policy=report["policy"], max_steps=report["max_steps"],
                   passed=all(c["passed"] for checks in graphs.values() for c in checks), graphs=graphs)


def _dropped(report: dict[str, Any], manifest: Manifest) -> dict[str, str]:
    """INT8 graphs to leave out of the bundle, with why: those that failed the gate (`report`, a
    parity.json) while another graph of the same INT8 target passed it. The token-MLP demo's unfused
    cpu graph fails its accuracy drop by 2 of 256 puzzles where the fused one passes; shipped, it would
    fail `verify` on every device. A target none of whose graphs passes keeps them, recorded as failed."""
    passed = {name: all(c["passed"] for c in entry["gates"]) for name, entry in report["graphs"].items()}
    out = {}
    for name, ok in passed.items():
        entry = manifest.graphs.get(name)
        if ok or entry is None or entry.precision != "int8":
            continue
        peers = [n for n, good in passed.items() if good and n != name and n in manifest.graphs
                 and manifest.graphs[n].precision == "int8" and manifest.graphs[n].target == entry.target]
        if peers:
            fails = ", ".join(f"{c['name']} {c['value']:.4g} (gate {c['threshold']})"
                              for c in report["graphs"][name]["gates"] if not c["passed"])
            out[name] = f"failed the INT8 gate ({fails}); {peers[0]} of target {entry.target} passed it"
    return out


def _summary_line(name: str, metrics: dict[str, Any], checks: list[dict[str, Any]], verdict: bool = True) -> str:
    """One line of a graph's agreement with the reference, led by PASS/FAIL unless `verdict` is False."""
    ok = all(c["passed"] for c in checks)
    err, rel = metrics.get("max_logit_abs"), metrics.get("max_logit_rel")
    err_text = f", max |dlogit| {err:.2e} (relative {rel:.1e}" if err is not None else ""
    if err is not None:
        first = metrics.get("first_step_logit_rel")
        err_text += f"; first segment {first:.1e})" if first is not None else ")"
    if metrics.get("fp64_error_ratio") is not None:
        err_text += f", error vs fp64 {metrics['fp64_error_ratio']:.2f}x PyTorch fp32's"
    stable = metrics.get("rounding_stable_puzzles")
    if stable is not None and stable < metrics["puzzles"]:
        share = metrics.get("exact_agreement_stable")
        err_text += (f"; {stable} puzzle(s) rounding-stable (PyTorch fp32 = fp64), identical outputs on them "
                     f"{'-' if share is None else f'{100 * share:.1f}%'}")
    solved = metrics.get("solved_agreement")
    solved_text = f"solved agreement {100 * solved:.1f}%, " if solved is not None else ""
    lead = f"{'PASS' if ok else 'FAIL'} " if verdict else ""
    return (f"{lead}{name}: {metrics['puzzles']} puzzles, {solved_text}identical outputs "
            f"{100 * metrics['exact_agreement']:.1f}%, halting agreement {100 * metrics['halting_agreement']:.1f}%"
            f"{err_text}")


def _pinned_run(entry: Any, name: str, puzzles: int) -> dict[str, Any] | None:
    """An INT8 graph's run on the golden puzzles at export (`quantization.golden_run`, see
    `hrm_edge.parity.host_run`), checked for shape; None for graphs without one."""
    run = (entry.quantization or {}).get("golden_run")
    if run is None:
        return None
    steps, preds = (run.get("steps"), run.get("predictions")) if isinstance(run, dict) else (None, None)
    if not (isinstance(steps, list) and isinstance(preds, list) and len(steps) == len(preds) == puzzles
            and all(isinstance(v, int) and not isinstance(v, bool) for v in steps)
            and all(isinstance(v, str) and len(v) == 16 for v in preds)):
        raise BundleError(f"{MANIFEST}: graphs[{name!r}].quantization.golden_run is malformed "
                          f"(expected {puzzles} halting steps and {puzzles} 16-digit prediction hashes)")
    return run


def _rerun_checks(name: str, rerun: SolveResult, gate_set: dict[str, np.ndarray], gate_run: GateRun
                  ) -> list[dict[str, Any]]:
    """The export's parity gate of a reduced-precision graph re-run on this device: `rerun` (this
    device's run on the gate's puzzles) against the fp32 reference's recorded run (`GATE_SET`), under
    the precision's default closed-loop gates (no logits are recorded); printed as one line."""
    n = len(gate_set["steps"])
    recorded = SolveResult(gate_set["predictions"], gate_set["steps"], np.zeros(n), np.zeros(n))
    metrics = compare(recorded, rerun, gate_set["labels"] if gate_set["labels"].any() else None)
    gated = gate(metrics, with_overrides(DEFAULT_GATES[gate_run.precision], False))
    click.echo(f"{_summary_line(name, metrics, gated)} (the export's {gate_run.precision.upper()} gate, re-run here "
               f"on its {gate_run.data} puzzles)")
    return gated


def _host_checks(name: str, res: SolveResult, pinned: dict[str, Any], labels: np.ndarray | None
                 ) -> list[dict[str, Any]]:
    """An INT8 graph's run on the golden puzzles against the export host's (`hrm_edge.parity.host_checks`:
    the same puzzles solved; halting steps and identical outputs reported), printed as one line. The
    halting rate is judged by the re-run gate (`_rerun_checks`), on enough puzzles: the maze demo's INT8
    graphs on ONNX Runtime 1.20.1 against their 1.32 export host halt elsewhere on 2.7-3.5% of 256
    mazes (all 16 golden mazes would agree only about 56% of the time), while keeping 96.5-97.7% of
    fp32's halting steps, inside the 95% gate."""
    checks = host_checks(res, pinned, labels)
    click.echo(f"{'PASS' if all(c['passed'] for c in checks) else 'FAIL'} {name}: as on the export host, "
               + ", ".join(f"{c['name'].removeprefix('host_').replace('_', ' ')} {100 * c['value']:.1f}%"
                           + ("" if c["threshold"] is not None else " (reported)") for c in checks))
    return checks


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--runtime", type=click.Choice([*RUNTIMES, "torch"]), default="ort", show_default=True)
@click.option("--graph", "graphs", multiple=True,
              help="Graphs to check (default: every graph the runtime runs; ort: the fused CPU graph included).")
@click.option("--engine", type=click.Path(exists=True), help="TensorRT engine (runtime trt).")
@click.option("--checkpoint", type=click.Path(exists=True), help="Source checkpoint (runtime torch).")
@click.option("--expect", help="The bundle digest export printed (sha256:<hex>): fail on any other bundle.")
@click.option("--public-key", type=click.Path(exists=True, dir_okay=False),
              help="Ed25519 public key (PEM): fail unless manifest.sig is its signature of the bundle digest.")
@click.option("--strict", is_flag=True, help="Fail on files the manifest does not list (default: a warning).")
def verify(bundle: str, runtime: str, graphs: tuple[str, ...], engine: str | None, checkpoint: str | None,
           expect: str | None, public_key: str | None, strict: bool) -> None:
    """Re-check BUNDLE: its digest (and signature), file hashes, then the golden puzzles on a runtime.

    Without --expect or --public-key this proves the files match the manifest and the golden puzzles
    reproduce (integrity against accidents); with them, that BUNDLE is exactly the one exported."""
    b = open_bundle(bundle, verify_hashes=False)
    click.echo(f"bundle digest: {b.manifest.digest}")
    if expect:
        check_digest(b, expect)
        click.echo("digest matches --expect")
    if public_key:
        check_signature(b, public_key)
        click.echo(f"signature OK: {SIGNATURE} signed by {public_key}")
    verify_files(b)
    unlisted = unlisted_files(b)
    if unlisted:
        message = f"{len(unlisted)} file(s) in {b.path} not listed in the manifest: {', '.join(unlisted[:8])}"
        if strict:
            raise BundleError(message)
        click.echo(f"warning: {message} (not covered by the digest; --strict fails on them)", err=True)
    info = b.manifest.need_reference()
    ref = b.reference()
    policy, steps = parse_policy(info.policy), info.max_steps
    labels = ref["labels"] if ref["labels"].any() else None
    reference = golden_result(ref)
    failures = []
    click.echo(f"{b.path}: {len(b.manifest.files)} files, sha256 OK")
    for run in b.manifest.gates:
        left_out = f"; left out, failed: {', '.join(run.dropped)}" if run.dropped else ""
        click.echo(f"gate at export: {run.name} {run.precision} on {run.puzzles} {run.data} puzzles "
                   f"({', '.join(run.graphs)}{left_out}): {'PASS' if run.passed else 'FAIL'}")
    # The export's parity gate of each reduced precision, kept with its puzzles (GATE_SET) to re-run here
    gate_runs = {r.precision: r for r in b.manifest.gates if r.file and r.precision in ("fp16", "int8")}
    gate_sets: dict[str, dict[str, np.ndarray]] = {}
    reruns: dict[str, SolveResult] = {}
    if runtime == "torch":
        from hrm_edge.act import solve_in_batches
        from hrm_edge.model.runner import TorchSegmentRunner

        src = checkpoint or _source_path(b)
        if not src or not Path(src).exists():
            raise BundleError("runtime torch re-runs the source checkpoint: pass --checkpoint")
        ck = load_for_cli(src, b.task, None)
        res = solve_in_batches(TorchSegmentRunner(ck.model.set_compute_dtype("float32")), ref["inputs"],
                               ref["puzzle_ids"], policy, steps, 64, record_steps=True, record_logits=True)
        runs = {"torch.fp32": (res, with_overrides(DEFAULT_GATES["fp32"], True, max_logit_rel=1e-6), "fp32")}
    else:
        from hrm_edge.runtimes.solver import GraphSolver, runnable_graphs

        names = graphs or tuple(runnable_graphs(b, runtime))
        gate_sets = {p: b.gate_set(r) for p, r in gate_runs.items() if any(b.graph(n).precision == p for n in names)}
        runs = {}
        for name in names:
            solver = GraphSolver(b, name, runtime, engine=engine)
            prec = solver.entry.precision
            res = solver.solve(ref["inputs"], ref["puzzle_ids"], policy, steps, record_logits=solver.kind == "segment")
            if prec in gate_sets:
                run = gate_runs[prec]
                click.echo(f"re-running the export's {prec.upper()} gate: {name} on {run.puzzles} {run.data} "
                           "puzzles ...", err=True)
                batch = 64  # puzzles per chunk, for the solve and its progress alike
                with ClosedLoopProgress(f"{name} on {runtime}", len(gate_sets[prec]["inputs"]), batch,
                                        run.max_steps) as bar:
                    reruns[name] = solver.solve(gate_sets[prec]["inputs"], gate_sets[prec]["puzzle_ids"],
                                                parse_policy(run.policy), run.max_steps, batch, progress=bar)
            runs[name] = (res, with_overrides(VERIFY_GATES[prec], solver.kind == "segment"), prec)
    for name, (res, gates, prec) in runs.items():
        metrics = compare(reference, res, labels)
        checks = gate(metrics, gates)
        pinned = _pinned_run(b.graph(name), name, len(ref["inputs"])) if name in b.graphs else None
        if name in reruns or pinned is not None:
            # a reduced precision's rate gates need more puzzles than the golden ones: reported here
            click.echo(f"{_summary_line(name, metrics, checks, verdict=False)} (against fp32: reported; the golden "
                       f"puzzles are too few for the {prec.upper()} gate)")
            checks = _host_checks(name, res, pinned, labels) if pinned is not None else []
            if name in reruns:
                checks += _rerun_checks(name, reruns[name], gate_sets[prec], gate_runs[prec])
        else:
            click.echo(_summary_line(name, metrics, checks))
        failures += [f"{name}: {c['name']}" for c in checks if not c["passed"]]
    if failures:
        raise HrmEdgeError(f"verify failed ({len(failures)} gate(s)): {'; '.join(failures[:4])}")


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--checkpoint", type=click.Path(exists=True), help="Reference checkpoint (default: the bundle's source).")
@click.option("--data", type=click.Path(exists=True), help="Puzzle set (default: calib_data/<task>).")
@click.option("--split", default="val", show_default=True)
@click.option("--limit", type=click.IntRange(1), help="Use only the first N puzzles.")
@click.option("--graph", "graphs", multiple=True,
              help="Graphs to compare (default: every graph of --precision the runtime runs; ort: the fused CPU "
                   "graph included).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "all"]), multiple=True, default=("all",),
              show_default=True, help="Graphs of this precision (repeatable).")
@click.option("--runtime", type=click.Choice(RUNTIMES), default="ort", show_default=True)
@click.option("--engine", type=click.Path(exists=True), help="TensorRT engine (runtime trt).")
@click.option("--policy", help="Halting policy (default: the bundle's).")
@click.option("--max-steps", type=click.IntRange(1, MAX_SEGMENTS), help="Segment cap (default: the bundle's).")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--out", "out_dir", type=click.Path(), default="parity_out", show_default=True)
@click.option("--max-logit-rel", type=float,
              help="Gate: per-step max |dlogit| / max |reference logit| (segment graphs; fp32 default 1e-5, "
                   "reported only when the fp64 floor runs).")
@click.option("--fp64-floor/--no-fp64-floor", default=True, show_default=True,
              help="Also run the reference in float64 and gate fp32 graphs on their error against it, relative to "
                   "PyTorch fp32's own, and their outputs and halting on the puzzles whose answer rounding does "
                   "not decide (README: Parity gates).")
@click.option("--max-fp64-error-ratio", type=float,
              help="Gate: candidate-vs-fp64 over PyTorch-fp32-vs-fp64 per-step max error (fp32 default 2).")
@click.option("--min-exact-agreement", type=float, help="Gate: share of identical outputs.")
@click.option("--min-solved-agreement", type=float,
              help="Gate: share of puzzles both sides solve or both fail (labelled data; int8/fp16 default 0.99).")
@click.option("--min-halting-agreement", type=float, help="Gate: share of identical halting steps.")
@click.option("--max-accuracy-drop", type=float, help="Gate: exact-accuracy drop vs the reference (0.005 = 0.5 pt).")
@click.option("--open-loop", is_flag=True,
              help="Instead: feed each segment graph the reference carry of every step (for random weights).")
@click.option("--max-abs", type=float, default=1e-4, show_default=True, help="Open-loop gate on every output.")
@click.option("--server", help="Candidate: the solver model served at this URL (http://HOST:PORT or grpc://HOST:PORT; "
              "`hrm-edge serve`, or Triton on a device); the reference runs here. Closed-loop gates only (the server "
              "returns no per-step logits): --precision picks the served graph's gates (default fp32).")
@click.option("--save-reference", type=click.Path(dir_okay=False),
              help="Also write the puzzles and the fp32 reference's run on them (predictions, halting steps) to this "
                   ".npz, in the form `verify` re-runs a gate from (export keeps it as gate_set.npz).")
def parity(bundle: str, checkpoint: str | None, data: str | None, split: str, limit: int | None,
           graphs: tuple[str, ...], precision: tuple[str, ...], runtime: str, engine: str | None, policy: str | None,
           max_steps: int | None, batch_size: int, out_dir: str, max_logit_rel: float | None, fp64_floor: bool,
           max_fp64_error_ratio: float | None, min_exact_agreement: float | None,
           min_solved_agreement: float | None, min_halting_agreement: float | None,
           max_accuracy_drop: float | None, open_loop: bool, max_abs: float, server: str | None,
           save_reference: str | None = None) -> None:
    """Closed-loop parity of bundle graphs against the PyTorch fp32 reference; non-zero exit on a failed gate."""
    from hrm_edge.act import solve_in_batches
    from hrm_edge.model.runner import TorchSegmentRunner
    from hrm_edge.runtimes.solver import GraphSolver, runnable_graphs

    if server and (graphs or open_loop):
        raise click.UsageError("--server gates what the server serves: not with --graph or --open-loop")
    if server and len(precision) > 1:
        raise click.UsageError("--server: one --precision, the served graph's")
    everything = "all" in precision
    check_output_dir(out_dir, "--out directory")  # before minutes of computing
    b = open_bundle(bundle)
    src = checkpoint or _source_path(b)
    if not src or not Path(src).exists():
        raise BundleError("parity needs the reference checkpoint: pass --checkpoint")
    if server:
        from hrm_edge.cli.serve import connect_candidate

        remote = connect_candidate(server, b)  # before minutes of reference work
    ck = load_for_cli(src, b.task, None)
    pset = _puzzle_set(data, b.task, split, limit)
    halting = parse_policy(policy or b.manifest.need_halting().default_policy)
    steps = max_steps or b.manifest.need_halting().max_steps
    names = ("server",) if server else graphs or tuple(n for n in runnable_graphs(b, runtime)
                                                       if everything or b.graphs[n].precision in precision)
    if not names:
        raise BundleError(f"{b.path}: no {' or '.join(precision)} graph to compare")
    if open_loop:
        _open_loop(b, ck, pset, names, steps, max_abs, Path(out_dir))
        return
    click.echo(f"reference: torch cpu fp32 on {len(pset)} {pset.task} {pset.split} puzzles, policy {halting}, "
               f"max_steps {steps}", err=True)
    with ClosedLoopProgress("reference torch fp32", len(pset), batch_size, steps) as bar:
        reference = solve_in_batches(TorchSegmentRunner(ck.model.set_compute_dtype("float32")), pset.inputs,
                                     pset.puzzle_ids, halting, steps, batch_size, record_steps=True,
                                     record_logits=True, progress=bar)
    if save_reference:
        labels = pset.labels if pset.labels is not None else np.zeros_like(pset.inputs)
        np.savez_compressed(save_reference, inputs=pset.inputs, puzzle_ids=pset.puzzle_ids, labels=labels,
                            predictions=reference.predictions, steps=reference.steps)
    fp64 = None
    if fp64_floor and not server and any(b.graph(n).precision == "fp32" and b.graph(n).kind == "segment"
                                         for n in names):
        import copy

        import torch

        click.echo("reference in float64 (the fp64 floor) ...", err=True)
        exact = copy.deepcopy(ck.model).double().set_compute_dtype(torch.float64)
        with ClosedLoopProgress("reference torch fp64", len(pset), batch_size, steps) as bar:
            fp64 = solve_in_batches(TorchSegmentRunner(exact), pset.inputs, pset.puzzle_ids, halting, steps,
                                    batch_size, record_steps=True, record_logits=True, progress=bar)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"bundle": str(b.path), "checkpoint": str(src), "data": f"{pset.task} {pset.split}",
                              "puzzles": len(pset), "policy": str(halting), "max_steps": steps,
                              "runtime": f"server {server}" if server else runtime,
                              "fp64_floor": fp64 is not None, "graphs": {}}
    suites = []
    failed = []
    for name in names:
        if server:
            click.echo(f"running the candidate on {server} ...", err=True)
            cand = remote.solve(pset.inputs, pset.puzzle_ids, halting, steps, batch_size)
            remote.close()
            kind, prec, where = "remote", "fp32" if everything else precision[0], server
        else:
            solver = GraphSolver(b, name, runtime, engine=engine)
            click.echo(f"running {name} on {runtime} ...", err=True)
            with ClosedLoopProgress(f"{name} on {runtime}", len(pset), batch_size, steps) as bar:
                cand = solver.solve(pset.inputs, pset.puzzle_ids, halting, steps, batch_size,
                                    record_logits=solver.kind == "segment", progress=bar)
            kind, prec, where = solver.kind, solver.entry.precision, runtime
        gates = with_overrides(DEFAULT_GATES[prec], kind == "segment",
                               max_logit_rel=max_logit_rel, max_fp64_error_ratio=max_fp64_error_ratio,
                               min_exact_agreement=min_exact_agreement, min_solved_agreement=min_solved_agreement,
                               min_halting_agreement=min_halting_agreement, max_accuracy_drop=max_accuracy_drop)
        metrics = compare(reference, cand, pset.labels, fp64=fp64 if prec == "fp32" else None)
        if metrics.get("fp64_error_ratio") is not None and max_logit_rel is None:
            gates = dataclasses.replace(gates, max_logit_rel=None)  # the fp64 floor replaces the fixed bound
        checks = gate(metrics, gates)
        entry = {"metrics": metrics, "gates": checks, "candidate": f"{name} on {where}", "precision": prec,
                 "reference": "torch fp32"}
        report["graphs"][name] = entry
        plot_parity(entry, str(out / f"parity-{name}.png"))
        suites.append(junit_xml(f"parity.{name}", checks))
        click.echo(_summary_line(name, metrics, checks))
        failed += [f"{name}: {c['name']} {c['value']} vs {c['threshold']}" for c in checks if not c["passed"]]
    (out / "parity.json").write_text(json.dumps(report, indent=2))
    (out / "parity.xml").write_text("<testsuites>" + "".join(suites) + "</testsuites>\n")
    click.echo(f"wrote {out / 'parity.json'}, {out / 'parity.xml'} and {len(names)} PNG(s)")
    if failed:
        raise HrmEdgeError(f"parity gate failed: {'; '.join(failed[:4])}")


def _source_path(b: Bundle) -> str | None:
    """The bundle's source checkpoint as recorded at export (absolute), or None."""
    return b.manifest.source_checkpoint.path if b.manifest.source_checkpoint else None


def _open_loop(b: Bundle, ck: Any, pset: Any, names: tuple[str, ...], steps: int, max_abs: float, out: Path) -> None:
    """`parity --open-loop`: per-step, per-output max-abs errors of each segment graph."""
    from hrm_edge.export.open_loop import open_loop_errors
    from hrm_edge.runtimes.ort.loader import make_embed_session, make_session

    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"bundle": str(b.path), "mode": "open loop", "puzzles": len(pset), "steps": steps,
                              "max_abs_gate": max_abs, "graphs": {}}
    failed = []
    model = ck.model.set_compute_dtype("float32")
    for name in names:
        entry = b.graph(name)
        if entry.kind != "segment":
            continue
        embed = make_embed_session(b.graph_path(entry.embed_graph)) if entry.embed_graph else None
        rows = open_loop_errors(model, make_session(b.graph_path(name)), pset.inputs, pset.puzzle_ids, steps,
                                b.model_puzzle_ids(pset.puzzle_ids), embed_session=embed)
        worst = max(max(r[k] for k in ("logits", "q_halt", "q_continue", "z_H_out", "z_L_out")) for r in rows)
        report["graphs"][name] = {"per_step": rows, "max_abs": worst, "passed": worst <= max_abs}
        click.echo(f"{'PASS' if worst <= max_abs else 'FAIL'} {name} open loop: {steps} steps x {len(pset)} puzzles, "
                   f"max |d| over logits, q, z_H, z_L = {worst:.2e} (gate {max_abs:g})")
        if worst > max_abs:
            failed.append(f"{name}: {worst:.2e}")
    (out / "parity_open_loop.json").write_text(json.dumps(report, indent=2))
    if failed:
        raise HrmEdgeError(f"open-loop parity gate failed: {'; '.join(failed)}")


@click.command()
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Directory for the key pair (created; existing keys are never overwritten).")
def keygen(output: str) -> None:
    """Make an Ed25519 key pair to sign bundles: OUTPUT/bundle-signing.key.pem (private, mode 0600; for
    `export --sign`, keep it off the devices) and OUTPUT/bundle-signing.pub.pem (for `verify --public-key`)."""
    from hrm_edge.signing import write_key_pair

    private, public = write_key_pair(output)
    click.echo(f"wrote {private} (private: keep it secret) and {public} (public: pin it on the devices)")

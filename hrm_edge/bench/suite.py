"""`hrm-edge bench`: speed and accuracy of every CPU runtime against the official behaviour.

The baseline of every comparison is the official behaviour: PyTorch eager fp32 running the
`fixed` policy to the model's `halt_max_steps`, measured in the same run, at the same batch size.
For each model, runtime configuration and batch size a worker process (`hrm_edge.bench.worker`)
measures the time of one segment on a full batch (p50/p90 over many calls) and, per halting
policy, an end-to-end solve of a puzzle set (latency per batch, puzzles/s, mean segments used,
exact accuracy). The machine's GEMM peaks (fp32, bf16, int8) are measured by the bench itself,
so a segment's achieved GOP/s is reported as a fraction of what this machine can do.

Runtime configurations (`RUNTIMES`; rows that cannot run are listed with the reason):

- torch-fp32 (the baseline), torch-bf16: `TorchSegmentRunner` (bf16: weights stored in bf16);
- ort-fp32: the portable standard-op segment graph as a bundle ships it (tokens in, embedding
  recomputed every segment), driven by `OrtSegmentRunner`;
- ort-fp32-cpufused[/unrolledK|/loop]: `hrm_edge.export.fuse` applied to the segment graph
  taking x (embedding once per batch) and driven by `CpuSegmentRunner` (IOBinding, carry never
  copied), or to the K-unrolled / whole-ACT `Loop` graphs;
- ort-int8 (+ @1t): when the model is given as a bundle with a `segment.int8-cpu` graph (or with
  `--int8-graph`), that graph fused after quantization; otherwise the bench's fallback,
  `quantize_dynamic` (u8 activations, s8 per-channel weights, MatMul only) of the fused graph
  ("fuse, then quantize");
  ort-int8-shipped: the bundle's INT8 graph as shipped (unfused; skipped without one);
  ort-int8-qf: the other order on the fallback: quantize the standard graph (weight transposes
  folded first, so the quantizer sees MatMul weights as initializers), then fuse;
  ort-int8/unrolledK, ort-int8/loop: that quantized standard graph composed into the unrolled /
  Loop graph, then fused (`quantize_dynamic` does not quantize inside a Loop body);
- *@1t: the same graph with one intra-op thread;
- openvino: only when the `openvino` package imports; tensorrt: only where TensorRT is installed
  (this CPU bench then lists it as skipped).

Graphs are exported once per checkpoint (sha256) into `<out>/cache`. `--pause-training` stops
the local training processes (`hrm-edge train`) with SIGSTOP while each worker runs (at most
`--pause-max` seconds at a time, resumed in a `finally` and by a detached watchdog) so they do
not share the cores with the measurement; every timing window also records the CPU share other
processes used ("contention"), and p50s over clean windows are reported next to the plain ones.

Outputs under `--out`: `bench.json` (schema in bench/README.md), `bench.md` (the tables) and per
model `<model>-latency_vs_batch.png`, `<model>-accuracy_vs_speed.png`, `<model>-segments_hist.png`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np

from hrm_edge.errors import HrmEdgeError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = Path("bench/results")
# The demo checkpoint of `make bench`: the committed one once it exists, meanwhile a snapshot of
# the local training run (copied into the cache, since training keeps rewriting it).
DEMO_CHECKPOINTS = (REPO / "checkpoints" / "sudoku6-demo" / "model.pt", Path("/work/runs/sudoku6-demo/model.pt"))
TRM_DEMO = REPO / "checkpoints" / "trm-sudoku6-demo" / "model.pt"  # the TRM row beside the HRM demo
BIG_PRESET = "sudoku-27m"
PREP_VERSION = 6  # bump when the cached graphs change
PAUSE_PATTERN = "hrm-edge train"
SCHEMA = 1

BASELINE = "torch-fp32"


@dataclasses.dataclass(frozen=True)
class Runtime:
    """A runtime configuration: `name` as in the tables; `variant` segment | unrolled | loop."""

    name: str
    engine: str  # torch | ort | openvino | tensorrt
    precision: str  # fp32 | bf16 | int8
    graph: str = "-"  # torch: "-"; ort: standard | cpufused | int8 source
    variant: str = "segment"
    runner: str = "numpy"  # ort segment graphs: numpy (OrtSegmentRunner) | iobinding (CpuSegmentRunner)
    threads: int | None = None  # None: --threads (physical cores by default)


def runtimes(unroll: int) -> dict[str, Runtime]:
    rts = [
        Runtime(BASELINE, "torch", "fp32"),
        Runtime("torch-bf16", "torch", "bf16"),
        Runtime("ort-fp32", "ort", "fp32", "standard"),
        Runtime("ort-fp32-cpufused", "ort", "fp32", "cpufused", runner="iobinding"),
        Runtime(f"ort-fp32-cpufused/unrolled{unroll}", "ort", "fp32", "cpufused", "unrolled"),
        Runtime("ort-fp32-cpufused/loop", "ort", "fp32", "cpufused", "loop"),
        Runtime("ort-fp32-cpufused@1t", "ort", "fp32", "cpufused", runner="iobinding", threads=1),
        Runtime("ort-int8", "ort", "int8", "cpufused", runner="iobinding"),
        Runtime("ort-int8@1t", "ort", "int8", "cpufused", runner="iobinding", threads=1),
        Runtime("ort-int8-shipped", "ort", "int8", "shipped", runner="iobinding"),
        Runtime("ort-int8-qf", "ort", "int8", "quantize-then-fuse", runner="iobinding"),
        Runtime(f"ort-int8/unrolled{unroll}", "ort", "int8", "cpufused", "unrolled"),
        Runtime("ort-int8/loop", "ort", "int8", "cpufused", "loop"),
        Runtime("openvino-fp32", "openvino", "fp32", "standard"),
        Runtime("tensorrt", "tensorrt", "fp16", "standard"),
    ]
    return {r.name: r for r in rts}


QUICK_RUNTIMES = (BASELINE, "ort-fp32", "ort-fp32-cpufused", "ort-int8")


def _log(msg: str) -> None:
    click.echo(msg, err=True)


# ----------------------------------------------------------------------------------------------
# pausing the training processes


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def find_processes(pattern: str) -> list[int]:
    """PIDs whose command line contains `pattern` (never this process or its ancestors)."""
    mine = _ancestors()
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        line = " ".join(a.decode(errors="replace") for a in argv if a)
        # a shell whose script mentions the pattern is not the process itself
        exe = Path(argv[0].decode(errors="replace")).name if argv and argv[0] else ""
        if pattern in line and exe not in ("sh", "bash", "dash", "zsh", "timeout", "pgrep", "grep"):
            found.append(int(entry.name))
    return sorted(found)


class Pauser:
    """SIGSTOP processes matching `patterns` while a measurement runs, for at most `max_seconds`
    (a detached watchdog sends SIGCONT even if this process dies); SIGCONT in a `finally`."""

    def __init__(self, patterns: tuple[str, ...], max_seconds: float) -> None:
        self.patterns, self.max_seconds = patterns, max_seconds
        self.paused_seconds = 0.0

    @contextlib.contextmanager
    def paused(self) -> Iterator[list[int]]:
        pids = sorted({p for pat in self.patterns for p in find_processes(pat)}) if self.patterns else []
        if not pids:
            yield []
            return
        ids = " ".join(map(str, pids))
        watchdog = subprocess.Popen(["sh", "-c", f"sleep {int(self.max_seconds)}; kill -CONT {ids} 2>/dev/null"],
                                    start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        try:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGSTOP)
            yield pids
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGCONT)
            watchdog.kill()
            watchdog.wait()
            self.paused_seconds += time.monotonic() - t0


def wait_quiet(max_wait: float, threshold: float = 0.15) -> float | None:
    """Wait (up to `max_wait` s) until other processes use < `threshold` of the cores; last share."""
    from hrm_edge.bench.worker import foreign_load

    deadline = time.monotonic() + max_wait
    share = foreign_load(0.3)
    while share is not None and share >= threshold and time.monotonic() < deadline:
        share = foreign_load(0.5)
    return share


# ----------------------------------------------------------------------------------------------
# workers


def run_worker(job: dict[str, Any], pauser: Pauser, timeout: float, quiet_wait: float) -> dict[str, Any]:
    """Run one worker job (see `hrm_edge.bench.worker`); returns its result or {"error": ...}."""
    from hrm_edge.bench.worker import RESULT_MARK

    quiet = wait_quiet(quiet_wait) if quiet_wait > 0 else None
    cmd = [sys.executable, "-m", "hrm_edge.bench.worker"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    t0 = time.monotonic()
    with pauser.paused() as pids:
        try:
            proc = subprocess.run(cmd, input=json.dumps(job), capture_output=True, text=True, timeout=timeout,
                                  env=env, cwd=str(REPO))
        except subprocess.TimeoutExpired:
            return {"error": f"worker timed out after {timeout:.0f} s"}
    wall = time.monotonic() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"worker exit {proc.returncode}: {tail[:300]}"}
    result = json.loads(lines[-1][len(RESULT_MARK):])
    result["worker_wall_s"] = round(wall, 2)
    result["paused_pids"] = len(pids)
    result["paused_throughout"] = bool(pids) and wall < pauser.max_seconds
    result["foreign_before"] = quiet
    return result


class Worker:
    """A persistent `hrm_edge.bench.worker --serve` process holding one loaded runtime configuration."""

    def __init__(self, job: dict[str, Any], timeout: float) -> None:
        import tempfile

        self.timeout = timeout
        self._err = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen([sys.executable, "-m", "hrm_edge.bench.worker", "--serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True,
                                     bufsize=1, cwd=str(REPO), env={**os.environ, "PYTHONWARNINGS": "ignore"})
        self.error: str | None = None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        self.loaded: dict[str, Any] | None = None  # the load reply: `wait_loaded()`

    def wait_loaded(self) -> dict[str, Any]:
        if self.loaded is None:
            self.loaded = self._read()
        return self.loaded

    def _read(self) -> dict[str, Any]:
        import selectors

        from hrm_edge.bench.worker import RESULT_MARK

        if self.error:
            return {"error": self.error}
        deadline = time.monotonic() + self.timeout
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            while time.monotonic() < deadline:
                if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    break
                line = self.proc.stdout.readline()
                if not line:  # the worker died
                    self._err.seek(0)
                    tail = (self._err.read().strip().splitlines() or ["no output"])[-1]
                    self.error = f"worker exit {self.proc.wait()}: {tail[:300]}"
                    return {"error": self.error}
                if line.startswith(RESULT_MARK):
                    out = json.loads(line[len(RESULT_MARK):])
                    if "error" in out:
                        self.error = out["error"]
                    return out
            self.error = f"worker timed out after {self.timeout:.0f} s"
            self.proc.kill()
            return {"error": self.error}
        finally:
            sel.close()

    def request(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.wait_loaded()
        if self.error:
            return {"error": self.error}
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self.proc.poll() is None:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:  # busy (interrupted mid-request): kill it
            self.proc.kill()
            self.proc.wait()
        self._err.close()


# ----------------------------------------------------------------------------------------------
# models and graphs


@dataclasses.dataclass
class Model:
    """One model under test and its prepared graphs."""

    name: str
    checkpoint: Path
    config: Any
    task: str
    trained: bool
    graphs: dict[str, str]  # role -> path
    prep: dict[str, Any]

    @property
    def max_steps(self) -> int:
        return int(self.config.halt_max_steps)


def _sha256(path: Path) -> str:
    from hrm_edge.bundle import sha256_file

    return sha256_file(path)


def resolve_standard_models(cache: Path) -> list[Path]:
    """The standard suite: the Sudoku demo checkpoint (a snapshot), the TRM demo trained on the same
    data (when shipped), and a seeded 27M model."""
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    env = os.environ.get("HRM_EDGE_DEMO_CKPT")
    demo = next((p for p in ((Path(env),) if env else DEMO_CHECKPOINTS) if p.is_file()), None)
    if demo is None:
        _log("bench: no demo checkpoint (checkpoints/sudoku6-demo/model.pt); skipping it")
    elif demo.is_relative_to(REPO):
        out.append(demo)
    else:  # a checkpoint still being trained: freeze the current state for this run
        snap = cache / "sudoku6-demo-snapshot.pt"
        shutil.copyfile(demo, snap)
        out.append(snap)
    if TRM_DEMO.is_file() and not env:
        out.append(TRM_DEMO)
    big = cache / f"{BIG_PRESET}-seed0.pt"
    if not big.is_file():
        _log(f"bench: writing seeded {BIG_PRESET} weights to {big}")
        import torch

        from hrm_edge.model import create_model
        from hrm_edge.model.checkpoint import guess_task, save_checkpoint
        from hrm_edge.model.config import preset_config

        config = preset_config(BIG_PRESET)
        torch.manual_seed(0)
        save_checkpoint(big, create_model(config), guess_task(config.seq_len, config.vocab_size),
                        provenance={"init": BIG_PRESET, "seed": 0},
                        card={"weights": "random (seed 0); untrained, for speed tests only"})
    out.append(big)
    return out


def resolve_model_arg(path: Path) -> tuple[Path, Path | None]:
    """(checkpoint, shipped INT8 graph or None) for a checkpoint file or a bundle directory."""
    if not path.is_dir():
        return path, None
    from hrm_edge.bundle import open_bundle

    b = open_bundle(path, verify_hashes=False)
    src = b.manifest.source_checkpoint.path if b.manifest.source_checkpoint else None
    if not src or not Path(src).is_file():
        raise HrmEdgeError(f"{path}: the bundle's source checkpoint {src!r} is not on this machine; pass the "
                           "checkpoint and --int8-graph <bundle>/segment.int8-cpu.onnx instead")
    int8 = b.graph_path("segment.int8-cpu") if "segment.int8-cpu" in b.graphs else None
    return Path(src).resolve(), int8


def _quantize_dynamic(src: Path, dst: Path) -> None:
    import logging

    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)
    # DefaultTensorType: ONNX shape inference cannot type the outputs of contrib ops (fused graphs)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"], extra_options={"DefaultTensorType": TensorProto.FLOAT})


def _parity(a: str, b: str, x_feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """Max-abs output differences of two graphs on the same feeds (one segment)."""
    from hrm_edge.bench.worker import ort_session

    sa, sb = ort_session(a, 1), ort_session(b, 1)
    names = [o.name for o in sa.get_outputs()]
    oa, ob = sa.run(names, x_feeds), sb.run(names, x_feeds)
    return {n: float(np.abs(u.astype(np.float64) - v.astype(np.float64)).max()) for n, u, v in zip(names, oa, ob,
                                                                                                   strict=True)}


def prepare_model(path: Path, cache: Path, unroll: int, int8_graph: Path | None, need: set[str],
                  log: Callable[[str], None] = _log) -> Model:
    """Export (once per checkpoint sha256) the graphs the runtimes in `need` use."""
    from hrm_edge.model.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    sha = _sha256(path)
    cfg = ck.config
    trained = "untrained" not in json.dumps(ck.card or {}) and "init" not in (ck.provenance or {})
    stem = path.stem if path.stem not in ("model", "checkpoint") else path.parent.name
    name = f"{stem}"
    work = cache / f"{stem}-{sha[:12]}-p{PREP_VERSION}-k{unroll}"
    work.mkdir(parents=True, exist_ok=True)
    prep_file = work / "prep.json"
    prep: dict[str, Any] = json.loads(prep_file.read_text()) if prep_file.is_file() else {}
    prep.setdefault("sha256", sha)
    prep.setdefault("seconds", {})
    g = {k: str(work / v) for k, v in {
        "seg": "segment.fp32.onnx", "segx": "segment-x.fp32.onnx", "embed": "embed.fp32.onnx",
        "carry": "carry_init.npz", "fused": "segment-x.fp32-cpufused.onnx",
        "unrolled_fused": f"unrolled{unroll}-x.fp32-cpufused.onnx", "loop_fused": "act_loop.fp32-cpufused.onnx",
        "int8": "segment-x.int8-cpufused.onnx", "int8_qf": "segment-x.int8-quantized-then-fused.onnx",
        "int8_std": "segment-x.int8-standard.onnx",
        "unrolled_int8": f"unrolled{unroll}-x.int8-cpufused.onnx", "loop_int8": "act_loop.int8-cpufused.onnx",
    }.items()}

    def step(key: str, fn: Callable[[], Any]) -> None:
        if Path(g[key]).is_file():
            return
        t0 = time.perf_counter()
        log(f"  {name}: building {Path(g[key]).name} ...")
        info = fn()
        prep["seconds"][key] = round(time.perf_counter() - t0, 2)
        if info is not None:
            prep.setdefault("fuse", {})[key] = info
        prep_file.write_text(json.dumps(prep, indent=2))

    from hrm_edge.export import graphs
    from hrm_edge.export.fuse import fuse_graph, fuse_model

    model = ck.model.float().eval()
    wants = {r.split("/")[0] for r in need}

    def save_carry() -> None:
        carry = graphs.export_initial_carry(model)
        np.savez(g["carry"], H_init=carry["H_init"], L_init=carry["L_init"])

    step("carry", save_carry)
    if "ort-fp32" in wants or "openvino-fp32" in wants:
        step("seg", lambda: graphs.export_segment(model, g["seg"]) and None)
    ort_x = any(w.startswith("ort-") and w != "ort-fp32" for w in wants)
    if ort_x:
        step("segx", lambda: graphs.export_segment(model, g["segx"], embed_inside=False) and None)
        step("embed", lambda: graphs.export_embed(model, g["embed"]) and None)
        step("fused", lambda: fuse_graph(g["segx"], g["fused"]).to_dict())
    import onnx

    def fuse_to(proto: onnx.ModelProto, dst: str) -> dict[str, Any]:
        fused, report = fuse_model(proto)
        onnx.save(fused, dst)
        return report.to_dict()

    def carry() -> tuple[np.ndarray, np.ndarray]:
        c = np.load(g["carry"])
        return c["H_init"], c["L_init"]

    fp32_variants = {r.split("/")[1] for r in need if r.startswith("ort-fp32-cpufused/")}
    int8_variants = {r.split("/")[1] for r in need if r.startswith("ort-int8/")}
    if any(v.startswith("unrolled") for v in fp32_variants):
        step("unrolled_fused", lambda: fuse_to(graphs.compose_unrolled(g["segx"], unroll), g["unrolled_fused"]))
    if "loop" in fp32_variants:
        step("loop_fused", lambda: fuse_to(graphs.compose_act_loop(g["segx"], *carry(), embed=g["embed"]),
                                           g["loop_fused"]))
    fallback = ("bench fallback: onnxruntime quantize_dynamic (u8 activations, s8 per-channel weights, MatMul "
                "only) of the fused graph (fuse, then quantize)")
    if int8_graph is not None:
        g["int8_shipped"] = str(int8_graph)
        prep["int8_shipped_source"] = str(int8_graph)
    if "ort-int8" in wants:
        if int8_graph is not None:
            g["int8"] = str(work / f"int8-shipped-{_sha256(int8_graph)[:12]}.cpufused.onnx")
            step("int8", lambda: fuse_graph(int8_graph, g["int8"]).to_dict())
            prep["int8_source"] = f"{int8_graph} (the quantizer's graph), fused after quantization"
        else:
            step("int8", lambda: _quantize_dynamic(Path(g["fused"]), Path(g["int8"])))
            prep["int8_source"] = fallback
    if "ort-int8-qf" in wants or int8_variants:
        def quantize_standard() -> None:
            folded, _ = fuse_model(onnx.load(g["segx"]), rmsnorm=False, attention=False, split_projections=False)
            onnx.save(folded, g["int8_std"])
            _quantize_dynamic(Path(g["int8_std"]), Path(g["int8_std"]))

        step("int8_std", quantize_standard)  # standard ops only: composable into unrolled/Loop graphs
        prep["int8_variants_source"] = ("bench fallback: quantize_dynamic of the standard x graph (weight transposes "
                                        "folded), composed into the unrolled/Loop graph, then fused")
    if "ort-int8-qf" in wants:
        step("int8_qf", lambda: fuse_graph(g["int8_std"], g["int8_qf"]).to_dict())
    if any(v.startswith("unrolled") for v in int8_variants):
        step("unrolled_int8", lambda: fuse_to(graphs.compose_unrolled(g["int8_std"], unroll), g["unrolled_int8"]))
    if "loop" in int8_variants:
        step("loop_int8", lambda: fuse_to(graphs.compose_act_loop(g["int8_std"], *carry(), embed=g["embed"]),
                                          g["loop_int8"]))
    if ort_x and "parity" not in prep:
        x = _parity_inputs(model, ck)
        prep["parity"] = {"fused_vs_standard": _parity(g["segx"], g["fused"], x)}
        for key in ("int8", "int8_qf"):
            if Path(g[key]).is_file() and _takes_x(g[key]):
                prep["parity"][f"{key}_vs_standard"] = _parity(g["segx"], g[key], x)
        prep_file.write_text(json.dumps(prep, indent=2))
    return Model(name=name, checkpoint=path, config=cfg, task=ck.task, trained=trained, graphs=g, prep=prep)


def _takes_x(path: str) -> bool:
    import onnx

    return onnx.load(path, load_external_data=False).graph.input[0].name == "x"


def _parity_inputs(model: Any, ck: Any) -> dict[str, np.ndarray]:
    import torch

    pset = _puzzle_set(ck.task, 2)
    with torch.no_grad():
        x = model.embed(torch.from_numpy(pset.inputs), torch.from_numpy(pset.puzzle_ids)).float()
        z_h, z_l = model.initial_carry(len(pset.inputs))
    return {"x": x.numpy(), "z_H": z_h.float().numpy(), "z_L": z_l.float().numpy()}


def _puzzle_dir(task: str) -> Path:
    from hrm_edge.puzzles.datasets import calib_data_dir

    return calib_data_dir(task)


def _puzzle_set(task: str, limit: int | None) -> Any:
    from hrm_edge.puzzles.datasets import load_puzzle_set

    pset = load_puzzle_set(_puzzle_dir(task), split="val")
    if limit:
        pset.inputs, pset.puzzle_ids = pset.inputs[:limit], pset.puzzle_ids[:limit]
        pset.labels = None if pset.labels is None else pset.labels[:limit]
    return pset


# ----------------------------------------------------------------------------------------------
# the suite


@dataclasses.dataclass
class Settings:
    batches: tuple[int, ...]
    policies: tuple[str, ...]
    runtimes: tuple[str, ...]
    unroll: int
    micro_seconds: float
    e2e_puzzles: int | None
    e2e_budget_gflop: float
    threads: int
    quick: bool
    profile: bool
    rounds: int
    quiet_wait: float
    worker_timeout: float
    e2e_seconds: float


def _skip_reason(rt: Runtime, has_shipped_int8: bool = True) -> str | None:
    if rt.engine == "tensorrt":
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return "TensorRT is not installed on this machine (no NVIDIA GPU); run `hrm-edge build` on a device"
        return "TensorRT rows are measured by `make gpu-test` on a device, not by this CPU bench"
    if rt.name == "ort-int8-shipped" and not has_shipped_int8:
        return "no shipped INT8 graph: give a bundle with segment.int8-cpu (hrm-edge export --int8) or --int8-graph"
    if rt.engine == "openvino":
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "openvino is not installed (optional: pip install openvino)"
        return "openvino driver not implemented in this bench"
    return None


def _job(model: Model, rt: Runtime, batch: int, s: Settings, e2e: bool, n_puzzles: int) -> dict[str, Any]:
    g = model.graphs
    job: dict[str, Any] = {
        "kind": "rows", "runtime": rt.engine, "precision": rt.precision, "variant": rt.variant, "runner": rt.runner,
        "batch": batch, "threads": rt.threads or s.threads, "policies": list(s.policies),
        "max_steps": model.max_steps,
        "checkpoint": str(model.checkpoint), "total_len": int(model.config.total_len), "e2e": e2e,
        "puzzles": {"path": str(_puzzle_dir(model.task)), "split": "val", "limit": n_puzzles},
        "micro": {"seconds": s.micro_seconds, "min_iters": 2 if s.quick else 3, "max_iters": 400,
                  "warmup": 1 if s.quick else 2},
    }
    if rt.engine == "ort":
        key = {("fp32", "standard"): "seg", ("fp32", "cpufused"): "fused", ("int8", "cpufused"): "int8",
               ("int8", "quantize-then-fuse"): "int8_qf", ("int8", "shipped"): "int8_shipped"}[(rt.precision, rt.graph)]
        if rt.variant == "unrolled":
            key = "unrolled_fused" if rt.precision == "fp32" else "unrolled_int8"
        elif rt.variant == "loop":
            key = "loop_fused" if rt.precision == "fp32" else "loop_int8"
        main = g[key]
        graphs = {"main": main, "carry": g["carry"]}
        if rt.variant != "loop" and _takes_x(main):
            graphs["embed"] = g["embed"]
        job["graphs"] = graphs
    return job


def _rows_from(model: Model, rt: Runtime, batch: int, res: dict[str, Any], peaks: dict[str, Any],
               policies: tuple[str, ...], threads: int) -> list[dict[str, Any]]:
    base = {"model": model.name, "runtime": rt.name, "engine": rt.engine, "precision": rt.precision,
            "graph": rt.graph, "variant": rt.variant, "batch": batch, "max_steps": model.max_steps,
            "threads": rt.threads or threads}
    if "error" in res or "skipped" in res:
        return [{**base, "policy": p, **({"error": res["error"]} if "error" in res else {"skipped": res["skipped"]})}
                for p in policies]
    seg = res["segment"]
    flops = model.config.segment_flops(batch)
    peak = {"fp32": peaks.get("fp32_peak_gflops"), "bf16": peaks.get("bf16_peak_gflops"),
            "int8": peaks.get("int8_peak_gops")}.get(rt.precision)
    gops = flops / (seg["p50"] / 1e3) / 1e9
    clean = seg.get("clean_p50")
    common = {
        **base, "seg_ms_p50": seg["p50"], "seg_ms_p90": seg["p90"], "seg_ms_min": seg["min"],
        "seg_ms_clean_p50": clean, "seg_iters": seg["iters"], "seg_clean_frac": seg["clean_frac"],
        "contention": seg["contention"], "gops": round(gops, 2),
        "gops_clean": round(flops / (clean / 1e3) / 1e9, 2) if clean else None,
        "peak_gops": peak, "peak_fraction": round(gops / peak, 4) if peak else None,
        "peak_fraction_clean": round(flops / (clean / 1e3) / 1e9 / peak, 4) if peak and clean else None,
        "segments_per_call": res.get("segments_per_call", 1), "load_s": res.get("load_s"),
        "paused_throughout": res.get("paused_throughout"),
    }
    rows = []
    for p in policies:
        row = {**common, "policy": p}
        e = res.get("policies", {}).get(p)
        if e:
            lat = e["batch_latency_ms"]
            row.update({"puzzle_ms_p50": lat["p50"], "puzzle_ms_p90": lat["p90"], "puzzles_per_s": e["puzzles_per_s"],
                        "mean_segments": e["mean_segments"], "exact_accuracy": e.get("exact_accuracy"),
                        "token_accuracy": e.get("token_accuracy"), "e2e_puzzles": e["puzzles"],
                        "segments_histogram": e["segments_histogram"], "e2e_contention": lat["contention"],
                        "e2e_complete": e.get("complete", True)})
        rows.append(row)
    return rows


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """Every row against the baseline (torch-fp32, policy fixed) of its model and batch size."""
    base = {(r["model"], r["batch"]): r for r in rows
            if r["runtime"] == BASELINE and r["policy"] == "fixed" and "seg_ms_p50" in r}
    for r in rows:
        b = base.get((r["model"], r["batch"]))
        if b is None or "seg_ms_p50" not in r:
            continue
        r["seg_time_vs_baseline"] = round(r["seg_ms_p50"] / b["seg_ms_p50"], 4)
        if r.get("seg_ms_clean_p50") and b.get("seg_ms_clean_p50"):
            r["seg_time_vs_baseline_clean"] = round(r["seg_ms_clean_p50"] / b["seg_ms_clean_p50"], 4)
        if r.get("puzzles_per_s") and b.get("puzzles_per_s"):
            r["puzzles_per_s_vs_baseline"] = round(r["puzzles_per_s"] / b["puzzles_per_s"], 3)
        if (r.get("exact_accuracy") is not None and b.get("exact_accuracy") is not None
                and r.get("e2e_complete") and b.get("e2e_complete")):  # same puzzles on both sides
            r["exact_accuracy_delta_pts"] = round(100 * (r["exact_accuracy"] - b["exact_accuracy"]), 2)


def _targets(rows: list[dict[str, Any]], models: list[Model]) -> dict[str, Any]:
    """The issue's three targets, evaluated on this run's rows (best row of each kind)."""
    out: dict[str, Any] = {}
    big = [m.name for m in models if not m.trained] or [m.name for m in models]
    trained = [m.name for m in models if m.trained]

    def best(sel: list[dict[str, Any]], key: str, lower: bool) -> dict[str, Any] | None:
        sel = [r for r in sel if r.get(key) is not None]
        return (min if lower else max)(sel, key=lambda r: r[key]) if sel else None

    r = best([r for r in rows if r["model"] in big and r["precision"] == "int8" and r["batch"] == 1
              and r["variant"] == "segment" and r["policy"] == "fixed"], "seg_time_vs_baseline", True)
    out["int8_segment_b1"] = None if r is None else {
        "goal": "ORT CPU INT8 time per segment at batch 1 <= 0.2x PyTorch eager fp32", "model": r["model"],
        "runtime": r["runtime"], "value": r["seg_time_vs_baseline"], "value_clean": r.get("seg_time_vs_baseline_clean"),
        "met": r["seg_time_vs_baseline"] <= 0.2}
    cand = [r for r in rows if r["model"] in trained and r["precision"] == "int8" and r["policy"] == "q"
            and r.get("exact_accuracy_delta_pts") is not None and r["exact_accuracy_delta_pts"] >= -0.5]
    allq = [r for r in rows if r["model"] in trained and r["precision"] == "int8" and r["policy"] == "q"]
    r = best(cand, "puzzles_per_s_vs_baseline", False) or best(allq, "puzzles_per_s_vs_baseline", False)
    out["e2e_q_int8"] = None if r is None else {
        "goal": "puzzles/s with policy q + INT8 >= 20x eager fp32 fixed (same batch), exact accuracy no more "
                "than 0.5 pt below it",
        "model": r["model"], "runtime": r["runtime"], "batch": r["batch"], "value": r["puzzles_per_s_vs_baseline"],
        "accuracy_delta_pts": r.get("exact_accuracy_delta_pts"), "mean_segments": r.get("mean_segments"),
        "met": r["puzzles_per_s_vs_baseline"] >= 20 and r.get("exact_accuracy_delta_pts") is not None
        and r["exact_accuracy_delta_pts"] >= -0.5}
    r = best([r for r in rows if r["model"] in big and r["engine"] == "ort" and r["precision"] == "fp32"
              and r["batch"] == 16 and r["policy"] == "fixed"], "peak_fraction", False)
    out["fp32_b16_peak"] = None if r is None else {
        "goal": "ORT fp32 at batch 16 >= 70% of the fp32 GEMM peak", "model": r["model"], "runtime": r["runtime"],
        "value": r["peak_fraction"], "value_clean": r.get("peak_fraction_clean"), "gops": r["gops"],
        "peak_gops": r["peak_gops"], "met": r["peak_fraction"] >= 0.7}
    return out


def _rotate(items: list[Any], r: int) -> list[Any]:
    r %= max(1, len(items))
    return items[r:] + items[:r]


def measure_group(model: Model, batch: int, configs: list[Runtime], s: Settings, e2e: bool, n: int,
                  pauser: Pauser, peaks: dict[str, Any]) -> list[dict[str, Any]]:
    """All configurations of one model and batch size, loaded side by side in persistent workers
    and measured in interleaved rounds (rotating order), so each sees the same machine load."""
    _log(f"bench: {model.name} batch {batch}: loading {len(configs)} configurations"
         f"{f', end to end on {n} puzzles' if e2e else ''} ...")
    workers: dict[str, Worker] = {}
    try:
        for rt in configs:  # all load in parallel (nothing is timed yet)
            workers[rt.name] = Worker(_job(model, rt, batch, s, e2e, n), s.worker_timeout)
        for name, w in workers.items():
            if "error" in w.wait_loaded():
                _log(f"  {name}: {w.error}")
        names = [k for k, w in workers.items() if not w.error]
        rounds = s.rounds
        per_round = s.micro_seconds / rounds
        for r in range(rounds):
            if s.quiet_wait > 0:
                wait_quiet(s.quiet_wait)
            with pauser.paused():
                for name in _rotate(names, r):
                    workers[name].request({"cmd": "micro", "seconds": per_round, "min_iters": 1 if s.quick else 2,
                                           "max_iters": 400})
        if e2e:
            chunks = min(rounds, max(1, n // batch))
            for r in range(chunks):
                if s.quiet_wait > 0:
                    wait_quiet(s.quiet_wait)
                with pauser.paused():
                    for name in _rotate(names, r):
                        for policy in s.policies:
                            workers[name].request({"cmd": "e2e", "policy": policy, "chunk": r, "chunks": chunks,
                                                   "max_seconds": s.e2e_seconds / chunks})
        rows = []
        for rt in configs:
            res = workers[rt.name].request({"cmd": "summary"})
            if "error" not in res:
                seg = res["segment"]
                _log(f"  {rt.name:32s} segment p50 {seg['p50']:9.3f} ms  p90 {seg['p90']:9.3f}  "
                     f"clean p50 {seg['clean_p50']}  contention {seg['contention']}")
            else:
                _log(f"  {rt.name}: {res['error']}")
            rows.extend(_rows_from(model, rt, batch, res, peaks, s.policies, s.threads))
        return rows
    finally:
        for w in workers.values():
            w.close()


def run_suite(paths: list[Path], s: Settings, out: Path, cache: Path, pauser: Pauser,
              int8_graphs: dict[Path, Path]) -> dict[str, Any]:
    t_start = time.time()
    rts = runtimes(s.unroll)
    chosen = [rts[n] for n in s.runtimes]
    need = {r.name for r in chosen}
    models = []
    for p in paths:
        _log(f"bench: preparing {p} ...")
        models.append(prepare_model(p, cache, s.unroll, int8_graphs.get(p), need))
    from hrm_edge.bench.worker import foreign_load

    busy = foreign_load(1.0)
    if busy is not None and busy > 0.3 and s.threads > 1:
        _log(f"bench: WARNING other processes use {100 * busy:.0f}% of the cores: with {s.threads} threads per "
             "runtime, latencies (PyTorch's above all) inflate several-fold; consider --pause-training or --threads 1")
    _log("bench: measuring the GEMM peaks ...")
    peaks = run_worker({"kind": "peak", "threads": s.threads, "n": 256 if s.quick else 2048,
                        "seconds": 0.1 if s.quick else 2.0}, pauser, s.worker_timeout, s.quiet_wait)
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for model in models:
        n_set = len(_puzzle_set(model.task, None).inputs)

        def work_gflop(n: int, m: Model = model) -> float:
            return m.config.segment_flops(1) * n * m.max_steps / 1e9

        for batch in s.batches:
            n = -(-(s.e2e_puzzles or n_set) // batch) * batch  # whole batches (a small set is repeated)
            if work_gflop(n) > s.e2e_budget_gflop:
                n = batch  # one batch, if that fits the budget
            e2e = work_gflop(n) <= s.e2e_budget_gflop
            configs = []
            for rt in chosen:
                reason = _skip_reason(rt, "int8_shipped" in model.graphs)
                if reason:
                    skipped[f"{rt.name} @ {model.name}"] = reason
                elif rt.threads is not None and rt.threads == s.threads:
                    skipped[f"{rt.name} @ {model.name}"] = f"same as {rt.name.split('@')[0]} at --threads {s.threads}"
                elif rt.name == "ort-int8-qf" and batch > 1:
                    skipped[f"{rt.name} @ {model.name} batch {batch}"] = "fusion-order comparison runs at batch 1 only"
                elif rt.variant != "segment" and batch > 1 and model.config.segment_flops(batch) > 50e9:
                    skipped[f"{rt.name} @ {model.name} batch {batch}"] = (
                        "unrolled/Loop graphs save per-call overhead, negligible at this size: not measured")
                else:
                    configs.append(rt)
            rows.extend(measure_group(model, batch, configs, s, e2e, n, pauser, peaks))
    _add_ratios(rows)
    profiles = {}
    if s.profile:
        for model in models:
            graphs = {"standard fp32": model.graphs["segx"], "cpufused fp32": model.graphs["fused"]}
            int8 = model.graphs["int8"]
            if Path(int8).is_file():  # a shipped INT8 graph embeds the tokens itself (one Gather)
                graphs["cpufused int8" if _takes_x(int8) else "cpufused int8 (embeds)"] = int8
            graphs = {k: v for k, v in graphs.items() if Path(v).is_file()}
            if graphs:
                _log(f"bench: profiling {model.name} batch 1 ...")
                profiles[model.name] = run_worker({"kind": "profile", "graphs": graphs, "batch": 1,
                                                   "threads": s.threads, "iters": 3 if s.quick else 10},
                                                  pauser, s.worker_timeout, s.quiet_wait)
    report = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_start)),
        "seconds": round(time.time() - t_start, 1),
        "machine": {**_machine(s.threads), "contention_at_start": busy},
        "settings": dataclasses.asdict(s),
        "pause": {"patterns": list(pauser.patterns), "max_seconds": pauser.max_seconds,
                  "paused_seconds": round(pauser.paused_seconds, 1)},
        "baseline": f"{BASELINE} (PyTorch eager fp32), policy fixed, max_steps = the model's halt_max_steps, "
                    "same model and batch size",
        "peaks": peaks,
        "models": [{"name": m.name, "checkpoint": str(m.checkpoint), "task": m.task, "trained": m.trained,
                    "parameters": m.config.parameter_count(), "halt_max_steps": m.max_steps,
                    "segment_gflop_b1": round(m.config.segment_flops(1) / 1e9, 4),
                    "graphs": {k: Path(v).name for k, v in m.graphs.items() if Path(v).is_file()},
                    "prep": m.prep} for m in models],
        "rows": rows,
        "skipped": skipped,
        "targets": _targets(rows, models),
        "profiles": profiles,
    }
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = plot_report(report, out)
    (out / "bench.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "bench.md").write_text(markdown_report(report))
    return report


def _machine(threads: int) -> dict[str, Any]:
    import onnxruntime

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    flags = ""
    with contextlib.suppress(OSError):
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f" {f}" in flags]
    versions = {"onnxruntime": onnxruntime.__version__, "numpy": np.__version__, "python": platform.python_version()}
    with contextlib.suppress(ImportError):
        import torch

        versions["torch"] = str(torch.__version__)
    return {"cpu": cpu, "isa": isa, "cpus": os.cpu_count(), "threads": threads, "versions": versions}


# ----------------------------------------------------------------------------------------------
# report: markdown and plots


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def markdown_report(report: dict[str, Any]) -> str:
    pk = report["peaks"]
    lines = [f"# hrm-edge bench ({report['created']}, {report['seconds']} s)", "",
             f"Machine: {report['machine']['cpu']} ({', '.join(report['machine']['isa'])}), "
             f"{report['machine']['threads']} threads. Baseline: {report['baseline']}.", "",
             f"Peaks: fp32 {_fmt(pk.get('fp32_peak_gflops'))} GFLOP/s (torch {_fmt(pk.get('torch_fp32_gflops'))}, "
             f"numpy {_fmt(pk.get('numpy_fp32_gflops'))}, ORT MatMul {_fmt(pk.get('ort_fp32_gflops'))}), "
             f"bf16 {_fmt(pk.get('bf16_peak_gflops'))} GFLOP/s, int8 {_fmt(pk.get('int8_peak_gops'))} GOP/s "
             "(ORT MatMulInteger u8s8).", ""]
    head = ("| model | runtime | batch | policy | seg ms p50 | p90 | clean p50 | x base | GOP/s | % peak | "
            "puzzle ms p50 | p90 | puzzles/s | x base | segs | exact % | contention |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in report["rows"]:
        if "error" in r or "skipped" in r:
            lines.append(f"| {r['model']} | {r['runtime']} | {r['batch']} | {r['policy']} | "
                         f"{r.get('error') or r.get('skipped')} |" + " |" * 12)
            continue
        acc = r.get("exact_accuracy")
        lines.append(
            f"| {r['model']} | {r['runtime']} | {r['batch']} | {r['policy']} | {_fmt(r['seg_ms_p50'])} | "
            f"{_fmt(r['seg_ms_p90'])} | {_fmt(r.get('seg_ms_clean_p50'))} | {_fmt(r.get('seg_time_vs_baseline'))} | "
            f"{_fmt(r['gops'])} | {_fmt(100 * r['peak_fraction'] if r.get('peak_fraction') else None)} | "
            f"{_fmt(r.get('puzzle_ms_p50'))} | {_fmt(r.get('puzzle_ms_p90'))} | {_fmt(r.get('puzzles_per_s'))} | "
            f"{_fmt(r.get('puzzles_per_s_vs_baseline'))} | {_fmt(r.get('mean_segments'))} | "
            f"{_fmt(100 * acc if acc is not None else None)} | {_fmt(r.get('contention'), 2)} |")
    if report["skipped"]:
        lines += ["", "Skipped:"] + [f"- {k}: {v}" for k, v in report["skipped"].items()]
    lines += ["", "## Targets", ""]
    for k, t in report["targets"].items():
        if t is None:
            lines.append(f"- {k}: not measured in this run")
            continue
        lines.append(f"- {'MET' if t['met'] else 'MISSED'} {t['goal']}: {_fmt(t['value'])} ({t['runtime']}, "
                     f"{t['model']}" + (f", clean {_fmt(t.get('value_clean'))}" if t.get("value_clean") else "")
                     + (f", accuracy delta {t.get('accuracy_delta_pts')} pt" if "accuracy_delta_pts" in t else "")
                     + ")")
    for model, prof in report.get("profiles", {}).items():
        if "error" in prof:
            continue
        lines += ["", f"## ORT profile: {model}, one segment at batch 1 (kernel ms per run, share)", ""]
        names = [n for n in prof if isinstance(prof[n], dict) and "ops" in prof[n]]
        lines.append("| op type | " + " | ".join(names) + " |")
        lines.append("|---|" + "---|" * len(names))
        top: dict[str, float] = {}
        for n in names:
            for op, o in prof[n]["ops"].items():
                top[op] = max(top.get(op, 0.0), o["ms"])
        for op in sorted(top, key=top.get, reverse=True)[:18]:
            cells = []
            for n in names:
                o = prof[n]["ops"].get(op)
                cells.append(f"{o['ms']:.2f} ({100 * o['share']:.0f}%)" if o else "-")
            lines.append(f"| {op} | " + " | ".join(cells) + " |")
        lines.append("| run (wall) | " + " | ".join(f"{prof[n]['run_ms']:.2f} ms, {prof[n]['nodes_per_run']} nodes"
                                                   for n in names) + " |")
    return "\n".join(lines) + "\n"


def plot_report(report: dict[str, Any], out: Path) -> list[str]:
    """Per model: latency vs batch per runtime, accuracy vs speed per policy, segments histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    rows = [r for r in report["rows"] if "seg_ms_p50" in r]
    for model in report["models"]:
        name = model["name"]
        mr = [r for r in rows if r["model"] == name]
        if not mr:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for rt in dict.fromkeys(r["runtime"] for r in mr):
            pts = sorted({(r["batch"], r["seg_ms_p50"]) for r in mr if r["runtime"] == rt and r["policy"] == mr[0][
                "policy"]})
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=rt)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("time per segment, p50 (ms)")
        ax.set_title(f"{name}: latency per segment vs batch")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{name}-latency_vs_batch.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)

        e2e = [r for r in mr if r.get("puzzles_per_s")]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        markers = {"fixed": "o", "q": "s"}
        for r in e2e:
            ax.scatter(r["puzzles_per_s"], 100 * (r.get("exact_accuracy") or 0),
                       marker=markers.get(r["policy"], "^"), s=18 + 6 * r["batch"] ** 0.5)
            ax.annotate(f"{r['runtime']} b{r['batch']} {r['policy']}", (r["puzzles_per_s"],
                                                                        100 * (r.get("exact_accuracy") or 0)),
                        fontsize=5, alpha=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("puzzles / s (end to end)")
        ax.set_ylabel("exact accuracy (%)")
        ax.set_title(f"{name}: accuracy vs speed (o fixed, s q)" + ("" if model["trained"] else " [untrained]"))
        ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        path = out / f"{name}-accuracy_vs_speed.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)

        fig, ax = plt.subplots(figsize=(7, 4.5))
        hists = [r for r in e2e if r.get("segments_histogram")]
        shown = {}
        for r in hists:
            key = (r["runtime"], r["policy"])
            if key not in shown and r["runtime"] in (BASELINE, "ort-int8"):
                shown[key] = r
        width = 0.8 / max(1, len(shown))
        for i, ((rt, pol), r) in enumerate(shown.items()):
            h = {int(k): v for k, v in r["segments_histogram"].items()}
            xs = np.array(sorted(h)) + (i - len(shown) / 2) * width
            ax.bar(xs, [h[k] for k in sorted(h)], width=width,
                   label=f"{rt} {pol} b{r['batch']} (mean {r['mean_segments']:.2f})")
        ax.set_xlabel("segments used")
        ax.set_ylabel("puzzles")
        ax.set_title(f"{name}: segments per puzzle")
        if shown:
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{name}-segments_hist.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)
    return written


# ----------------------------------------------------------------------------------------------
# CLI

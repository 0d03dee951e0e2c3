"""ACT-aware INT8 calibration for the segment graph: a data reader that replays the ACT loop,
and a calibration cache so that a re-export does not calibrate again.

Why ACT-aware: the segment graph is called once per ACT step with the carry (z_H, z_L) of the
previous step. Activation ranges at step 0 (the broadcast initial carry) are not those of step 5,
so calibrating on step-0 inputs only leaves later steps clipped or badly resolved. The reader runs
the fp32 PyTorch reference through the ACT loop on the calibration puzzles and feeds the quantizer
the segment-graph inputs of every step the runtime can reach.

Step weighting (`ActCalibrationReader`): the reference runs every calibration puzzle for T =
`max_steps` segments (the `fixed` policy) and records the carry entering each segment and its
q values. Under the calibration `policy` (default `q`, the deployment default) puzzle i runs
segments 1..h_i, where h_i is its halting step. The sample (puzzle i, step s) -- the inputs of
segment s+1, s = 0..T-1 -- is fed iff s < h_i: each step is represented in proportion to the number
of puzzles still running at that step, i.e. exactly the inputs the runtime meets under that policy.
Steps that fewer than `min_step_share` * N puzzles reach are topped up to that count from the
fixed-policy continuation (the puzzles that halted last first), so a `fixed` or `threshold`
policy, which runs longer, still meets calibrated ranges at every step 0..T-1. `step_counts`
holds the samples fed per step, `running_counts` the puzzles the policy runs at each step.

Cache (`calibrate`): the computed tensor ranges (ORT `TensorsData`, written with ORT's
`save_tensors_data`) are stored under `cache_dir` (default `~/.cache/hrm-edge/calib/`, or
`$HRM_EDGE_CACHE/calib`) keyed by the sha256 of the graph file, the calibration tokens and puzzle
ids, the method and every setting that changes the ranges. `calibration_runs()` counts the real
(uncached) calibrations of this process.

One PyTorch pass serves three consumers (issue 21: at 27M parameters every pass over the calibration
set costs the model's own price): the rollout records the carries (the samples), every segment's
logits and q values (the closed-loop fp32 reference, `Rollout.solve_result`) and, through forward
pre-hooks, the per-sample channel |max| of the inputs of chosen Linear modules (SmoothQuant's
statistics, `channel_absmax(..., modules=...)`), instead of a second and third pass through ONNX
Runtime.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, TensorsData
from onnxruntime.quantization.calibrate import create_calibrator, load_tensors_data, save_tensors_data

from hrm_edge.act import HaltingPolicy, SolveResult, parse_policy
from hrm_edge.contract import SEGMENT_INPUTS
from hrm_edge.quant.search import progress_bar, with_outputs
from hrm_edge.runtimes.ort.loader import make_session

METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile}
CACHE_VERSION = 1
_RUNS = {"calibrations": 0}  # uncached calibrations run by this process (tests assert on it)


def calibration_runs() -> int:
    """Real (uncached) calibration passes -- ranges or SmoothQuant statistics -- run by this process."""
    return _RUNS["calibrations"]


def default_cache_dir() -> Path:
    """`$HRM_EDGE_CACHE/calib` if set, else `~/.cache/hrm-edge/calib`."""
    root = os.environ.get("HRM_EDGE_CACHE")
    return Path(root) / "calib" if root else Path.home() / ".cache" / "hrm-edge" / "calib"


def calibration_method(name: str) -> CalibrationMethod:
    try:
        return METHODS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown calibration method {name!r}; use one of {', '.join(METHODS)}") from None


# ----------------------------------------------------------------------------------------------
# the reference rollout


@dataclass
class Rollout:
    """The fp32 reference run for T segments on N puzzles (the `fixed` policy).

    carries: (z_H, z_L), each fp32 [T, N, P, D], the carry ENTERING segment s+1 (s = 0 is the initial carry);
    q_halt / q_continue: fp32 [T, N] after segment s+1; halt_steps: int [N], the policy's halting step h_i.
    """

    tokens: np.ndarray
    puzzle_ids: np.ndarray
    z_H: np.ndarray  # noqa: N815 (the model's names)
    z_L: np.ndarray  # noqa: N815
    q_halt: np.ndarray
    q_continue: np.ndarray
    halt_steps: np.ndarray
    x: np.ndarray | None = None  # the input embedding [N, P, D], for graphs that take x
    logits: np.ndarray | None = None  # fp32 [T, N, S, V] after segment s+1 (record_logits)
    # per module: fp32 [T, N, C], |max| of its input over positions and calls within segment s+1
    channel_absmax: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def max_steps(self) -> int:
        return int(self.z_H.shape[0])

    def solve_result(self) -> SolveResult:
        """What `run_act(..., record_steps=True, record_logits=True)` returns for the fp32 model under
        the rollout's policy and max_steps: puzzle i ran segments 1..halt_steps[i] (0 / NaN after)."""
        if self.logits is None:
            raise ValueError("this rollout did not record logits (record_logits=False)")
        T, n = self.q_halt.shape
        rows = np.arange(n)
        after = np.arange(1, T + 1)[:, None] > self.halt_steps[None, :]  # [T, N]: segment s+1 not run
        step_predictions = self.logits.argmax(-1).astype(np.int64)
        step_predictions[after] = 0
        last = self.halt_steps - 1
        logits = self.logits.copy()
        logits[after] = np.nan
        return SolveResult(predictions=step_predictions[last, rows], steps=self.halt_steps.astype(np.int32),
                           q_halt=self.q_halt[last, rows], q_continue=self.q_continue[last, rows],
                           step_predictions=step_predictions,
                           step_q_halt=np.where(after, np.nan, self.q_halt).astype(np.float32),
                           step_q_continue=np.where(after, np.nan, self.q_continue).astype(np.float32),
                           step_logits=logits)


@torch.inference_mode()
def reference_rollout(model: Any, tokens: np.ndarray, puzzle_ids: np.ndarray, max_steps: int,
                      policy: HaltingPolicy | str = "q", batch_size: int = 64, keep_x: bool = False,
                      progress: bool = False, record_logits: bool = False,
                      channel_modules: Sequence[str] = ()) -> Rollout:
    """Run the fp32 PyTorch reference `max_steps` segments on every puzzle, recording each step's input
    carry; with `record_logits` every segment's logits, and for each of `channel_modules` (module names
    of `model`) the per-sample, per-channel |max| of its input (see `Rollout`)."""
    policy = parse_policy(policy) if isinstance(policy, str) else policy
    model = model.eval()
    tokens = np.ascontiguousarray(tokens, np.int64)
    puzzle_ids = np.ascontiguousarray(puzzle_ids, np.int64)
    n, T = len(tokens), int(max_steps)
    cfg = model.config
    shape = (T, n, cfg.total_len, cfg.hidden_size)
    z_H_all, z_L_all = np.empty(shape, np.float32), np.empty(shape, np.float32)
    q_halt, q_cont = np.empty((T, n), np.float32), np.empty((T, n), np.float32)
    x_all = np.empty((n, cfg.total_len, cfg.hidden_size), np.float32) if keep_x else None
    logits_all: np.ndarray | None = None
    modules = dict(model.named_modules())
    channels: dict[str, np.ndarray] = {}
    segment_max: dict[str, torch.Tensor] = {}  # this segment's |max| per module, [B, C]

    def hook(name: str) -> Any:
        def record(_module: Any, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach()
            m = x.abs().reshape(x.shape[0], -1, x.shape[-1]).amax(dim=1).float()
            segment_max[name] = torch.maximum(segment_max[name], m) if name in segment_max else m
        return record

    handles = [modules[name].register_forward_pre_hook(hook(name)) for name in channel_modules]
    bar = progress_bar(progress, total=n * T, desc="calibration rollout", unit="seg")
    try:
        for i in range(0, n, batch_size):
            t = torch.from_numpy(tokens[i:i + batch_size])
            p = torch.from_numpy(puzzle_ids[i:i + batch_size])
            rows = slice(i, i + len(t))
            x = model.embed(t, p)
            if x_all is not None:
                x_all[rows] = x.float().numpy()
            z_H, z_L = model.initial_carry(len(t))
            for s in range(T):
                z_H_all[s, rows] = z_H.float().numpy()
                z_L_all[s, rows] = z_L.float().numpy()
                segment_max.clear()
                z_H, z_L = model.reason(z_H, z_L, x)
                logits, qh, qc = model.heads(z_H)
                q_halt[s, rows], q_cont[s, rows] = qh.float().numpy(), qc.float().numpy()
                if record_logits:
                    if logits_all is None:
                        logits_all = np.empty((T, n, *logits.shape[1:]), np.float32)
                    logits_all[s, rows] = logits.float().numpy()
                for name, m in segment_max.items():
                    if name not in channels:
                        channels[name] = np.zeros((T, n, m.shape[-1]), np.float32)
                    channels[name][s, rows] = m.numpy()
                if bar is not None:
                    bar.update(len(t))
    finally:
        for h in handles:
            h.remove()
        if bar is not None:
            bar.close()
    halt_steps = np.full(n, T, np.int64)
    for s in range(T - 1, -1, -1):  # first step at which the policy halts
        halt_steps[policy.halts(q_halt[s], q_cont[s])] = s + 1
    return Rollout(tokens, puzzle_ids, z_H_all, z_L_all, q_halt, q_cont, halt_steps, x_all, logits_all, channels)


def select_samples(halt_steps: np.ndarray, max_steps: int, min_step_share: float = 0.125
                   ) -> list[np.ndarray]:
    """Per step s = 0..T-1, the puzzle indices whose step-s inputs are fed (see the module docstring):
    the puzzles the policy still runs (h_i > s), topped up to ceil(min_step_share * N) from those that
    halted last (then by index)."""
    halt_steps = np.asarray(halt_steps)
    n = len(halt_steps)
    floor = min(n, math.ceil(min_step_share * n)) if min_step_share > 0 else 0
    order = np.lexsort((np.arange(n), -halt_steps))  # halted last first, then by index
    chosen = []
    for s in range(max_steps):
        running = np.flatnonzero(halt_steps > s)
        if len(running) < floor:
            extra = [i for i in order if halt_steps[i] <= s][:floor - len(running)]
            running = np.sort(np.concatenate([running, np.asarray(extra, np.int64)]))
        chosen.append(running.astype(np.int64))
    return chosen


# ----------------------------------------------------------------------------------------------
# the data reader


class ActCalibrationReader(CalibrationDataReader):
    """Feeds the segment graph's inputs of every ACT step (see the module docstring for the weighting).

    model: the fp32 HRM (the reference); tokens int64 [N, S], puzzle_ids int64 [N]: the calibration
    puzzles; max_steps: T (default the config's halt_max_steps); policy: the halting policy whose
    step distribution weights the samples; input_names: the graph's inputs (`hrm_edge.contract`
    SEGMENT_INPUTS or SEGMENT_X_INPUTS); batch_size: rows per `get_next` (each batch holds one step).
    The rollout runs on first use; `rewind()` starts over without re-running it.
    """

    def __init__(self, model: Any, tokens: np.ndarray, puzzle_ids: np.ndarray, max_steps: int | None = None,
                 policy: str = "q", min_step_share: float = 0.125, batch_size: int = 32,
                 input_names: Sequence[str] = SEGMENT_INPUTS, progress: bool = False,
                 record_logits: bool = False) -> None:
        self.model = model
        self.tokens = np.ascontiguousarray(tokens, np.int64)
        self.puzzle_ids = np.ascontiguousarray(puzzle_ids, np.int64)
        self.max_steps = int(max_steps or model.config.halt_max_steps)
        self.policy = parse_policy(policy)
        self.min_step_share = float(min_step_share)
        self.batch_size = int(batch_size)
        self.input_names = tuple(input_names)
        self.progress = progress
        self._rollout: Rollout | None = None
        self._chosen: list[np.ndarray] | None = None
        self._iter: Iterator[dict[str, np.ndarray]] | None = None
        self.fed_steps: list[int] = []  # the step of every batch handed out (since the last rewind)
        # what the rollout also records, if asked before it runs (see `reference_rollout`)
        self.record_logits = record_logits
        self.channel_modules: tuple[str, ...] = ()

    # -- the plan
    @property
    def rollout(self) -> Rollout:
        if self._rollout is None:
            self._rollout = reference_rollout(self.model, self.tokens, self.puzzle_ids, self.max_steps, self.policy,
                                              keep_x="x" in self.input_names, progress=self.progress,
                                              record_logits=self.record_logits,
                                              channel_modules=self.channel_modules)
            self._chosen = select_samples(self._rollout.halt_steps, self.max_steps, self.min_step_share)
        return self._rollout

    @property
    def chosen(self) -> list[np.ndarray]:
        """Per step, the puzzle indices fed."""
        _ = self.rollout
        assert self._chosen is not None
        return self._chosen

    @property
    def step_counts(self) -> list[int]:
        """Samples fed per step s = 0..T-1."""
        return [len(c) for c in self.chosen]

    @property
    def running_counts(self) -> list[int]:
        """Puzzles the policy still runs at step s (before the min_step_share top-up)."""
        h = self.rollout.halt_steps
        return [int((h > s).sum()) for s in range(self.max_steps)]

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts for the manifest and the report."""
        return {"puzzles": len(self.tokens), "max_steps": self.max_steps, "policy": str(self.policy),
                "min_step_share": self.min_step_share, "samples": int(sum(self.step_counts)),
                "samples_per_step": self.step_counts, "running_per_step": self.running_counts,
                "mean_halting_step": float(self.rollout.halt_steps.mean()),
                "weighting": "step s fed for the puzzles the policy still runs at s; "
                             "topped up to min_step_share*N from the fixed-policy continuation"}

    def __len__(self) -> int:
        return sum(-(-c // self.batch_size) for c in self.step_counts)

    # -- samples
    def sample(self, step: int, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Graph feeds for these puzzles at this step (carry entering segment step+1)."""
        r = self.rollout
        rows = np.asarray(rows, np.int64)
        feeds = {"z_H": np.ascontiguousarray(r.z_H[step, rows]), "z_L": np.ascontiguousarray(r.z_L[step, rows])}
        if "x" in self.input_names:
            assert r.x is not None
            feeds["x"] = np.ascontiguousarray(r.x[rows])
        else:
            feeds["tokens"], feeds["puzzle_ids"] = r.tokens[rows], r.puzzle_ids[rows]
        return {k: feeds[k] for k in self.input_names}

    def batches(self) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(step, feeds) for every batch, steps in order."""
        for s, rows in enumerate(self.chosen):
            for i in range(0, len(rows), self.batch_size):
                yield s, self.sample(s, rows[i:i + self.batch_size])

    def subset(self, per_step: int, seed: int = 0) -> list[tuple[int, dict[str, np.ndarray]]]:
        """At most `per_step` samples of each step (evenly spaced over the chosen puzzles), one batch per step."""
        out = []
        for s, rows in enumerate(self.chosen):
            if len(rows) == 0:
                continue
            pick = rows[np.linspace(0, len(rows) - 1, min(per_step, len(rows))).round().astype(int)]
            out.append((s, self.sample(s, np.unique(pick))))
        return out

    def _generator(self) -> Iterator[dict[str, np.ndarray]]:
        for s, feeds in self.batches():
            self.fed_steps.append(s)
            yield feeds

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._iter is None:
            self._iter = self._generator()
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = None
        self.fed_steps = []

    def get_first(self) -> dict[str, np.ndarray]:
        """The first batch, without advancing (NVIDIA ModelOpt's reader protocol asks for it)."""
        return next(self.batches())[1]

    def set_range(self, start_index: int, end_index: int) -> None:  # ORT's strided calibration API
        self.rewind()


# ----------------------------------------------------------------------------------------------
# calibration with a cache


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def calibration_key(graph: str | Path, reader: ActCalibrationReader, method: str,
                    settings: dict[str, Any]) -> str:
    """sha256 over the graph file, the calibration puzzles, the method and the settings."""
    h = hashlib.sha256()
    h.update(f"hrm-edge-calib-v{CACHE_VERSION}".encode())
    with open(graph, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(reader.tokens.tobytes())
    h.update(reader.puzzle_ids.tobytes())
    meta = {"method": method, "max_steps": reader.max_steps, "policy": str(reader.policy),
            "min_step_share": reader.min_step_share, "inputs": list(reader.input_names), **settings}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return h.hexdigest()


@dataclass
class Calibration:
    """Computed ranges and where they came from."""

    ranges_path: Path  # ORT `save_tensors_data` JSON (pass to quantize_static(calibration_cache_path=...))
    method: str
    key: str
    cache_hit: bool
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    def tensors(self) -> TensorsData:
        return load_tensors_data(self.ranges_path)




def calibrate(graph: str | Path, reader: ActCalibrationReader, method: str = "minmax",
              op_types: Sequence[str] | None = None, cache_dir: str | Path | None = None,
              extra: dict[str, Any] | None = None, chunk_batches: int = 8, progress: bool = True,
              use_cache: bool = True) -> Calibration:
    """Tensor ranges of `graph` over the reader's samples, from the cache when possible.

    op_types: the op types whose float inputs/outputs are calibrated (None = all);
    extra: calibrator options (`symmetric`, `percentile`, `num_bins`, ...). Ranges are collected
    raw (not symmetrised) unless `extra` says otherwise, so one calibration serves the asymmetric
    cpu flavour and the symmetric tensorrt flavour (which symmetrises at quantization time).
    Histogram methods (entropy, percentile) are fed `chunk_batches` batches at a time to bound memory.
    """
    cal_method = calibration_method(method)
    extra = dict(extra or {})
    if cal_method == CalibrationMethod.Percentile:
        extra.setdefault("symmetric", False)
        extra.setdefault("percentile", 99.999)
    settings = {"op_types": sorted(op_types) if op_types else None, "extra": extra}
    key = calibration_key(graph, reader, method, settings)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"{key}.json"
    meta_path = cache / f"{key}.meta.json"
    if use_cache and path.is_file():
        with contextlib.suppress(OSError, json.JSONDecodeError):
            info = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
            load_tensors_data(path)  # readable?
            return Calibration(path, method, key, True, 0.0, info)
    t0 = time.perf_counter()
    info = reader.describe()
    _RUNS["calibrations"] += 1
    with tempfile.TemporaryDirectory(prefix="hrm-edge-calib.") as tmp:
        calibrator = create_calibrator(Path(graph), list(op_types) if op_types else None,
                                       augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=cal_method, extra_options=extra)
        reader.rewind()
        batches = list(reader.batches())
        bar = progress_bar(progress, total=len(batches), desc=f"calibrating ({method})", unit="batch")
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # ORT's histogram calibrators print
                for i in range(0, len(batches), chunk_batches):
                    chunk = [feeds for _, feeds in batches[i:i + chunk_batches]]
                    calibrator.collect_data(_ListReader(chunk))
                    if bar is not None:
                        bar.update(len(chunk))
                ranges = calibrator.compute_data()
        finally:
            if bar is not None:
                bar.close()
        del calibrator
    cache.mkdir(parents=True, exist_ok=True)
    save_tensors_data(ranges, path)
    info = {**info, "method": method, "settings": settings, "tensors": len(ranges.keys()),
            "seconds": round(time.perf_counter() - t0, 2)}
    meta_path.write_text(json.dumps(info, indent=1, default=str))
    return Calibration(path, method, key, False, time.perf_counter() - t0, info)


def channel_absmax(graph: str | Path, reader: ActCalibrationReader, tensors: Sequence[str],
                   cache_dir: str | Path | None = None, progress: bool = True, use_cache: bool = True,
                   modules: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """Per-channel (last axis) |max| of these graph tensors over every calibration sample, cached
    like `calibrate` (the statistics SmoothQuant needs).

    modules: graph tensor -> the name of the model's Linear module that reads it: the statistics are
    then taken from the reader's PyTorch rollout (forward pre-hooks, no ONNX Runtime pass; the reader
    must not have run its rollout yet), the maximum over the samples the reader feeds."""
    tensors = sorted(set(tensors))
    key = calibration_key(graph, reader, "channel_absmax", {"tensors": tensors})
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"{key}.absmax.npz"
    if use_cache and path.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError), np.load(path) as f:
            return {name: f[f"t{i}"] for i, name in enumerate(tensors)}
    _RUNS["calibrations"] += 1
    if modules is not None and reader._rollout is None and set(tensors) <= set(modules):
        reader.channel_modules = tuple(sorted(set(reader.channel_modules) | {modules[t] for t in tensors}))
        per_sample = reader.rollout.channel_absmax
        out = {}
        for name in tensors:
            stats = per_sample[modules[name]]  # [T, N, C]
            out[name] = np.max([stats[s, rows].max(axis=0) for s, rows in enumerate(reader.chosen) if len(rows)],
                               axis=0)
        _save_npz(path, {f"t{i}": out[name] for i, name in enumerate(tensors)})
        return out
    session = make_session(with_outputs(onnx.load(str(graph)), tensors).SerializeToString())
    out: dict[str, np.ndarray] = {}
    reader.rewind()
    batches = list(reader.batches())
    bar = progress_bar(progress, total=len(batches), desc="channel statistics", unit="batch")
    try:
        for _, feeds in batches:
            for name, value in zip(tensors, session.run(tensors, feeds), strict=True):
                m = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
                out[name] = np.maximum(out[name], m) if name in out else m
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    _save_npz(path, {f"t{i}": out[name] for i, name in enumerate(tensors)})
    return out


def input_hessians(graph: str | Path, samples: list[tuple[int, dict[str, np.ndarray]]],
                   groups: dict[str, list[str]], key_extra: dict[str, Any], reader: ActCalibrationReader,
                   cache_dir: str | Path | None = None, progress: bool = True, use_cache: bool = True
                   ) -> dict[str, np.ndarray]:
    """Per weight, H = E[x x^T] [K, K] over the inputs x of every call site of that weight (GPTQ's
    Hessian), from these calibration samples; cached like `calibrate`.

    groups: weight name -> the activation input names of its call sites."""
    names = sorted({a for v in groups.values() for a in v})
    key = calibration_key(graph, reader, "input_hessians", {"groups": {k: sorted(v) for k, v in groups.items()},
                                                            **key_extra})
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"{key}.hessians.npz"
    weights = sorted(groups)
    if use_cache and path.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError), np.load(path) as f:
            return {w: f[f"h{i}"] for i, w in enumerate(weights)}
    _RUNS["calibrations"] += 1
    session = make_session(with_outputs(onnx.load(str(graph)), names).SerializeToString())
    acc: dict[str, np.ndarray] = {}
    rows: dict[str, int] = dict.fromkeys(weights, 0)
    bar = progress_bar(progress, total=len(samples), desc="GPTQ statistics", unit="batch")
    try:
        for _, feeds in samples:
            values = dict(zip(names, session.run(names, feeds), strict=True))
            for w in weights:
                for a in groups[w]:
                    x = values[a].reshape(-1, values[a].shape[-1])
                    acc[w] = acc[w] + x.T @ x if w in acc else x.T @ x
                    rows[w] += len(x)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    out = {w: (acc[w] / max(rows[w], 1)).astype(np.float32) for w in weights}
    _save_npz(path, {f"h{i}": out[w] for i, w in enumerate(weights)})
    return out


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a cache file atomically (a temp file in the same directory, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as f:
        np.savez(f, **arrays)
    os.replace(f.name, path)


class _ListReader(CalibrationDataReader):
    def __init__(self, items: list[dict[str, np.ndarray]]) -> None:
        self._items = iter(items)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


__all__ = ["METHODS", "ActCalibrationReader", "Calibration", "Rollout", "calibrate", "calibration_key",
           "calibration_method", "calibration_runs", "channel_absmax", "default_cache_dir", "input_hessians",
           "reference_rollout", "select_samples"]

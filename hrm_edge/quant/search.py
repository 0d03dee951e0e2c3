"""Accuracy recovery for INT8 segment graphs: per-site sensitivity and a mixed-precision search.

Sites: every MatMul/Gemm call of the segment graph (`find_sites`); H/L cycles are unrolled, so the
same Linear called in four L cycles is four sites with four activation scales.

Exclusion = the site computes in float: `restore_float` puts the fp32 graph's node back in place of
its quantized form (static QDQ: the MatMul reading DequantizeLinear outputs; dynamic: the
DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul chain) and drops what is left dangling, without
re-quantizing or re-calibrating (a quantized tensor that also feeds other sites keeps its Q/DQ for
them). By default (`weights="int8"`) the excluded site's weight stays int8 in the file and becomes
float through Cast * scale, which ORT constant-folds at session start and TensorRT at build: the same
Linear is called in every H/L cycle, so a float copy for one excluded call would add 4 bytes per
parameter. For a site whose weight other quantized sites share, the numbers are exactly those of ORT's
`nodes_to_exclude` (tested to float rounding). Measured on the 6x6 demo (128 calibration puzzles, same ranked
sites): float vs int8 weights for 4/8/16 excluded sites gave exact agreement 86.7/92.2/89.8% vs
85.2/91.4/90.6% (cpu) and 82.0/81.3/82.0% vs 75.8/83.6/87.5% (tensorrt) -- within the noise of chaotic
unsolved puzzles -- at 2.2/2.7/3.9 MB vs 1.22 MB (fp32 4.3 MB). Speed (27M, batch 1, 1 thread, a
quarter of the sites excluded): 60 ms with Cast * scale, 57 ms with float weights (46.6 MB), 96 ms when
the int8 weight sat behind a DequantizeLinear (ORT never folds DequantizeLinear, so it dequantized the
weight on every call); all sites int8: 37 ms.

Sensitivity (`leave_one_out`): open loop, one segment, on calibration inputs drawn from every ACT step
(`ActCalibrationReader.subset`): the output error (mean relative L2 error of z_H_out, z_L_out and
logits against the fp32 graph) of the fully quantized graph minus that of the same graph with this
one site in float -- what excluding the site buys, in the context of all the other quantization
noise. `site_errors` is the qdq_loss_debug-style table: the relative error of every site's output
tensor, fp32 graph vs quantized graph, per ACT step.

Search (`search_exclusions`): closed loop, the gate is `hrm_edge.parity.gate` on the calibration
puzzles (the ACT loop run with the candidate graph through `OrtSegmentRunner` + `run_act`, compared
to the PyTorch fp32 reference). Sites are excluded in order of leave-one-out benefit: no exclusion,
then the top 1, 2, 4, ... until the gate passes, a bisection between the last failing and the first
passing count, then a greedy pruning pass that puts back (quantizes again) the excluded sites the gate
does not need, lowest benefit first. Bounded by `max_excluded` sites and `max_evals` closed-loop runs;
when nothing passes within them the candidate closest to passing (`_shortfall`) is returned with
passed=False. The quantize pipeline's trials stop at their first certain failure
(`ClosedLoop.evaluate(early_stop=True)`): decisions are unchanged, and a trial stopped early ranks after
every complete one when the closest failing candidate is chosen.
"""

from __future__ import annotations

import copy
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from hrm_edge.act import HaltingPolicy, SegmentRunner, SolveResult, TickingRunner, concat_results, run_act
from hrm_edge.contract import SEGMENT_OUTPUTS
from hrm_edge.parity import Gates, compare, failed_already, gate, solved_metric
from hrm_edge.progress import ClosedLoopProgress
from hrm_edge.runtimes.ort.loader import make_session
from hrm_edge.runtimes.ort.runner import OrtSegmentRunner

_WEIGHT_RE = re.compile(r"model\.inner\.(?:(?P<level>[HL])_level\.layers\.(?P<layer>\d+)\.(?P<block>self_attn|mlp)\."
                        r"(?P<proj>\w+?)|(?P<head>lm_head|q_head))\.weight")
COMPARED = SEGMENT_OUTPUTS[:3]  # z_H_out, z_L_out, logits: compared tensor by tensor
# What the open-loop score averages: the compared tensors and the halting margin q_halt - q_continue.
# The margin is in it because the q policy's decision, q_halt > q_continue, is what the closed-loop
# halting gate checks: without it the sensitivity pass gave q_head a benefit of exactly 0 and the
# search could not raise halting agreement (HRM 6x6 demo, cpu flavour: 91% with every site int8,
# 95.3% with 25 of 50 in float).
SCORED = (*COMPARED, "q_margin")


# ----------------------------------------------------------------------------------------------
# sites


@dataclass
class Site:
    """One quantizable call site (a MatMul/Gemm node) of the segment graph."""

    node: str  # ONNX node name (what nodes_to_exclude takes)
    op: str
    index: int  # position among the sites, in graph order
    label: str  # e.g. "L2.layer1.qkv_proj", "H0.layer0.attn_qk", "lm_head"
    level: str  # "L", "H" or "head"
    call: int  # which call of that level in the segment (L: 0..H_cycles*L_cycles-1, H: 0..H_cycles-1)
    layer: int
    kind: str  # "weight" (x @ W) or "bmm" (activation @ activation: attention scores / values)
    weight: str | None
    output: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_sites(model: onnx.ModelProto, op_types: tuple[str, ...] = ("MatMul", "Gemm")) -> list[Site]:
    """Every MatMul/Gemm call site of an fp32 segment graph, with a readable label (from the weight
    names the exporter keeps; `fold_weight_transposes` keeps them as `<name>__T`)."""
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    outputs = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    vocab = outputs.get("logits", [0])[-1]
    sites: list[Site] = []
    level, call, layer = "head", 0, 0
    bmm_in_block = 0
    level_calls = {"L": -1, "H": -1}
    last_layer: dict[str, int | None] = {"L": None, "H": None}
    for node in model.graph.node:
        if node.op_type not in op_types:
            continue
        weight = next((i for i in node.input[1:2] if i in inits), None)
        m = _WEIGHT_RE.search(weight or "")
        if m and m.group("level"):
            level, layer, proj = m.group("level"), int(m.group("layer")), m.group("proj")
            if proj == "qkv_proj":
                previous = last_layer[level]
                if previous is None or layer <= previous:
                    level_calls[level] += 1  # a new call of this level starts at its first layer's qkv
                last_layer[level] = layer
                bmm_in_block = 0
            call = level_calls[level]
            label, kind = f"{level}{call}.layer{layer}.{proj}", "weight"
        elif m and m.group("head"):
            level, call, layer, label, kind = "head", 0, 0, m.group("head"), "weight"
        elif weight is None:
            label = f"{level}{call}.layer{layer}.attn_{'qk' if bmm_in_block == 0 else 'av'}"
            bmm_in_block += 1
            kind = "bmm"
        elif vocab and len(inits[weight]) == 2 and inits[weight][-1] == vocab:
            level, call, layer, label, kind = "head", 0, 0, "lm_head", "weight"  # a constant-folded transpose
        elif sites and sites[-1].kind == "bmm" and bmm_in_block == 2 and level in ("L", "H"):
            label, kind = f"{level}{call}.layer{layer}.o_proj", "weight"  # its transpose was constant-folded
            bmm_in_block = 3
        else:
            label, kind = f"{node.op_type}:{weight}", "weight"
        sites.append(Site(node.name, node.op_type, len(sites), label, level, call, layer, kind, weight,
                          node.output[0]))
    return sites


# ----------------------------------------------------------------------------------------------
# graph surgery


def prune_dangling(model: onnx.ModelProto) -> None:
    """Drop nodes none of whose outputs is used (repeatedly) and unused initializers, in place."""
    g = model.graph
    outputs = {o.name for o in g.output}
    while True:
        used = {i for n in g.node for i in n.input} | outputs
        dead = [n for n in g.node if not any(o in used for o in n.output if o)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {i for n in g.node for i in n.input} | outputs
    for t in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(t)


def _weight_axis(node: onnx.NodeProto) -> int:
    """Per-channel (output channel) axis of a MatMul B [K, N] or Gemm B ([N, K] when transB)."""
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 1


def _int8_weight(g: onnx.GraphProto, node: onnx.NodeProto, weight: onnx.TensorProto, have: set[str],
                 dequant: str = "cast") -> tuple[str, bool]:
    """The name of a float weight computed from an int8 copy of `weight` in `g`: the quantizer's own
    quantized weight (`<W>_quantized`, `<W>_scale`, zero point 0) when present, else a per-channel
    symmetric one. Built as Cast(int8 -> float) * scale rather than DequantizeLinear: ORT constant-folds
    Cast and Mul at session start (it deliberately never folds DequantizeLinear, which then would
    dequantize the weight on every call: measured 96 ms instead of 53 ms per 27M segment with a quarter
    of the sites excluded). `dequant="dq"` builds DequantizeLinear(int8, per-channel scale, zero point 0)
    instead: TensorRT's weight-only form (it rejects a Cast from INT8; quantized tensors reach it only
    through Q/DQ). Returns (name, number of nodes inserted at the top of the graph)."""
    name = weight.name
    out = f"{name}_int8w_float"
    produced = {o for n in g.node for o in n.output}
    if out in produced:
        return out, 0
    axis = _weight_axis(node)
    inits = {t.name: t for t in g.initializer}
    q, scale, zp = f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"
    usable = q in inits and scale in inits and (zp not in inits or not numpy_helper.to_array(inits[zp]).any())
    if usable:
        wq = numpy_helper.to_array(inits[q])
        sc = numpy_helper.to_array(inits[scale]).astype(np.float32).reshape(-1)
        usable = wq.dtype == np.int8 and list(wq.shape) == list(weight.dims) and sc.size in (1, wq.shape[axis])
    if not usable:
        w = numpy_helper.to_array(weight).astype(np.float32)
        amax = np.abs(w).max(axis=1 - axis)
        sc = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        shape = [1, -1] if axis == 1 else [-1, 1]
        wq = np.clip(np.round(w / sc.reshape(shape)), -127, 127).astype(np.int8)
        q = f"{name}_int8w"
        if q not in have:
            g.initializer.append(numpy_helper.from_array(wq, q))
            have.add(q)
    if dequant == "dq":
        sc_name, zp_name = f"{name}_int8w_dq_scale", f"{name}_int8w_dq_zero_point"
        if sc_name not in have:
            g.initializer.append(numpy_helper.from_array(sc.reshape(-1) if sc.size > 1 else sc.reshape([]), sc_name))
            g.initializer.append(numpy_helper.from_array(np.zeros(sc.size, np.int8) if sc.size > 1
                                                         else np.zeros((), np.int8), zp_name))
            have.update((sc_name, zp_name))
        attrs = {"axis": axis} if sc.size > 1 else {}
        g.node.insert(0, helper.make_node("DequantizeLinear", [q, sc_name, zp_name], [out],
                                          name=f"{name}_int8w_DequantizeLinear", **attrs))
        return out, 1
    bshape = [1, -1] if axis == 1 else [-1, 1]
    sc_name = f"{name}_int8w_scale"
    if sc_name not in have:
        g.initializer.append(numpy_helper.from_array(sc.reshape(bshape) if sc.size > 1 else sc.reshape([]), sc_name))
        have.add(sc_name)
    cast = helper.make_node("Cast", [q], [f"{name}_int8w_cast"], name=f"{name}_int8w_Cast", to=onnx.TensorProto.FLOAT)
    mul = helper.make_node("Mul", [f"{name}_int8w_cast", sc_name], [out], name=f"{name}_int8w_Mul")
    g.node.insert(0, mul)
    g.node.insert(0, cast)
    return out, 2


def restore_float(qmodel: onnx.ModelProto, fp32: onnx.ModelProto, nodes: Iterable[str],
                  weights: str = "int8") -> onnx.ModelProto:
    """A copy of the quantized `qmodel` in which these sites (fp32 node names) compute in float again.

    weights: "float" -- the site is entirely fp32 (its weight is stored in fp32 again if no quantized
    site uses it); "int8" -- activations and compute in float, the weight stays int8 in the file and is
    dequantized by constant-foldable Cast * scale, so excluding a site costs no file size and, on ORT, no
    per-call dequantization; "int8-dq" -- the same with DequantizeLinear (TensorRT's weight-only form)."""
    if weights not in ("float", "int8", "int8-dq"):
        raise ValueError(f"weights must be 'float', 'int8' or 'int8-dq', got {weights!r}")
    nodes = list(nodes)
    out = copy.deepcopy(qmodel)
    if not nodes:
        return out
    g = out.graph
    fp_nodes = {n.name: n for n in fp32.graph.node}
    fp_inits = {t.name: t for t in fp32.graph.initializer}
    have_inits = {t.name for t in g.initializer}
    produced = {o for n in g.node for o in n.output} | {i.name for i in g.input}
    for name in nodes:
        orig = fp_nodes.get(name)
        if orig is None:
            raise KeyError(f"restore_float: no node {name!r} in the fp32 graph")
        producer = next((i for i, n in enumerate(g.node) if orig.output[0] in n.output), None)
        if producer is None:
            raise KeyError(f"restore_float: the quantized graph does not produce {orig.output[0]!r}")
        new = copy.deepcopy(orig)
        for j, inp in enumerate(orig.input):
            if inp in produced:  # e.g. a bias whose DequantizeLinear output kept the float name
                continue
            if inp in fp_inits and inp not in have_inits:
                weight = fp_inits[inp]
                if weights != "float" and j == 1 and len(weight.dims) == 2:
                    new.input[j], inserted = _int8_weight(g, orig, weight, have_inits,
                                                          "dq" if weights == "int8-dq" else "cast")
                    producer += inserted  # the dequantizing nodes went in at the top
                    produced.add(new.input[j])
                    continue
                g.initializer.append(copy.deepcopy(weight))
                have_inits.add(inp)
            elif inp and inp not in have_inits and inp not in produced:
                raise KeyError(f"restore_float: float input {inp!r} of {name!r} is gone from the quantized graph")
        g.node.remove(g.node[producer])
        g.node.insert(producer, new)
    prune_dangling(out)
    return out


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy with these tensors added as (float) graph outputs."""
    out = copy.deepcopy(model)
    have = {o.name for o in out.graph.output}
    for name in names:
        if name not in have:
            out.graph.output.append(helper.make_value_info(name, helper.make_tensor_type_proto(onnx.TensorProto.FLOAT,
                                                                                                None)))
    return out


# ----------------------------------------------------------------------------------------------
# open-loop errors


def _outputs(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every segment output (`hrm_edge.contract.SEGMENT_OUTPUTS`) of one call, by name."""
    return dict(zip(SEGMENT_OUTPUTS, session.run(list(SEGMENT_OUTPUTS), feeds), strict=True))


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), 1e-12))


class OpenLoop:
    """One-segment errors of candidate graphs against the fp32 graph on fixed calibration samples
    ((step, feeds) pairs, e.g. `ActCalibrationReader.subset(8)`)."""

    def __init__(self, fp32: onnx.ModelProto, samples: list[tuple[int, dict[str, np.ndarray]]],
                 threads: int | None = None) -> None:
        self.samples = samples
        self.threads = threads
        sess = make_session(fp32.SerializeToString(), threads=threads)
        self.reference = [_outputs(sess, feeds) for _, feeds in samples]

    def errors(self, model: onnx.ModelProto) -> dict[str, Any]:
        """{"score": mean over samples of the mean rel. error of z_H_out, z_L_out, logits and the halting
        margin q_halt - q_continue; "per_step": [...]}"""
        sess = make_session(model.SerializeToString(), threads=self.threads)
        per_step = []
        for (step, feeds), ref in zip(self.samples, self.reference, strict=True):
            got = _outputs(sess, feeds)
            errs = {name: _rel(got[name], ref[name]) for name in COMPARED}
            errs["q_margin"] = _rel(got["q_halt"] - got["q_continue"], ref["q_halt"] - ref["q_continue"])
            argmax = float((got["logits"].argmax(-1) == ref["logits"].argmax(-1)).mean())
            halt = float(((got["q_halt"] > got["q_continue"]) == (ref["q_halt"] > ref["q_continue"])).mean())
            per_step.append({"step": step, **errs, "token_agreement": argmax, "halt_agreement": halt})
        score = float(np.mean([np.mean([e[n] for n in SCORED]) for e in per_step]))
        return {"score": score, "per_step": per_step}


def site_errors(fp32: onnx.ModelProto, qmodel: onnx.ModelProto, sites: Sequence[Site],
                samples: list[tuple[int, dict[str, np.ndarray]]], threads: int | None = None) -> np.ndarray:
    """Relative L2 error of every site's output tensor, quantized vs fp32 graph: float [n_sites, n_samples]
    (one column per (step, batch) sample; qdq_loss_debug's activation matching, accumulated error)."""
    names = [s.output for s in sites]
    fs = make_session(with_outputs(fp32, names).SerializeToString(), threads=threads)
    qs = make_session(with_outputs(qmodel, names).SerializeToString(), threads=threads)
    table = np.zeros((len(sites), len(samples)), np.float64)
    for j, (_, feeds) in enumerate(samples):
        for i, (a, b) in enumerate(zip(qs.run(names, feeds), fs.run(names, feeds), strict=True)):
            table[i, j] = _rel(a, b)
    return table


def leave_one_out(qmodel: onnx.ModelProto, fp32: onnx.ModelProto, sites: Sequence[Site], open_loop: OpenLoop,
                  progress: bool = True, weights: str = "int8") -> tuple[dict[str, Any], dict[str, float]]:
    """(errors of the fully quantized graph, {node: score reduction when only this site runs in float})."""
    base = open_loop.errors(qmodel)
    benefit = benefits(base["score"], [s.node for s in sites],
                       lambda node: open_loop.errors(restore_float(qmodel, fp32, [node], weights))["score"],
                       "sensitivity (leave one out)", progress)
    return base, benefit


def benefits(base_score: float, nodes: Sequence[str], score_with_float: Callable[[str], float], desc: str,
             progress: bool = True) -> dict[str, float]:
    """{node: base_score - the open-loop score with only this site in float}, one site after another."""
    benefit: dict[str, float] = {}
    bar = progress_bar(progress, total=len(nodes), desc=desc, unit="site")
    try:
        for node in nodes:
            benefit[node] = base_score - score_with_float(node)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return benefit


# ----------------------------------------------------------------------------------------------
# closed loop


class ClosedLoop:
    """Runs a candidate segment graph through the ACT loop (OrtSegmentRunner + run_act) on fixed
    puzzles and gates it against the reference result; `evaluate_runner` does the same for any
    SegmentRunner (the fake-quant model: `hrm_edge.quant.torch_search`)."""

    def __init__(self, tokens: np.ndarray, puzzle_ids: np.ndarray, labels: np.ndarray | None,
                 reference: SolveResult, h_init: np.ndarray, l_init: np.ndarray, total_len: int,
                 policy: HaltingPolicy, max_steps: int, gates: Gates, batch_size: int = 64,
                 threads: int | None = None, work_dir: str | Path | None = None, progress: bool = False) -> None:
        self.tokens, self.puzzle_ids, self.labels = tokens, puzzle_ids, labels
        self.progress = progress  # each run's progress on stderr (`hrm_edge.progress`)
        self.reference, self.h_init, self.l_init, self.total_len = reference, h_init, l_init, total_len
        self.policy, self.max_steps, self.gates = policy, max_steps, gates
        self.batch_size, self.threads = batch_size, threads
        self._tmp = tempfile.TemporaryDirectory(prefix="hrm-edge-int8.") if work_dir is None else None
        self.work_dir = Path(work_dir if work_dir is not None else self._tmp.name)  # type: ignore[union-attr]

    def runner(self, model: onnx.ModelProto | str | Path) -> OrtSegmentRunner:
        """A candidate graph (a file, or a model saved to the work directory) in its own ORT session."""
        path = Path(model) if not isinstance(model, onnx.ModelProto) else self.work_dir / "candidate.onnx"
        if isinstance(model, onnx.ModelProto):
            onnx.save(model, str(path))
        return OrtSegmentRunner(make_session(path, threads=self.threads), self.h_init, self.l_init, self.total_len)

    def evaluate(self, model: onnx.ModelProto | str | Path, record: bool = False, early_stop: bool = False,
                 gates: Any = None) -> dict[str, Any]:
        """`evaluate_runner` of the candidate graph through ONNX Runtime."""
        return self.evaluate_runner(self.runner(model), record, early_stop, gates)

    def evaluate_runner(self, runner: SegmentRunner, record: bool = False, early_stop: bool = False,
                        gates: Any = None) -> dict[str, Any]:
        """Metrics, gate checks (`gates`, default the loop's own) and pass/fail of `runner` on the puzzles, in
        batches of `batch_size`;
        per-step logits are recorded when asked or when the gates include the logit gate. With
        `early_stop` a candidate stops at the first batch after which an agreement gate can no longer
        pass (`hrm_edge.parity.failed_already`): passed is False as for the complete run, the metrics
        cover the puzzles run, and "stopped_early" says how many and which gate (the search's failing
        trials cost a fraction of a run: pass/fail decisions, and so the chosen sites, are unchanged)."""
        t0 = time.perf_counter()
        gates = self.gates if gates is None else gates
        record = record or gates.max_logit_rel is not None
        total, parts, failed = len(self.tokens), [], None
        with ClosedLoopProgress(f"closed loop on {total} puzzles", total, self.batch_size, self.max_steps,
                                enabled=self.progress) as bar:
            ticking = TickingRunner(runner, bar.segment)
            for i in range(0, total, self.batch_size):
                parts.append(run_act(ticking, self.tokens[i:i + self.batch_size],
                                     self.puzzle_ids[i:i + self.batch_size], self.policy, self.max_steps, record,
                                     record))
                bar.chunk_done(len(parts[-1].steps))
                if early_stop and i + self.batch_size < total:
                    failed = failed_already(self.reference, np.concatenate([p.predictions for p in parts]),
                                            np.concatenate([p.steps for p in parts]), self.labels, total, gates)
                    if failed is not None:
                        break
        result = concat_results(parts)
        n = len(result.steps)
        reference = self.reference if n == total else head(self.reference, n)
        metrics = compare(reference, result, None if self.labels is None else self.labels[:n])
        checks = gate(metrics, gates)
        out = {"metrics": metrics, "gates": checks, "passed": failed is None and all(c["passed"] for c in checks),
               "seconds": round(time.perf_counter() - t0, 2)}
        if failed is not None:
            out["stopped_early"] = {"puzzles": n, "of": total, "gate": failed}
        return out


def head(result: SolveResult, n: int) -> SolveResult:
    """The first n puzzles of a result."""
    def rows(a: np.ndarray | None, axis: int) -> np.ndarray | None:
        return None if a is None else (a[:n] if axis == 0 else a[:, :n])

    return SolveResult(rows(result.predictions, 0), rows(result.steps, 0), rows(result.q_halt, 0),
                       rows(result.q_continue, 0), rows(result.step_predictions, 1), rows(result.step_q_halt, 1),
                       rows(result.step_q_continue, 1), rows(result.step_logits, 1))


# ----------------------------------------------------------------------------------------------
# the search


@dataclass
class Trial:
    excluded: list[str]
    exact_agreement: float  # identical outputs
    solved_agreement: float | None  # same puzzles solved (None without labels)
    halting_agreement: float
    accuracy_drop: float | None
    token_agreement: float
    passed: bool
    seconds: float
    phase: str
    engine: str = "ort"  # "ort": the rewritten graph through ONNX Runtime; "torch": the fake-quant model
    stopped_after: int | None = None  # puzzles run when the evaluation stopped early (certain failure)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trial_of(excluded: Sequence[str], ev: dict[str, Any], phase: str) -> Trial:
    """The trial record of one closed-loop evaluation (`ClosedLoop.evaluate`'s form)."""
    m = ev["metrics"]
    stopped = ev.get("stopped_early")
    return Trial(list(excluded), m["exact_agreement"], m.get("solved_agreement"), m["halting_agreement"],
                 m.get("accuracy_drop"), m["token_agreement"], ev["passed"], ev["seconds"], phase,
                 ev.get("engine", "ort"), None if stopped is None else stopped["puzzles"])


@dataclass
class SearchResult:
    excluded: list[str]  # node names, most beneficial first
    passed: bool
    trials: list[Trial] = field(default_factory=list)
    evaluation: dict[str, Any] | None = None  # closed-loop evaluation of the chosen set


def search_exclusions(evaluate: Callable[[list[str]], dict[str, Any]], ranked: Sequence[str], max_excluded: int,
                      max_evals: int = 16, prune: bool = True, progress: bool = True,
                      initial: dict[str, Any] | None = None) -> SearchResult:
    """The fewest, most sensitive sites to keep in float so that `evaluate(excluded)["passed"]`
    (see the module docstring). `ranked`: site node names, most beneficial to exclude first;
    `initial`: an evaluation of the graph without exclusions already made (counted as a trial)."""
    ranked = list(ranked)
    max_excluded = max(0, min(max_excluded, len(ranked)))
    trials: list[Trial] = []
    cache: dict[tuple[str, ...], dict[str, Any]] = {}
    bar = progress_bar(progress, total=max_evals, desc="mixed-precision search", unit="eval")

    def run(excluded: list[str], phase: str, given: dict[str, Any] | None = None) -> dict[str, Any] | None:
        key = tuple(sorted(excluded))
        if key in cache:
            return cache[key]
        if len(trials) >= max_evals:
            return None
        ev = given if given is not None else evaluate(list(excluded))
        m = ev["metrics"]
        trials.append(trial_of(excluded, ev, phase))
        cache[key] = ev
        if bar is not None:
            bar.update(1)
            bar.set_postfix(excluded=len(excluded), solved=f"{m[solved_metric(m)]:.3f}", passed=ev["passed"])
        return ev

    try:
        ev = run([], "none", initial)
        if ev is not None and ev["passed"]:
            return SearchResult([], True, trials, ev)
        # exponential: 1, 2, 4, ... (and max_excluded)
        lo, hi = 0, None
        k = 1
        while k <= max_excluded:
            ev = run(ranked[:k], "grow")
            if ev is None:
                break
            if ev["passed"]:
                hi = k
                break
            lo = k
            if k == max_excluded:
                break
            k = min(2 * k, max_excluded)
        if hi is not None:  # bisection between lo (fails) and hi (passes)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                ev = run(ranked[:mid], "bisect")
                if ev is None:
                    break
                if ev["passed"]:
                    hi = mid
                else:
                    lo = mid
            chosen = list(ranked[:hi])
            if prune:  # put back the sites the gate does not need, lowest benefit first
                for name in reversed(list(chosen)):
                    trial = [n for n in chosen if n != name]
                    ev = run(trial, "prune")
                    if ev is None:
                        break
                    if ev["passed"]:
                        chosen = trial
            return SearchResult(chosen, True, trials, cache[tuple(sorted(chosen))])
        best = min(trials, key=lambda t: (*_shortfall(cache[tuple(sorted(t.excluded))]), len(t.excluded)))
        return SearchResult(best.excluded, False, trials, cache[tuple(sorted(best.excluded))])
    finally:
        if bar is not None:
            bar.close()


def continue_search(evaluate: Callable[[list[str]], dict[str, Any]], ranked: Sequence[str], start: Sequence[str],
                    max_excluded: int, max_evals: int, progress: bool = True,
                    initial: dict[str, Any] | None = None) -> SearchResult:
    """A bounded continuation of a search whose choice `start` failed the real (ONNX Runtime) gate after
    passing on the fake-quant model: `start` plus the next 1, 2, 4, ... sites of `ranked` (up to
    `max_excluded` in all) until the gate passes, at most `max_evals` runs; when none passes, the
    trial closest to passing (`initial`: the evaluation of `start`, counted as the first)."""
    rest = [n for n in ranked if n not in set(start)]
    trials: list[Trial] = []
    evaluations: list[tuple[list[str], dict[str, Any]]] = []
    if initial is not None:
        evaluations.append((list(start), initial))
    bar = progress_bar(progress, total=max_evals, desc="search (ONNX Runtime continuation)", unit="eval")
    try:
        k = 1
        while len(trials) < max_evals and rest and len(start) + min(k, len(rest)) <= max(max_excluded, len(start) + 1):
            candidate = list(start) + rest[:k]
            ev = evaluate(candidate)
            trials.append(trial_of(candidate, ev, "ort-continue"))
            evaluations.append((candidate, ev))
            if bar is not None:
                bar.update(1)
            if ev["passed"] or k >= len(rest):
                break
            k *= 2
    finally:
        if bar is not None:
            bar.close()
    passing = [(c, e) for c, e in evaluations if e["passed"]]
    if passing:
        chosen, ev = min(passing, key=lambda ce: len(ce[0]))
        return SearchResult(chosen, True, trials, ev)
    if not evaluations:
        return SearchResult(list(start), False, trials, initial)
    chosen, ev = min(evaluations, key=lambda ce: (*_shortfall(ce[1]), len(ce[0])))
    return SearchResult(chosen, False, trials, ev)


def _shortfall(ev: dict[str, Any]) -> tuple[int, int, float]:
    """How far a failing evaluation is from passing: (stopped early, gates failed, summed distance to
    their thresholds). An evaluation stopped early ranks after every complete one (its figures cover
    only the puzzles it ran), then by its puzzles left unrun."""
    stopped = ev.get("stopped_early")
    if stopped is not None:
        return 1, stopped["of"] - stopped["puzzles"], 0.0
    failed = [c for c in ev["gates"] if not c["passed"]]
    return 0, len(failed), sum(abs(c["value"] - c["threshold"]) for c in failed)


def progress_bar(enabled: bool, **kw: Any) -> Any:
    """A tqdm bar for a long quantization phase, or None when progress is off."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(dynamic_ncols=True, leave=False, **kw)


__all__ = ["ClosedLoop", "OpenLoop", "SearchResult", "Site", "Trial", "continue_search", "find_sites", "leave_one_out",
           "prune_dangling", "restore_float", "search_exclusions", "site_errors", "trial_of", "with_outputs"]

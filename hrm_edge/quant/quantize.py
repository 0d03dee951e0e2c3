"""INT8 segment graphs for two targets from one pipeline: `hrm-edge export --int8`.

Entry point: `add_int8_graphs(bundle_tmp_dir, manifest, ck, calib, targets=("cpu",), ...)` -- given
the bundle's fp32 segment graph it writes `segment.int8-<target>.onnx` (and the cpu graph fused for
ONNX Runtime's CPU EP, `segment.int8-cpufused.onnx`), their manifest graph entries, and the
quantization report (`quant_report.json`, `quant_report-<target>.png`).

Pipeline (shared by the targets; every statistic is cached, see `hrm_edge.quant.calibration`):
1. prepare: `fold_weight_transposes` (the dynamo exporter leaves `Transpose(W)` before every
   Linear; ORT quantizes weights per channel only when they are initializers);
2. SmoothQuant for SwiGLU (`smooth_swiglu`, alpha `smooth_alpha`, default 0.85): the input of
   down_proj, silu(gate) * up, has channels ~30x larger than the rest (calibration |max| 150-180
   against a per-channel median of ~4 on the 6x6 demo); dividing them out through the `up` columns of
   gate_up and into down_proj's rows is exact in fp32 and adds no op. Measured (6x6 demo step 3500,
   256 calibration puzzles, all sites int8, open-loop error of carry+logits / closed-loop exact
   agreement): none 0.0288 / 77.7%, alpha 0.5 0.0123 / 89.1%, 0.7 0.0100 / 89.5%, 0.85 0.0097 /
   85.6% (cpu dynamic; static and tensorrt alike, 0.85 lowest open-loop error in all three);
3. ACT-aware calibration: the segment inputs of every ACT step the runtime reaches, weighted by how
   many puzzles still run there (`ActCalibrationReader`);
4. quantize for the target (`settings_for`); static graphs then get `keep_float_paths` (ORT's QDQ
   quantizer feeds the DEQUANTIZED tensor to every consumer, residual Adds and the carry output
   included; afterwards only MatMul/Gemm inputs are quantized);
5. GPTQ (`apply_gptq`): the int8 weights are re-rounded to minimise the error of x @ W on
   calibration inputs (scales unchanged). Weight-only int8 with round-to-nearest agreed with fp32 on
   93.4% of the calibration puzzles, with GPTQ on 98.0% (fp16: 98.8%): it raises the ceiling the
   mixed-precision search can reach;
6. the mixed-precision search (`hrm_edge.quant.search`) keeps the most sensitive sites in
   float until the int8 parity gate, tightened by `SEARCH_MARGIN`, passes on the calibration
   puzzles, closed loop (1024 by default: with 256, the HRM demo's search saw 0 puzzles solved
   differently and the validation gate then saw 3 of 256). Sites are ranked by how much keeping
   each alone in float lowers the open-loop error of the carry, the logits and the halting margin
   q_halt - q_continue. When no trial passes, the one closest to passing is kept. With
   `search_engine="torch"` (the default on CUDA) sensitivity and search run on the PyTorch fake-quant
   model and the chosen graph is confirmed once through ONNX Runtime (`hrm_edge.quant.torch_search`).

Cost (issue 21: at 27M parameters every pass over the calibration puzzles is expensive): the PyTorch
calibration rollout is also the closed-loop fp32 reference and SmoothQuant's statistics; the all-int8
graph's ORT closed-loop run is also the final check when it passes; a search trial stops at the
first batch after which an agreement gate can no longer pass (`ClosedLoop.evaluate(early_stop=True)`:
same pass/fail decisions, so the same chosen sites, at a fraction of a failing run's cost); `estimate:`
is printed first, from one segment timed here (`hrm_edge.quant.estimate`); `phase_seconds` in the report.

Targets ("cpu" | "tensorrt"; optimum preset names map: avx512_vnni, avx2, arm64 -> cpu, tensorrt):
- cpu: `mode="dynamic"` (default) -- `quantize_dynamic`: weights int8 per channel (symmetric,
  QInt8), activations uint8 with a range computed per call (DynamicQuantizeLinear -> MatMulInteger);
  MatMuls with constant weights only. `mode="static"`: QDQ with unsigned activations (QUInt8,
  calibrated ranges) and signed per-channel weights (QInt8) on MatMul/Gemm inputs -- the U8S8 layout
  ORT runs with VNNI/AMX. Same speed (27M, batch 1, 1 thread: 43.7 ms both, fp32 144.8 ms); the
  dynamic flavour agrees with fp32 on more puzzles (per-call ranges follow the carry as it changes
  over ACT steps; open-loop error 0.0097 vs 0.0103 at alpha 0.85). Per-row activation scales
  (`activation_scale="row"`, `hrm_edge.quant.row_scales`): one symmetric int8 scale per row and call
  instead of one uint8 range per tensor, for activations whose rows differ widely in size (the TRM
  token MLP); `export --int8` chooses between the two (`choose_activation_scale`).
- tensorrt: static QDQ, symmetric signed int8 activations and weights, zero points 0
  (ActivationSymmetric, WeightSymmetric), Q/DQ only on MatMul/Gemm inputs (no output Q/DQ, biases
  float); norms, softmax, RoPE and the residual/carry path in float: TensorRT's
  explicit-quantization form. It runs on ORT CPU too (for parity checks); it is meant for
  `hrm-edge build --precision int8`. With `activation_scale="row"` every activation pair becomes one
  scale per row and call in that form (`hrm_edge.quant.row_scales.per_row_qdq`: x / s through a Q/DQ
  pair of constant scale 1, the output times s); `export --int8` chooses as for cpu.
Attention matmuls (activation x activation) stay float by default in every flavour
(`settings_for(..., attention=True)` quantizes them): they were the largest static error source
(open-loop error 0.0130 -> 0.0104 cpu static, 0.0156 -> 0.0104 tensorrt when left float; exact
agreement 76.6 -> 82.8%, 64.1 -> 82.0%, 6x6 demo step 2000, 128 puzzles).

Every op stays in the default ONNX domain (QuantizeLinear, DequantizeLinear, MatMulInteger,
DynamicQuantizeLinear, Cast, Mul; per-row scales add Abs, ReduceMax, Max, Div, Sub), so `check_graph`
holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

from hrm_edge.contract import INT8_TARGETS
from hrm_edge.export.onnx_utils import check_graph, dedupe_initializers, graph_summary, set_metadata
from hrm_edge.manifest import GraphEntry, Manifest
from hrm_edge.parity import solved_metric
from hrm_edge.quant.row_scales import ACTIVATION_SCALES, per_row_activations, per_row_qdq

TARGETS = INT8_TARGETS
PRESETS = {"cpu": "cpu", "avx512_vnni": "cpu", "avx2": "cpu", "arm64": "cpu", "tensorrt": "tensorrt",
           "trt": "tensorrt"}
WEIGHT_OPS = ("MatMul", "Gemm")
MODES = ("dynamic", "static")
DEFAULT_SMOOTH_ALPHA = 0.85
# The search must pass the int8 parity gate on the calibration puzzles with this margin, because the
# gate is then checked on unseen validation puzzles. Measured on the TRM 6x6 demo (step 2000, 256
# puzzles each): a search that just passed on calibration (99.2% exact agreement, 96.1% halting) gave
# 98.0% / 95.3% on validation.
SEARCH_MARGIN = {"min_solved_agreement": 0.005, "min_halting_agreement": 0.02}
# 2: halting margin in the sensitivity score; 3: the search engine; 4: early stop; 5: tensorrt per-row scales
SEARCH_CACHE_VERSION = 5


# `export --int8` names the QAT command when the search keeps more than this share of the sites in float:
# beyond it the float sites cost much of INT8's speed (issue 21: 36 of 50 float sites ran at 1.05x the fused
# fp32 segment, 14 of 50 at 0.72x, all 50 in int8 at 0.57x; the target is at least 90% of the sites in int8).
QAT_ADVICE_FLOAT_SHARE = 0.10


def qat_advice(float_sites: int, sites: int, share: float = QAT_ADVICE_FLOAT_SHARE) -> str | None:
    """The one line `export --int8` prints when more than `share` of the sites compute in float, else None."""
    if not sites or float_sites / sites <= share:
        return None
    return (f"note: {float_sites} of {sites} INT8 sites compute in float (more than {share:.0%}), which limits "
            f"the speed-up over fp32 (`hrm-edge bench` measures it). Quantization-aware fine-tuning is `hrm-edge "
            f"export CKPT --int8 --qat-steps 200` (or `hrm-edge qat CKPT -o RUN`, then export RUN/model.pt); it "
            f"moves the float model, the gate still measures against CKPT, and on the HRM 6x6 demo it has not "
            f"brought sites into int8: with per-row scales the search kept 21 of 50 in float after 400 steps "
            f"against 14 without, and the fine-tuned fp32 model alone kept 90-93% of CKPT's halting steps (the "
            f"gate asks 95%; docs/int8.md, sessions 12 and 21)")


def search_gates() -> Any:
    """The int8 parity gate tightened by `SEARCH_MARGIN`: what the search must pass on calibration puzzles."""
    from hrm_edge.parity import DEFAULT_GATES

    base = DEFAULT_GATES["int8"]
    return dataclasses.replace(base, **{k: min(1.0, getattr(base, k) + m) for k, m in SEARCH_MARGIN.items()
                                        if getattr(base, k) is not None})


def normalize_target(name: str) -> str:
    """"cpu" | "tensorrt" from a target or an optimum preset name (avx512_vnni, avx2, arm64 -> cpu)."""
    try:
        return PRESETS[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown INT8 target {name!r}; use one of {', '.join(PRESETS)}") from None


def graph_name(target: str, fused: bool = False) -> str:
    """Manifest graph name of a target's INT8 segment graph (its file is `<name>.onnx`); `fused`: the cpu
    graph rewritten for ONNX Runtime's CPU EP (`segment.int8-cpufused`, `cpu_fused_build`)."""
    return f"segment.int8-{normalize_target(target)}{'fused' if fused else ''}"


@dataclass
class QuantSettings:
    """How a graph is quantized for one target (everything but the calibration and exclusions)."""

    target: str = "cpu"
    mode: str = "dynamic"  # "dynamic" | "static" (QDQ)
    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    per_channel: bool = True
    op_types: tuple[str, ...] = ("MatMul",)
    extra_options: dict[str, Any] = field(default_factory=dict)
    attention: bool = False  # also quantize the activation x activation MatMuls (attention scores / values)
    # "tensor" (cpu: DynamicQuantizeLinear; tensorrt: calibrated) | "row" (one scale per row and call, `row_scales`)
    activation_scale: str = "tensor"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["op_types"] = list(self.op_types)
        return d


def settings_for(target: str, mode: str | None = None, per_channel: bool = True, attention: bool = False,
                 activation_scale: str = "tensor") -> QuantSettings:
    """The settings of a target (see the module docstring). `attention`: also quantize the attention
    matmuls (static modes; the dynamic mode quantizes constant-weight MatMuls only); `activation_scale`:
    "tensor" | "row" (per-row dynamic scales, `hrm_edge.quant.row_scales`: the cpu dynamic mode and the
    tensorrt target)."""
    target = normalize_target(target)
    if activation_scale not in ACTIVATION_SCALES:
        raise ValueError(f"unknown activation scale {activation_scale!r}; use one of {', '.join(ACTIVATION_SCALES)}")
    if activation_scale == "row" and target == "cpu" and mode not in (None, "dynamic"):
        raise ValueError("per-row activation scales exist for the cpu target's dynamic mode and the tensorrt target")
    if target == "tensorrt":
        if mode not in (None, "static"):
            raise ValueError("the tensorrt target is static QDQ only (TensorRT has no dynamic quantization)")
        return QuantSettings("tensorrt", "static", "QInt8", "QInt8", per_channel, WEIGHT_OPS,
                             {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                              "OpTypesToExcludeOutputQuantization": list(WEIGHT_OPS)}, attention,
                             activation_scale)
    mode = mode or "dynamic"
    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; use one of {', '.join(MODES)}")
    if mode == "dynamic":
        return QuantSettings("cpu", "dynamic", "QUInt8", "QInt8", per_channel, ("MatMul",),
                             {"MatMulConstBOnly": True}, activation_scale=activation_scale)
    return QuantSettings("cpu", "static", "QUInt8", "QInt8", per_channel, WEIGHT_OPS,
                         {"WeightSymmetric": True, "QuantizeBias": False,
                          "OpTypesToExcludeOutputQuantization": list(WEIGHT_OPS)}, attention)


# ----------------------------------------------------------------------------------------------
# graph preparation


def fold_weight_transposes(model: onnx.ModelProto) -> int:
    """Replace Transpose(initializer) nodes by transposed initializers named `<weight>__T` (the
    module name stays readable for the report), in place; identical results are merged.
    Returns the number of nodes folded."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    keep: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    rename: dict[str, str] = {}
    made: set[str] = set()
    for node in g.node:
        if node.op_type == "Transpose" and len(node.input) == 1 and node.input[0] in inits:
            w = numpy_helper.to_array(inits[node.input[0]])
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            name = f"{node.input[0]}__T"
            rename[node.output[0]] = name
            if name not in made:
                made.add(name)
                new_inits.append(numpy_helper.from_array(np.ascontiguousarray(np.transpose(w, perm)), name))
        else:
            keep.append(node)
    if not rename:
        return 0
    for node in keep:
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
    for out in g.output:
        if out.name in rename:
            keep.append(onnx.helper.make_node("Identity", [rename[out.name]], [out.name]))
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(new_inits)
    for v in [v for v in g.value_info if v.name in rename]:
        g.value_info.remove(v)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    for t in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(t)
    dedupe_initializers(model)
    return len(rename)


def swiglu_pairs(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """The SwiGLU blocks: per down_proj weight, its gate_up weight and the activation input of every
    MatMul using it (one per call site). Found from the weight names of a prepared graph."""
    inits = {t.name for t in model.graph.initializer}
    pairs: dict[str, dict[str, Any]] = {}
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = node.input[1]
        if ".mlp.down_proj.weight" in w:
            gu = w.replace(".mlp.down_proj.weight", ".mlp.gate_up_proj.weight")
            if gu in inits:
                pairs.setdefault(w, {"down": w, "gate_up": gu, "inputs": []})["inputs"].append(node.input[0])
    return list(pairs.values())


def smooth_swiglu(model: onnx.ModelProto, act_absmax: dict[str, np.ndarray], alpha: float = DEFAULT_SMOOTH_ALPHA
                  ) -> dict[str, Any]:
    """SmoothQuant for SwiGLU, folded exactly into the weights (no new op), in place.

    Channel j of down_proj's input is divided by s_j = amax_j^alpha / wmax_j^(1 - alpha) (amax_j:
    its calibration |max| over every call site and ACT step; wmax_j: |max| of down_proj's row j)
    by scaling column j of the `up` half of gate_up_proj by 1/s_j; row j of down_proj is multiplied
    by s_j. `act_absmax`: down weight name -> per-channel |max| [I]. Returns per-block facts."""
    inits = {t.name: t for t in model.graph.initializer}
    info: dict[str, Any] = {}
    for pair in swiglu_pairs(model):
        amax = act_absmax.get(pair["down"])
        if amax is None:
            continue
        wd = numpy_helper.to_array(inits[pair["down"]]).astype(np.float32)  # [I, D]
        wgu = numpy_helper.to_array(inits[pair["gate_up"]]).astype(np.float32).copy()  # [D, 2I]
        inter = wd.shape[0]
        if wgu.shape[1] != 2 * inter:
            continue
        wmax = np.abs(wd).max(axis=1)
        s = np.power(np.maximum(amax, 1e-5), alpha) / np.power(np.maximum(wmax, 1e-5), 1.0 - alpha)
        s = np.clip(s, 1e-3, 1e3).astype(np.float32)
        wgu[:, inter:] /= s[None, :]
        inits[pair["down"]].CopyFrom(numpy_helper.from_array(wd * s[:, None], pair["down"]))
        inits[pair["gate_up"]].CopyFrom(numpy_helper.from_array(wgu, pair["gate_up"]))
        info[pair["down"]] = {"sites": len(pair["inputs"]), "act_absmax_before": round(float(amax.max()), 3),
                              "act_absmax_after": round(float((amax / s).max()), 3),
                              "act_absmax_median": round(float(np.median(amax)), 3)}
    return info


# ----------------------------------------------------------------------------------------------
# quantizing


@contextlib.contextmanager
def _quiet():
    """ORT's quantizer logs a pre-processing hint at WARNING on every call."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_graph(fp32: str | Path, out: str | Path, settings: QuantSettings, ranges: str | Path | None = None,
                   method: str = "minmax", nodes_to_exclude: Sequence[str] = ()) -> Path:
    """Quantize a prepared fp32 segment graph; static mode reads its ranges from the calibration
    cache file `ranges` (no reader, no recalibration). Returns `out`."""
    from hrm_edge.quant.calibration import calibration_method

    out = Path(out)
    with _quiet():
        if settings.mode == "dynamic":
            quantize_dynamic(str(fp32), str(out), op_types_to_quantize=list(settings.op_types),
                             per_channel=settings.per_channel, weight_type=getattr(QuantType, settings.weight_type),
                             nodes_to_exclude=list(nodes_to_exclude), extra_options=dict(settings.extra_options))
        else:
            if ranges is None:
                raise ValueError("static quantization needs calibrated ranges")
            quantize_static(str(fp32), str(out), None, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(settings.op_types), per_channel=settings.per_channel,
                            activation_type=getattr(QuantType, settings.activation_type),
                            weight_type=getattr(QuantType, settings.weight_type),
                            nodes_to_exclude=list(nodes_to_exclude), calibrate_method=calibration_method(method),
                            extra_options=dict(settings.extra_options), calibration_cache_path=str(ranges))
    return out


def keep_float_paths(model: onnx.ModelProto, op_types: Sequence[str] = WEIGHT_OPS) -> int:
    """Give the float tensor back to every consumer of a quantized activation that is not a quantized
    op, in place; returns the number of inputs rewired.

    ORT's QDQ quantizer rewires ALL consumers of a quantized tensor to its DequantizeLinear output
    (`replace_input_of_all_nodes`), and when the tensor is a graph output it makes the graph output
    the dequantized value. For HRM that puts 8-bit noise on the residual stream (the Add of every
    post-norm block reads the quantized block input), on the input injection (z_L + z_H + x) and on
    the carry itself (z_H_out feeds lm_head, so the carry handed to the next ACT step was quantized).
    After this pass only the MatMul/Gemm inputs are quantized; the residual/carry path stays fp32."""
    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    graph_outputs = {o.name for o in g.output}
    inits = {t.name for t in g.initializer}
    rewired = 0
    for dq in [n for n in g.node if n.op_type == "DequantizeLinear"]:
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] in inits:
            continue
        float_name, dq_out = q.input[0], dq.output[0]
        if dq_out in graph_outputs:  # ORT renamed the float producer's output to <t>_QuantizeLinear_Input
            new_dq = f"{dq_out}_DequantizeLinear_Output"
            for node in g.node:
                for i, name in enumerate(node.input):
                    if name == dq_out and node.op_type in op_types:
                        node.input[i] = new_dq
                for i, name in enumerate(node.output):
                    if name == float_name:
                        node.output[i] = dq_out
                for i, name in enumerate(node.input):
                    if name == float_name:
                        node.input[i] = dq_out
            dq.output[0] = new_dq
            float_name, dq_out = dq_out, new_dq
            rewired += 1
        for node in g.node:
            if node.op_type in op_types or node is dq:
                continue
            for i, name in enumerate(node.input):
                if name == dq_out:
                    node.input[i] = float_name
                    rewired += 1
    return rewired


def gptq_int8(weight: np.ndarray, hessian: np.ndarray, scale: np.ndarray, damp: float = 0.01,
              act_order: bool = True, block: int = 64) -> np.ndarray:
    """GPTQ rounding (Frantar et al. 2022) of a MatMul weight W [K, N] (y = x @ W) to symmetric int8 with
    the given per-output-channel `scale` [N] (zero point 0): input dimensions are quantized one at a
    time and the rounding error of each is compensated on the not yet quantized ones through the
    inverse of H = E[x x^T] [K, K], minimising ||x W - x W_q|| on the calibration inputs instead of
    ||W - W_q||. Columns in order of decreasing H diagonal (act order), lazy updates in blocks.
    Returns int8 [K, N]."""
    w = weight.T.astype(np.float64).copy()  # [N, K]: one row per output channel
    k = w.shape[1]
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    w, h = w[:, perm], h[perm][:, perm]
    h[np.diag_indices(k)] += damp * float(np.mean(np.diag(h)))
    lower = np.linalg.cholesky(h)
    h_inv = np.linalg.solve(lower.T, np.linalg.solve(lower, np.eye(k)))  # H^-1
    upper = np.linalg.cholesky(h_inv).T
    sc = np.asarray(scale, np.float64).reshape(-1, 1)
    q = np.zeros_like(w)
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        wb = w[:, b0:b1].copy()
        errs = np.zeros_like(wb)
        for j in range(b1 - b0):
            qj = np.clip(np.round(wb[:, j:j + 1] / sc), -127, 127)
            q[:, b0 + j] = qj[:, 0]
            err = (wb[:, j:j + 1] - qj * sc) / upper[b0 + j, b0 + j]
            wb[:, j:] -= err * upper[b0 + j, b0 + j:b1]
            errs[:, j:j + 1] = err
        w[:, b1:] -= errs @ upper[b0:b1, b1:]
    return q[:, np.argsort(perm)].T.astype(np.int8)


def apply_gptq(qmodel: onnx.ModelProto, hessians: dict[str, np.ndarray], fp32: onnx.ModelProto,
               memo: dict[Any, np.ndarray] | None = None) -> list[str]:
    """Re-round, in place, the int8 weights `<W>_quantized` of `qmodel` (per-channel or per-tensor, zero
    point 0, scale kept) with GPTQ; returns the weights changed. Weights without a Hessian, with a
    non-zero zero point or a layout other than a MatMul B [K, N] are left as ORT rounded them.
    `memo`: results by (weight, scale) shared between targets with the same weight scales."""
    memo = {} if memo is None else memo
    inits = {t.name: t for t in qmodel.graph.initializer}
    fp_inits = {t.name: t for t in fp32.graph.initializer}
    done = []
    for name, hessian in hessians.items():
        qn, sn, zn = f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"
        if qn not in inits or sn not in inits or name not in fp_inits:
            continue
        w = numpy_helper.to_array(fp_inits[name]).astype(np.float32)
        q_old = numpy_helper.to_array(inits[qn])
        scale = numpy_helper.to_array(inits[sn]).astype(np.float32)
        if q_old.dtype != np.int8 or q_old.shape != w.shape or w.ndim != 2 or hessian.shape != (w.shape[0],) * 2:
            continue
        if zn in inits and numpy_helper.to_array(inits[zn]).any():
            continue
        if scale.size not in (1, w.shape[1]):
            continue
        scale = np.broadcast_to(scale.reshape(-1), (w.shape[1],))
        key = (name, scale.tobytes())
        if key not in memo:
            memo[key] = gptq_int8(w, hessian, scale)
        inits[qn].CopyFrom(numpy_helper.from_array(memo[key], qn))
        done.append(name)
    return done


def qdq_summary(model: onnx.ModelProto) -> dict[str, Any]:
    """Facts about the quantization ops of a graph: counts, quantized dtypes and zero points."""
    inits = {t.name: t for t in model.graph.initializer}
    zps: list[np.ndarray] = []
    dtypes: dict[str, set[str]] = {"activation": set(), "weight": set()}
    per_channel = 0
    q_ops = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger")
    counts = {op: 0 for op in q_ops}
    for node in model.graph.node:
        if node.op_type in counts:
            counts[node.op_type] += 1
        if node.op_type == "DequantizeLinear":
            src = node.input[0]
            role = "weight" if src in inits else "activation"
            if src in inits:
                dtypes[role].add(onnx.helper.tensor_dtype_to_np_dtype(inits[src].data_type).name)
                if len(inits[node.input[1]].dims) == 1 and inits[node.input[1]].dims[0] > 1:
                    per_channel += 1
            if len(node.input) > 2 and node.input[2] in inits:
                zp = inits[node.input[2]]
                zps.append(numpy_helper.to_array(zp))
                if src not in inits:
                    dtypes["activation"].add(onnx.helper.tensor_dtype_to_np_dtype(zp.data_type).name)
        elif node.op_type == "MatMulInteger" and node.input[1] in inits:
            dtypes["weight"].add(onnx.helper.tensor_dtype_to_np_dtype(inits[node.input[1]].data_type).name)
            if len(node.input) > 3 and node.input[3] in inits:
                zps.append(numpy_helper.to_array(inits[node.input[3]]))
                per_channel += int(inits[node.input[3]].dims[0] > 1 if inits[node.input[3]].dims else 0)
        elif node.op_type == "DynamicQuantizeLinear":
            dtypes["activation"].add("uint8")
    return {**{k: v for k, v in counts.items() if v}, "activation_dtypes": sorted(dtypes["activation"]),
            "weight_dtypes": sorted(dtypes["weight"]), "per_channel_weights": per_channel,
            "all_zero_points_zero": bool(all((z == 0).all() for z in zps)) if zps else None}


def quantized_sites(sites: Sequence[Any], qmodel: onnx.ModelProto, fp32: onnx.ModelProto) -> list[Any]:
    """The sites that `qmodel` actually quantizes (their output is no longer the fp32 node's)."""
    fp_nodes = {n.name: n for n in fp32.graph.node}
    producer = {o: n for n in qmodel.graph.node for o in n.output}
    out = []
    for s in sites:
        q, f = producer.get(s.output), fp_nodes[s.node]
        if q is None or q.op_type != f.op_type or list(q.input) != list(f.input):
            out.append(s)
    return out


# ----------------------------------------------------------------------------------------------
# the pipeline


@dataclass
class Int8Build:
    """One target's result: the graph file, its manifest entry and its report section."""

    target: str
    path: Path
    entry: dict[str, Any]
    report: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Int8Config:
    """Settings of one INT8 export, shared by every target it builds (`export --int8` sets them).

    method: calibration method (`hrm_edge.quant.calibration.calibration_method`); calib_size: the first
    N calibration puzzles are used; per_channel: per-channel int8 weights; smooth_alpha: SmoothQuant
    migration strength on SwiGLU inputs (None: off); policy / max_steps: the halting rule and segment
    cap of the calibration rollouts (the bundle's defaults); cache_dir: calibration cache (default
    `default_cache_dir()`); min_step_share: the least weight of any ACT step in the calibration mix;
    batch_size: puzzles per closed-loop evaluation batch; sensitivity_per_step: puzzles per step in
    the leave-one-out sensitivity pass; threads: ONNX Runtime intra-op threads (None: physical cores);
    gates: the search's gates (default `search_gates()`); float_paths: keep the halting head's input
    path in float; gptq / gptq_per_step: GPTQ weight rounding and its Hessian samples per step;
    search_engine: "torch" (sensitivity and closed-loop search on the PyTorch fake-quant model,
    `hrm_edge.quant.torch_search`, the chosen graph confirmed once through ONNX Runtime) | "ort" (every
    candidate graph rewritten and run through its own ONNX Runtime session) | "auto" (default: torch
    when CUDA is present, else ort; see `resolve_engine`); device: the fake-quant model's device (None:
    CUDA when present); ort_continuation_evals: closed-loop ONNX Runtime runs the search may add when
    the confirmation fails where the fake quant passed."""

    method: str = "minmax"
    calib_size: int = 1024
    per_channel: bool = True
    smooth_alpha: float | None = DEFAULT_SMOOTH_ALPHA
    policy: str = "q"
    max_steps: int | None = None
    cache_dir: str | Path | None = None
    min_step_share: float = 0.125
    batch_size: int = 64
    sensitivity_per_step: int = 8
    threads: int | None = None
    gates: Any = None
    float_paths: bool = True
    gptq: bool = True
    gptq_per_step: int = 16
    search_engine: str = "auto"
    device: str | None = None
    ort_continuation_evals: int = 4


SEARCH_ENGINES = ("auto", "torch", "ort")


def resolve_engine(engine: str, device: str | None = None) -> str:
    """"torch" or "ort" for a search engine setting. "auto" is torch when the fake-quant model runs on
    CUDA, else ort: on a CPU the fake quant costs more per candidate than the rewritten INT8 graph's
    ONNX Runtime session (measured on these 2 shared cores, 1 thread: HRM 6x6 demo, 64 puzzles,
    leave-one-out over 50 sites 115 s vs 51 s, one closed-loop run 11.8 s vs 3.1 s; 27M, one
    puzzle-segment 2.25 s vs 0.63 s, and a session build 1.5 s), because ORT runs integer kernels
    while the simulation adds quantize steps to fp32 matmuls; a session per candidate is not the cost."""
    if engine not in SEARCH_ENGINES:
        raise ValueError(f"unknown search engine {engine!r}; use one of {', '.join(SEARCH_ENGINES)}")
    if engine != "auto":
        return engine
    import torch

    on_cuda = device.startswith("cuda") if device else torch.cuda.is_available()
    return "torch" if on_cuda else "ort"


class Int8Pipeline:
    """Shared state of one INT8 export: the prepared/smoothed fp32 graph, the calibration reader and
    ranges, the fp32 PyTorch reference on the calibration puzzles and the evaluators.

    fp32_graph: the bundle's fp32 segment graph; ck: its checkpoint; calib: the calibration split
    (the first `calib_size` puzzles are used); policy / max_steps: the bundle's halting defaults;
    gate_puzzles / int8_graphs / gate_graphs / calib_loops: what follows, for the printed estimate
    (`hrm_edge.quant.estimate.estimate_export`).
    """

    def __init__(self, fp32_graph: str | Path, ck: Any, calib: Any, work_dir: str | Path,
                 config: Int8Config | None = None, *, progress: bool = True,
                 log: Callable[[str], None] | None = None, targets: Sequence[str] = ("cpu",),
                 gate_puzzles: int = 0, int8_graphs: int | None = None,
                 gate_graphs: int | None = None, calib_loops: int | None = None) -> None:
        from hrm_edge.act import parse_policy
        from hrm_edge.quant.calibration import ActCalibrationReader, calibration_method, default_cache_dir

        config = config or Int8Config()
        calibration_method(config.method)
        self.search_engine = resolve_engine(config.search_engine, config.device)
        self.phase_seconds: dict[str, float] = {}
        self.config = config
        self.ck, self.work_dir = ck, Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.model = ck.model.set_compute_dtype("float32").eval()
        cfg = self.model.config
        self.method, self.per_channel, self.smooth_alpha = config.method, config.per_channel, config.smooth_alpha
        self.policy = parse_policy(config.policy)
        self.max_steps = int(config.max_steps or cfg.halt_max_steps)
        self.cache_dir = Path(config.cache_dir) if config.cache_dir is not None else default_cache_dir()
        self.batch_size, self.threads, self.progress = config.batch_size, config.threads, progress
        self.sensitivity_per_step = config.sensitivity_per_step
        self.gates = config.gates if config.gates is not None else search_gates()
        self.float_paths = config.float_paths
        self.gptq, self.gptq_per_step = config.gptq, config.gptq_per_step
        self._hessians: dict[str, np.ndarray] | None = None
        self._gptq_memo: dict[Any, np.ndarray] = {}
        self.log = log or (lambda m: None)
        n = min(int(config.calib_size), len(calib))
        self.tokens = np.ascontiguousarray(calib.inputs[:n], np.int64)
        self.puzzle_ids = np.ascontiguousarray(calib.puzzle_ids[:n], np.int64)
        self.labels = None if calib.labels is None else calib.labels[:n]
        self.calib_source = f"{getattr(calib, 'task', '?')} {getattr(calib, 'split', '?')}[:{n}]"
        self.src_graph = Path(fp32_graph)
        src = onnx.load(str(fp32_graph))
        self.input_names = tuple(i.name for i in src.graph.input)
        # the rollout also records every segment's logits: it is the closed loop's fp32 reference
        self.reader = ActCalibrationReader(self.model, self.tokens, self.puzzle_ids, self.max_steps, str(self.policy),
                                           config.min_step_share, batch_size=32, input_names=self.input_names,
                                           progress=progress, record_logits=True)
        # 1. prepare
        folded = fold_weight_transposes(src)
        self.prepared_path = self.work_dir / "segment.fp32.prepared.onnx"
        onnx.save(src, str(self.prepared_path))
        self.prep_info: dict[str, Any] = {"weight_transposes_folded": folded}
        from hrm_edge.quant.search import find_sites

        self.sites = find_sites(src)
        self.estimate = self._estimate(targets, gate_puzzles, int8_graphs, gate_graphs, calib_loops)
        self.log(self.estimate.line())
        # 2. smooth
        self.fp32_path = self.prepared_path
        if config.smooth_alpha:
            with self._phase("calibration"):
                self._smooth(src)
        self.fp32 = onnx.load(str(self.fp32_path))
        self._calibration: Any = None
        self._closed: Any = None
        self._open: Any = None

    # -- timing
    @contextlib.contextmanager
    def _phase(self, name: str) -> Any:
        """Add the block's wall time to `phase_seconds[name]`."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phase_seconds[name] = round(self.phase_seconds.get(name, 0.0) + time.perf_counter() - t0, 2)

    def _estimate(self, targets: Sequence[str], gate_puzzles: int, int8_graphs: int | None,
                  gate_graphs: int | None, calib_loops: int | None) -> Any:
        from hrm_edge.quant.estimate import estimate_export, time_segment

        static = sum(settings_for(t, "dynamic" if normalize_target(t) == "cpu" else None).mode == "static"
                     for t in targets)
        seconds = time_segment(self.model, self.tokens, self.puzzle_ids)
        return estimate_export(seconds, puzzles=len(self.tokens), max_steps=self.max_steps,
                               sites=sum(s.kind == "weight" for s in self.sites), targets=len(targets),
                               static_targets=static, sensitivity_per_step=self.sensitivity_per_step,
                               gptq_per_step=self.gptq_per_step if self.gptq else 0, max_evals=16,
                               gate_puzzles=gate_puzzles, int8_graphs=int8_graphs, gate_graphs=gate_graphs,
                               calib_loops=calib_loops)

    # -- stages
    def _smooth(self, prepared: onnx.ModelProto) -> None:
        from hrm_edge.quant.calibration import channel_absmax

        pairs = swiglu_pairs(prepared)
        if not pairs:
            self.prep_info["smoothquant"] = "no SwiGLU block found"
            return
        self.log(f"SmoothQuant statistics over {len(self.tokens)} calibration puzzles ...")
        tensors = [a for p in pairs for a in p["inputs"]]
        names = {n for n, _ in self.model.named_modules()}
        modules = {a: _module_name(p["down"]) for p in pairs for a in p["inputs"]}
        stats = channel_absmax(self.prepared_path, self.reader, tensors, self.cache_dir, self.progress,
                               modules=modules if set(modules.values()) <= names else None)
        amax = {p["down"]: np.max([stats[a] for a in p["inputs"]], axis=0) for p in pairs}
        info = smooth_swiglu(prepared, amax, float(self.smooth_alpha))
        self.fp32_path = self.work_dir / "segment.fp32.smoothed.onnx"
        onnx.save(prepared, str(self.fp32_path))
        self.prep_info["smoothquant"] = {"alpha": self.smooth_alpha, "blocks": info}

    @property
    def calibration(self) -> Any:
        """ACT-aware ranges of the prepared graph (every MatMul/Gemm input), from the cache when possible."""
        if self._calibration is None:
            from hrm_edge.quant.calibration import calibrate

            with self._phase("calibration"):
                self._calibration = calibrate(self.fp32_path, self.reader, self.method, op_types=list(WEIGHT_OPS),
                                              cache_dir=self.cache_dir, progress=self.progress)
            self.log(f"calibration ({self.method}): " + ("cache hit " + self._calibration.key[:12]
                                                          if self._calibration.cache_hit
                                                          else f"{self._calibration.seconds:.1f} s"))
        return self._calibration

    @property
    def closed_loop(self) -> Any:
        if self._closed is None:
            from hrm_edge.act import solve_in_batches
            from hrm_edge.model.runner import TorchSegmentRunner
            from hrm_edge.quant.search import ClosedLoop

            rollout = self.reader.rollout
            if rollout.logits is not None:  # the calibration rollout ran the fp32 reference already
                reference = rollout.solve_result()
            else:
                self.log(f"PyTorch fp32 reference on {len(self.tokens)} calibration puzzles (policy {self.policy}) ...")
                with self._phase("calibration"):
                    reference = solve_in_batches(TorchSegmentRunner(self.model), self.tokens, self.puzzle_ids,
                                                 self.policy, self.max_steps, self.batch_size, record_steps=True,
                                                 record_logits=True)
            inner = self.model.inner
            self._closed = ClosedLoop(self.tokens, self.puzzle_ids, self.labels, reference,
                                      inner.H_init.detach().float().numpy(), inner.L_init.detach().float().numpy(),
                                      self.model.config.total_len, self.policy, self.max_steps,
                                      self.gates, self.batch_size, self.threads, self.work_dir,
                                      progress=self.progress)
        return self._closed

    @property
    def open_loop(self) -> Any:
        if self._open is None:
            from hrm_edge.quant.search import OpenLoop

            self._open = OpenLoop(self.fp32, self.reader.subset(self.sensitivity_per_step), self.threads)
        return self._open

    def quantize(self, settings: QuantSettings) -> onnx.ModelProto:
        """The fully quantized graph (no exclusions) for these settings."""
        path = self.work_dir / f"segment.int8-{settings.target}.full.onnx"
        ranges = self.calibration.ranges_path if settings.mode == "static" else None
        skip = [s.node for s in self.sites if s.kind == "bmm"] if settings.mode == "static" and not settings.attention \
            else []
        quantize_graph(self.fp32_path, path, settings, ranges, self.method, nodes_to_exclude=skip)
        model = onnx.load(str(path))
        if settings.activation_scale == "row" and settings.mode == "dynamic":
            per_row_activations(model)
        if settings.mode == "static" and self.float_paths:
            keep_float_paths(model, settings.op_types)
        if settings.activation_scale == "row" and settings.mode == "static":
            per_row_qdq(model)
        if self.gptq:
            changed = apply_gptq(model, self.hessians, self.fp32, self._gptq_memo)
            self.prep_info.setdefault("gptq", {})[settings.target] = {"weights": len(changed),
                                                                      "per_step": self.gptq_per_step}
        return model

    @property
    def hessians(self) -> dict[str, np.ndarray]:
        """GPTQ statistics: per weight, E[x x^T] over the inputs of all its call sites (cached)."""
        if self._hessians is None:
            from hrm_edge.quant.calibration import input_hessians

            nodes = {n.name: n for n in self.fp32.graph.node}
            groups: dict[str, list[str]] = {}
            for s in self.sites:
                if s.kind == "weight" and s.weight is not None and nodes[s.node].op_type == "MatMul":
                    groups.setdefault(s.weight, []).append(nodes[s.node].input[0])
            with self._phase("gptq statistics"):
                self._hessians = input_hessians(self.fp32_path, self.reader.subset(self.gptq_per_step), groups,
                                                {"per_step": self.gptq_per_step}, self.reader, self.cache_dir,
                                                self.progress)
        return self._hessians

    def _search_key(self, settings: QuantSettings, search_opts: dict[str, Any]) -> str:
        h = hashlib.sha256()
        h.update(f"hrm-edge-int8-search-v{SEARCH_CACHE_VERSION}".encode())
        with open(self.fp32_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(self.tokens.tobytes())
        h.update(self.puzzle_ids.tobytes())
        meta = {"settings": settings.to_dict(), "method": self.method if settings.mode == "static" else None,
                "policy": str(self.policy), "max_steps": self.max_steps, "batch_size": self.batch_size,
                "gates": asdict(self.gates), "float_paths": self.float_paths,
                "gptq": self.gptq, "gptq_per_step": self.gptq_per_step,
                "per_step": self.sensitivity_per_step, "engine": self.search_engine, **search_opts}
        h.update(json.dumps(meta, sort_keys=True, default=str).encode())
        return h.hexdigest()

    def _search_fake_quant(self, full: onnx.ModelProto, sites: Sequence[Any], excluded_weights: str,
                           first: dict[str, Any], max_excluded: int, max_evals: int, prune: bool
                           ) -> tuple[Any, None, dict[str, float]]:
        """Sensitivity and closed-loop search on the PyTorch fake-quant model of `full` (see
        `hrm_edge.quant.torch_search`); `first`: the ORT evaluation of `full` (failed). Returns
        (search result, None, leave-one-out benefit by node)."""
        from hrm_edge.quant.search import search_exclusions
        from hrm_edge.quant.torch_search import FakeQuantEvaluator

        closed = self.closed_loop
        try:
            fq = FakeQuantEvaluator(self.model, full, self.fp32, excluded_weights,
                                    self.reader.subset(self.sensitivity_per_step), closed, self.config.device)
            self.log(f"  sensitivity and search on the fake-quant model ({fq.device}) ...")
            with self._phase("sensitivity"):
                _, benefit = fq.leave_one_out([s.node for s in sites], self.progress)
            with self._phase("search"):
                result = search_exclusions(fq.evaluator(), sorted(benefit, key=lambda n: -benefit[n]), max_excluded,
                                           max_evals, prune, self.progress, initial=first)
        finally:
            self.model.to("cpu")
        return result, None, benefit

    def calib_parity(self, evaluation: dict[str, Any]) -> dict[str, Any]:
        """The manifest's `calib_parity` record of a closed-loop evaluation on the calibration puzzles."""
        m = evaluation["metrics"]
        parity = {k: m.get(k) for k in ("puzzles", "solved_agreement", "exact_agreement", "token_agreement",
                                        "halting_agreement",
                                        "accuracy_reference", "accuracy_candidate", "accuracy_drop",
                                        "mean_steps_reference", "mean_steps_candidate")}
        parity.update(passed=evaluation["passed"], gates=evaluation["gates"], data=self.calib_source,
                      policy=str(self.policy), max_steps=self.max_steps)
        return parity

    def build(self, target: str, out: str | Path, *, mode: str | None = None, search: bool = True,
              max_excluded_share: float = 1.0, max_evals: int = 16, prune: bool = True,
              excluded_weights: str = "int8", exclude: Sequence[str] | None = None,
              activation_scale: str = "tensor") -> Int8Build:
        """Quantize for one target, search the exclusions, write `out` and describe it.
        `activation_scale`: "tensor" | "row" (cpu dynamic and tensorrt: `hrm_edge.quant.row_scales`)."""
        from hrm_edge.quant.search import (
            continue_search,
            leave_one_out,
            restore_float,
            search_exclusions,
            site_errors,
            trial_of,
        )

        t0 = time.perf_counter()
        settings = settings_for(target, mode, self.per_channel, activation_scale=activation_scale)
        if settings.target == "tensorrt" and excluded_weights == "int8":
            excluded_weights = "int8-dq"  # TensorRT takes int8 weights only through DequantizeLinear
        self.log(f"INT8 {settings.target} ({settings.mode}"
                 f"{', per-row activation scales' if settings.activation_scale == 'row' else ''}) ...")
        full = self.quantize(settings)
        sites = quantized_sites(self.sites, full, self.fp32)
        by_node = {s.node: s for s in sites}
        base_err, benefit, result, trials = None, {}, None, []
        search_opts = {"max_excluded_share": max_excluded_share, "max_evals": max_evals, "prune": prune,
                       "excluded_weights": excluded_weights}
        key = self._search_key(settings, search_opts)
        cached = self.cache_dir / f"{key}.search.json"
        excluded: list[str] = []
        searched_from_cache = False
        if search and cached.is_file():
            with contextlib.suppress(OSError, json.JSONDecodeError, KeyError):
                data = json.loads(cached.read_text())
                excluded, benefit, trials = data["excluded"], data["benefit"], data["trials"]
                base_err = data.get("base_open_loop")
                searched_from_cache = True
                self.log(f"  search: cache hit {key[:12]} ({len(excluded)} site(s) in float)")
        confirmed: dict[str, Any] | None = None  # the ONNX Runtime evaluation of the chosen graph, if made
        if search and not searched_from_cache:

            def evaluate(ex: list[str]) -> dict[str, Any]:  # the graph rewritten, one ORT session
                return self.closed_loop.evaluate(restore_float(full, self.fp32, ex, excluded_weights), record=True,
                                                 early_stop=True)

            with self._phase("gate"):  # the all-int8 graph through ORT: it is also the final check when it passes
                first = evaluate([])
            max_excluded = int(max_excluded_share * len(sites))
            engine = self.search_engine
            if engine == "torch" and any(s.kind != "weight" for s in sites):
                engine = "ort"  # attention matmuls quantized: the fake quant simulates weight sites only
            if first["passed"]:
                result = search_exclusions(evaluate, [], 0, max_evals, prune, False, initial=first)
            elif engine == "torch":
                result, base_err, benefit = self._search_fake_quant(full, sites, excluded_weights, first, max_excluded,
                                                                    max_evals, prune)
            else:
                with self._phase("sensitivity"):
                    base_err, benefit = leave_one_out(full, self.fp32, sites, self.open_loop, self.progress,
                                                      excluded_weights)
                with self._phase("search"):
                    result = search_exclusions(evaluate, sorted(benefit, key=lambda n: -benefit[n]), max_excluded,
                                               max_evals, prune, self.progress, initial=first)
            if result.evaluation is not None and result.evaluation.get("engine", "ort") == "ort":
                confirmed = result.evaluation
            else:  # chosen on the fake-quant model: build it once in ONNX, confirm once through ORT
                self.log(f"  confirming the chosen {len(result.excluded)} float site(s) through ONNX Runtime ...")
                with self._phase("gate"):
                    confirmed = evaluate(result.excluded)
                result.trials.append(trial_of(result.excluded, confirmed, "confirm"))
                if not confirmed["passed"] and self.config.ort_continuation_evals:
                    self.log("  the ONNX Runtime check failed where the fake quant passed: continuing the search "
                             f"through ONNX Runtime (at most {self.config.ort_continuation_evals} runs)")
                    with self._phase("search"):
                        more = continue_search(evaluate, sorted(benefit, key=lambda n: -benefit[n]), result.excluded,
                                               max_excluded, self.config.ort_continuation_evals, self.progress,
                                               initial=confirmed)
                    result.trials += more.trials
                    result.excluded, confirmed = more.excluded, more.evaluation
            excluded = result.excluded
            trials = [t.to_dict() for t in result.trials]
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps({"excluded": excluded, "benefit": benefit, "trials": trials,
                                          "base_open_loop": base_err}, default=float))
        if exclude is not None:  # an explicit list (labels or node names) instead of / after the search
            by_label = {s.label: s.node for s in sites}
            excluded = [by_label.get(n, n) for n in exclude]
        advice = qat_advice(len(excluded), len(sites))
        if advice:
            self.log(advice)
        final = restore_float(full, self.fp32, excluded, excluded_weights)
        # Intermediate shapes are optional and every runtime infers them; on the small TRM demo they
        # were 22 kB of a 579 kB graph, 1.2% of the fp32 file the size gate compares with.
        del final.graph.value_info[:]
        set_metadata(final, {"hrm_edge.dtype": "int8", "hrm_edge.int8_target": settings.target,
                             "hrm_edge.int8_mode": settings.mode, "hrm_edge.int8_float_sites": len(excluded)})
        out = Path(out)
        onnx.save(final, str(out))
        check_graph(out)
        if confirmed is not None and confirmed.get("stopped_early"):
            confirmed = None  # no trial passed and the closest one stopped early: run the chosen graph in full
        if confirmed is not None and exclude is None:
            evaluation = confirmed  # this very graph, already run through ONNX Runtime by the search
        else:
            with self._phase("gate"):
                evaluation = self.closed_loop.evaluate(out, record=True)
        final_err = self.open_loop.errors(final)
        if base_err is None:
            base_err = self.open_loop.errors(full)
        samples = self.open_loop.samples
        errs_full = site_errors(self.fp32, full, sites, samples, self.threads)
        errs_final = site_errors(self.fp32, final, sites, samples, self.threads)
        sample_steps = [s for s, _ in samples]
        m = evaluation["metrics"]
        parity = self.calib_parity(evaluation)
        excluded_info = [{"node": n, "label": by_node[n].label if n in by_node else n,
                          "benefit": round(float(benefit.get(n, float("nan"))), 6)} for n in excluded]
        summary = graph_summary(out)
        calib = None
        if settings.mode == "static":
            c = self.calibration
            calib = {**self.reader.describe(), "method": self.method, "cache_key": c.key, "cache_hit": c.cache_hit,
                     "data": self.calib_source}
        entry = {
            "file": out.name, "kind": "segment", "precision": "int8", "target": settings.target, "k": None,
            "opset": summary["opset"], "inputs": summary["inputs"], "outputs": summary["outputs"],
            "bytes": out.stat().st_size, "op_types": summary["op_types"],
            "quantization": {**settings.to_dict(), "method": self.method if settings.mode == "static" else "dynamic",
                             "smoothquant_alpha": self.smooth_alpha, "gptq": self.gptq,
                             "float_paths": self.float_paths, "sites": len(sites),
                             "excluded_weights": excluded_weights,
                             "float_sites": excluded_info, "search": bool(search),
                             "search_cached": searched_from_cache, "qdq": qdq_summary(final)},
            "calibration": calib if calib is not None else {"data": self.calib_source, "ranges": "per call (dynamic)",
                                                            **({"smoothquant_statistics": self.reader.describe()}
                                                               if self.smooth_alpha else {})},
            "calib_parity": parity,
            "export_seconds": round(time.perf_counter() - t0, 2),
        }
        report = {
            "target": settings.target, "graph": out.name, "settings": entry["quantization"],
            "calibration": entry["calibration"], "preparation": self.prep_info, "calib_parity": parity,
            "closed_loop_per_step": m.get("per_step", []),
            "open_loop": {"full": base_err, "final": final_err},
            "qat_advice": advice,
            "search": {"trials": trials, "passed": evaluation["passed"], "engine": self.search_engine,
                       "max_excluded": int(max_excluded_share * len(sites)), "max_evals": max_evals},
            "phase_seconds": dict(self.phase_seconds), "estimate": self.estimate.to_dict(),
            "sites": [{**s.to_dict(), "excluded": s.node in excluded,
                       "loo_benefit": None if s.node not in benefit else round(float(benefit[s.node]), 6),
                       "error_full": round(float(errs_full[i].mean()), 6),
                       "error_final": round(float(errs_final[i].mean()), 6),
                       "error_full_by_step": _by_step(errs_full[i], sample_steps),
                       "error_final_by_step": _by_step(errs_final[i], sample_steps)}
                      for i, s in enumerate(sites)],
            "sizes": {"fp32_bytes": self.src_graph.stat().st_size, "int8_bytes": out.stat().st_size,
                      "ratio": round(out.stat().st_size / self.src_graph.stat().st_size, 4)},
        }
        self.log(f"  {out.name}: {out.stat().st_size / 1e6:.2f} MB ({100 * report['sizes']['ratio']:.0f}% of fp32), "
                 f"{len(excluded)}/{len(sites)} site(s) in float, calib solved agreement "
                 f"{100 * m[solved_metric(m)]:.1f}% (identical outputs "
                 f"{100 * m['exact_agreement']:.1f}%), halting {100 * m['halting_agreement']:.1f}%, "
                 f"{'PASS' if evaluation['passed'] else 'FAIL'}")
        return Int8Build(settings.target, out, entry, report)


def _module_name(weight: str) -> str:
    """The model's module name of a graph weight: "model.inner.L_level.layers.0.mlp.down_proj.weight__T" ->
    "inner.L_level.layers.0.mlp.down_proj"."""
    return re.sub(r"^model\.", "", re.sub(r"\.weight(__T)?$", "", weight))


def _by_step(values: np.ndarray, steps: Sequence[int]) -> list[float]:
    out = []
    for s in sorted(set(steps)):
        idx = [i for i, t in enumerate(steps) if t == s]
        out.append(round(float(np.mean(values[idx])), 6))
    return out


# ----------------------------------------------------------------------------------------------
# the bundle entry point

ACTIVATION_SCALE_CHOICES = ("auto", "tensor", "row")


def _golden_run(bundle_tmp_dir: Path, manifest: Manifest, pipe: Int8Pipeline, graph: Path) -> dict[str, Any]:
    """The INT8 graph's own run on the bundle's golden puzzles on this host (ONNX Runtime CPU, the
    reference's policy and cap), pinned by `hrm_edge.parity.host_run`: `verify` requires a device to solve
    the same golden puzzles and reports the rest (`hrm_edge.parity.host_checks`). The golden set is too
    small to gate a halting rate (one of 16 puzzles halting elsewhere is 93.8% < 95%); `verify` re-runs
    the export's INT8 gate on its puzzles (`hrm_edge.bundle.GATE_SET`) for that."""
    from hrm_edge.act import parse_policy, solve_in_batches
    from hrm_edge.bundle import remap_ids
    from hrm_edge.parity import host_run
    from hrm_edge.runtimes.ort.loader import make_session
    from hrm_edge.runtimes.ort.runner import OrtSegmentRunner

    info = manifest.need_reference()
    with np.load(bundle_tmp_dir / info.file) as ref:
        tokens, ids = ref["inputs"], ref["puzzle_ids"]
    rows = manifest.puzzle_rows
    if rows is not None:
        ids = remap_ids(ids, rows.kept_original_ids)
    inner = pipe.model.inner
    runner = OrtSegmentRunner(make_session(graph, threads=pipe.threads), inner.H_init.detach().float().numpy(),
                              inner.L_init.detach().float().numpy())
    return host_run(solve_in_batches(runner, tokens, ids, parse_policy(info.policy), info.max_steps, 64))


def _candidate(build: Int8Build) -> dict[str, Any]:
    """What `choose_activation_scale` compares and records of one build."""
    return {"calib_passed": bool(build.report["calib_parity"]["passed"]),
            "float_sites": len(build.entry["quantization"]["float_sites"]),
            "export_seconds": build.entry["export_seconds"]}


def keep_activation_scale(candidates: dict[str, dict[str, Any]]) -> str:
    """Which of the two candidates (`_candidate` of the "tensor" and the "row" build) `choose_activation_scale`
    keeps: per-row only where it passes its calibration gate and per-tensor fails it or passes with more sites
    in float. Where neither passes, per-tensor: fewer float sites do not bring a failing graph closer to
    passing. The TRM 9x9 demo's tensorrt graphs (session 20) both failed calibration; per-row, with 32 of 122
    sites in float, then failed the validation gate (98.8% solved agreement), while per-tensor, with all 122,
    had passed it in the sessions before per-row scales existed for that target."""
    row, tensor = candidates["row"], candidates["tensor"]
    if not row["calib_passed"]:
        return "tensor"
    if not tensor["calib_passed"] or row["float_sites"] < tensor["float_sites"]:
        return "row"
    return "tensor"


def choose_activation_scale(pipe: Int8Pipeline, out: Path, work: Path, opts: dict[str, Any], choice: str = "auto",
                            target: str = "cpu") -> Int8Build:
    """The cpu dynamic or the tensorrt graph with per-tensor or per-row activation scales
    (`hrm_edge.quant.row_scales`).

    "tensor" / "row": that one. "auto": per-tensor scales first (cpu: ONNX Runtime's fused
    DynamicQuantizeLinear, the faster kernel; tensorrt: no per-call reduction); when their graph fails its
    calibration gate or keeps more than `QAT_ADVICE_FLOAT_SHARE` of the sites in float, the per-row graph
    is built and searched too, and `keep_activation_scale` picks one. Measured (float sites per tensor /
    per row): the TRM maze demo 64 / 0 of 66 (cpu), 61 / 0 (tensorrt); the HRM 6x6 demo 18 / 38 of 50
    (cpu, session 13), 42 / 9 (tensorrt, session 19) (docs/int8.md). The report records both candidates."""
    if choice not in ACTIVATION_SCALE_CHOICES:
        raise ValueError(f"unknown activation scale {choice!r}; use one of {', '.join(ACTIVATION_SCALE_CHOICES)}")
    if choice != "auto":
        return pipe.build(target, out, activation_scale=choice, **opts)
    tensor = pipe.build(target, out, activation_scale="tensor", **opts)
    first, sites = _candidate(tensor), tensor.entry["quantization"]["sites"]
    if first["calib_passed"] and qat_advice(first["float_sites"], sites) is None:
        tensor.report["activation_scale_choice"] = {"chosen": "tensor", "why": "per-tensor scales pass with "
                                                    f"{first['float_sites']} of {sites} sites in float"}
        return tensor
    pipe.log(f"  per-tensor activation scales keep {first['float_sites']} of {sites} sites in float: "
             "trying per-row scales")
    row = pipe.build(target, work / f"{graph_name(target)}.row.onnx", activation_scale="row", **opts)
    candidates = {"tensor": first, "row": _candidate(row)}
    chosen = row if keep_activation_scale(candidates) == "row" else tensor
    if chosen is row:
        row.path.replace(out)
        row.path, row.entry["file"], row.report["graph"] = out, out.name, out.name
    name = "row" if chosen is row else "tensor"
    chosen.report["activation_scale_choice"] = {"chosen": name, "candidates": candidates}
    pipe.log(f"  activation scales: {name} ({candidates[name]['float_sites']} of {sites} sites in float; "
             f"per-tensor {candidates['tensor']['float_sites']}, per-row {candidates['row']['float_sites']})")
    return chosen


def cpu_fused_build(pipe: Int8Pipeline, build: Int8Build, out: Path, calib_gate: bool = True) -> Int8Build | None:
    """The cpu INT8 graph with ONNX Runtime's CPU fusions (`hrm_edge.export.fuse`: RMSNorm, one integer
    matmul per chunk of a split projection, and attention where its matmuls stayed float), gated on the
    calibration puzzles like the graph it comes from (`calib_gate`; False when a validation gate follows
    that decides whether it ships, see `add_int8_graphs`).

    Why: the quantizer's graph is standard ONNX, and on ORT's CPU EP its unfused norms cost more than int8
    saves. The TRM maze demo, all 66 sites int8 with per-row scales, batch 16, 2 threads, three bench runs
    (bench/latest/session14-int8-fused/): the unfused segment at 1.01-1.13x the fused fp32 one, the fused
    at 0.66-0.71x; with the split projections (session 18) see docs/int8.md.
    The fused graph runs on ORT's CPU EP only (`only_on`), computes the norms in another order (float
    rounding only), and gets its own golden run and, where no validation gate follows, its own calibration
    gate here. The calibration gate is the INT8 gate itself, without the search's margin (`SEARCH_MARGIN`
    offsets the selection among many trials; this is one graph; on the maze demo it kept 97.0% of the
    halting steps where the searched graph kept 97.3%). Returns None (nothing written) when nothing fuses
    or that gate fails."""
    from hrm_edge.export.fuse import fuse_model
    from hrm_edge.manifest import ORT_CPU
    from hrm_edge.parity import DEFAULT_GATES

    t0 = time.perf_counter()
    fused, fusion = fuse_model(onnx.load(str(build.path)))
    if not any(n for op, n in fusion.counts.items() if op != "folded_transposes"):
        return None
    onnx.save(fused, str(out))
    fusions = ", ".join(f"{op} x{n}" for op, n in fusion.counts.items() if n)
    parity = None
    if calib_gate:
        with pipe._phase("gate"):
            evaluation = pipe.closed_loop.evaluate(out, record=True, gates=DEFAULT_GATES["int8"])
        parity = pipe.calib_parity(evaluation)
        m = evaluation["metrics"]
        pipe.log(f"  {out.name}: {fusions}; calib solved agreement {100 * m[solved_metric(m)]:.1f}%, halting "
                 f"{100 * m['halting_agreement']:.1f}%, {'PASS' if evaluation['passed'] else 'FAIL: not shipped'}")
    else:
        pipe.log(f"  {out.name}: {fusions}; gated by the validation gate that follows")
    build.report["cpu_fused"] = {"graph": out.name, "fusion": fusion.to_dict(), "calib_parity": parity}
    if parity is not None and not parity["passed"]:
        out.unlink()
        return None
    summary = graph_summary(out)
    entry = {**json.loads(json.dumps(build.entry, default=str)), "file": out.name, "only_on": ORT_CPU,
             "inputs": summary["inputs"], "outputs": summary["outputs"], "bytes": out.stat().st_size,
             "op_types": summary["op_types"], "fusion": fusion.to_dict(), "calib_parity": parity,
             "export_seconds": round(time.perf_counter() - t0, 2)}
    return Int8Build(build.target, out, entry, build.report)


def add_int8_graphs(bundle_tmp_dir: Path, manifest: Manifest, ck: Any, calib: Any, *,
                    targets: Sequence[str] = ("cpu",), method: str = "minmax", calib_size: int = 1024,
                    per_channel: bool = True, search: bool = True, cache_dir: str | Path | None = None,
                    progress: bool = True, cpu_mode: str = "dynamic",
                    smooth_alpha: float | None = DEFAULT_SMOOTH_ALPHA, max_evals: int = 16,
                    max_excluded_share: float = 1.0, excluded_weights: str = "int8", gptq: bool = True,
                    log: Callable[[str], None] | None = None, gate_puzzles: int = 0,
                    gate_fp16: bool = False,
                    search_engine: str = "auto", activation_scale: str = "auto", cpu_fused: bool = True) -> None:
    """Add `segment.int8-<target>` graphs to a bundle being written (`write_bundle`'s `extra_steps`).

    Reads the manifest's `segment.fp32` graph file from `bundle_tmp_dir`, writes the INT8 graph
    of every target, adds their manifest entries (kind "segment", precision "int8", "target", the
    quantization settings, the float sites with their measured benefit, the calibration and the
    measured parity on the calibration puzzles under the bundle's halting policy) and writes
    `quant_report.json` + `quant_report-<target>.png`. The golden reference data needs no extension:
    INT8 graphs are checked against the same reference.npz with DEFAULT_GATES["int8"].
    `calib`: the calibration split (never the validation split); `targets`: "cpu", "tensorrt" or
    optimum preset names; `cpu_mode`: "dynamic" | "static"; `excluded_weights`: "int8" (float sites keep
    int8 weights, file ~28% of fp32) | "float" (float sites fully fp32: closer to fp32, bigger file);
    `max_excluded_share`: at most this share of the sites in float (beyond about a quarter the CPU
    speed-up is mostly gone: 27M, 1 thread, 25% of sites float: 60 ms vs 37 ms all-int8 vs 145 ms fp32);
    `gate_puzzles`: puzzles of the validation gate that follows on the finished bundle and decides what
    ships (the CLI's export; 0: none follows), and `gate_fp16`: whether it gates the FP16 graph too (for the
    printed estimate). With a gate to follow, the fused cpu graph skips its own calibration closed loop:
    that gate holds it to the PyTorch reference on held-out puzzles and leaves it out when it fails while
    the unfused graph passes (seeded 27M: the loop cost 276 s of a 65-min export, session 16);
    `search_engine`: "auto" | "torch" (fake-quant sensitivity and search, one ORT confirmation) | "ort"
    (`resolve_engine`); `activation_scale`: the activation scales of the cpu dynamic and the tensorrt graphs,
    "tensor" | "row" (`hrm_edge.quant.row_scales`) | "auto" (`choose_activation_scale`); `cpu_fused`: also write the
    cpu graph fused for ONNX Runtime's CPU EP, `segment.int8-cpufused` (`cpu_fused_build`)."""
    from hrm_edge.quant.report import write_report

    bundle_tmp_dir = Path(bundle_tmp_dir)
    targets = list(dict.fromkeys(normalize_target(t) for t in targets))
    fp32_entry = manifest.graphs["segment.fp32"]
    fp32_path = bundle_tmp_dir / fp32_entry.file
    halting = manifest.halting
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=bundle_tmp_dir) as work:
        config = Int8Config(method=method, calib_size=calib_size, per_channel=per_channel, smooth_alpha=smooth_alpha,
                            policy=halting.default_policy if halting else "q",
                            max_steps=halting.max_steps if halting else None, cache_dir=cache_dir, gptq=gptq,
                            search_engine=search_engine)
        fused = int(cpu_fused and "cpu" in targets)
        calib_gate = not gate_puzzles  # the fused graph's own calibration closed loop
        pipe = Int8Pipeline(fp32_path, ck, calib, work, config, progress=progress, log=log, targets=targets,
                            gate_puzzles=gate_puzzles, int8_graphs=len(targets) + fused,
                            gate_graphs=len(targets) + fused + gate_fp16,
                            calib_loops=len(targets) + fused * calib_gate)
        builds = []
        for target in targets:
            name = graph_name(target)
            mode = cpu_mode if target == "cpu" else None
            opts = {"mode": mode, "search": search, "max_excluded_share": max_excluded_share, "max_evals": max_evals,
                    "excluded_weights": excluded_weights}
            if settings_for(target, mode).mode == "dynamic" or target == "tensorrt":
                build = choose_activation_scale(pipe, bundle_tmp_dir / f"{name}.onnx", Path(work), opts,
                                                activation_scale, target)
            else:
                build = pipe.build(target, bundle_tmp_dir / f"{name}.onnx", **opts)
            builds.append(build)
            if target == "cpu" and cpu_fused:
                fused_build = cpu_fused_build(pipe, build, bundle_tmp_dir / f"{graph_name(target, fused=True)}.onnx",
                                              calib_gate)
                if fused_build is not None:
                    builds.append(fused_build)
        report = {"fp32_graph": fp32_entry.file, "calibration_split": pipe.calib_source,
                  "phase_seconds": dict(pipe.phase_seconds), "estimate": pipe.estimate.to_dict(),
                  "targets": {b.target: b.report for b in builds}}
        write_report(bundle_tmp_dir, report)
        for b in builds:
            name = b.path.stem
            b.entry["quantization"]["golden_run"] = _golden_run(bundle_tmp_dir, manifest, pipe, b.path)
            entry = {**b.entry, "report": {"json": "quant_report.json", "png": f"quant_report-{b.target}.png"}}
            manifest.graphs[name] = GraphEntry.from_dict(json.loads(json.dumps(entry, default=str)), manifest.where,
                                                         f'graphs["{name}"]')


__all__ = [
    "ACTIVATION_SCALE_CHOICES",
    "DEFAULT_SMOOTH_ALPHA",
    "MODES",
    "PRESETS",
    "QAT_ADVICE_FLOAT_SHARE",
    "SEARCH_ENGINES",
    "TARGETS",
    "Int8Build",
    "Int8Config",
    "Int8Pipeline",
    "QuantSettings",
    "add_int8_graphs",
    "apply_gptq",
    "choose_activation_scale",
    "cpu_fused_build",
    "fold_weight_transposes",
    "gptq_int8",
    "graph_name",
    "keep_activation_scale",
    "keep_float_paths",
    "normalize_target",
    "qat_advice",
    "qdq_summary",
    "quantize_graph",
    "quantized_sites",
    "resolve_engine",
    "settings_for",
    "smooth_swiglu",
    "swiglu_pairs",
]

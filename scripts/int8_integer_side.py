"""Issue 21, session 11: learn only the INTEGER side of an INT8 graph against the ORIGINAL model.

The float model stays untouched. From a real INT8 export (the pipeline's fully quantized graph,
SmoothQuant and GPTQ included) two things are learned, with the fake-quant model
(`hrm_edge.quant.fakequant`) running closed loop on TRAINING distribution puzzles
(`hrm_edge.quant.qat.training_sampler`; never a calibration or validation puzzle):

- weight rounding (AdaRound-style): per int8 weight, round down or up. The two candidates are the
  GPTQ integer q0 and its neighbour towards the float weight w / s (per-channel symmetric scale s,
  unchanged); a rectified sigmoid h(V) in [0, 1] picks between them, soft while learning and pulled
  to 0/1 by the annealed AdaRound regulariser, hard (h >= 0.5) in the exported graph;
- static activation scales (the `tensorrt` flavour; LSQ-style): per activation scale initializer, a
  learnable log-scale. The forward value is exactly `fakequant.static_quant` with the scale as
  float32 (what the graph stores); the gradient is LSQ's (straight-through rounding).

Objective per segment (the student's own carry, the checkpoint's halting rule decides where the
teacher's trajectory ends): `hrm_edge.quant.distill.Distiller`'s terms against the original fp32 model
run from the student's incoming carry (token KL, halting logits, carry), plus the halting logits
against the original's OWN rollout at the same segment (what the gate compares), over the segments
up to the original's halting step.

Then the learned integers and scales are written into the INT8 graph (same initializer names), the
all-int8 graph is run through ONNX Runtime on the calibration puzzles against the original, the
mixed-precision search runs on it (reference: the original's rollout), and the chosen graph is gated
on the validation puzzles against the original.

    python scripts/int8_integer_side.py OUT [--ckpt checkpoints/sudoku6-demo/model.pt] [--target cpu] ...

Writes OUT/<target>/result.json and OUT/<target>/int8-learned.onnx.
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from hrm_edge.act import solve_in_batches
from hrm_edge.model.checkpoint import load_checkpoint
from hrm_edge.model.runner import TorchSegmentRunner
from hrm_edge.parity import DEFAULT_GATES
from hrm_edge.puzzles.datasets import calib_data_dir, load_puzzle_set
from hrm_edge.quant.calibration import default_cache_dir
from hrm_edge.quant.fakequant import S8, ActQuant, fake_quant, graph_spec, static_quant
from hrm_edge.quant.qat import training_sampler
from hrm_edge.quant.quantize import Int8Config, Int8Pipeline, settings_for
from hrm_edge.quant.search import ClosedLoop, find_sites

KEYS = ("puzzles", "solved_agreement", "exact_agreement", "halting_agreement", "accuracy_drop")
ZETA, GAMMA = 1.1, -0.1  # AdaRound's rectified sigmoid stretch


# ----------------------------------------------------------------------------------------------
# learnable integer side


class LearnedRounding(nn.Module):
    """Round down or up, per weight element. w: the (smoothed) float weight, torch layout [out, in];
    q0: the exporter's int8 integers [out, in]; scale: per-output-channel scale [out]."""

    def __init__(self, w: torch.Tensor, q0: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        s = scale.reshape(-1, 1)
        toward = torch.where(w / s >= q0, q0, q0 - 1)  # lower candidate: q0 or q0 - 1
        self.register_buffer("lo", toward.clamp(-127, 126))
        self.register_buffer("q0", q0)
        self.register_buffer("scale", s)
        up = (q0 > self.lo).float()  # GPTQ's choice is the upper candidate
        h0 = 0.25 + 0.5 * up  # inside the unsaturated range, on GPTQ's side of 0.5
        self.v = nn.Parameter(torch.log((h0 - GAMMA) / (ZETA - GAMMA) / (1 - (h0 - GAMMA) / (ZETA - GAMMA))))

    def h(self) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def integers(self) -> torch.Tensor:
        """The hard rounding (what the graph stores), int [out, in]."""
        return (self.lo + (self.h() >= 0.5).float()).clamp(-127, 127)

    def weight(self, soft: bool) -> torch.Tensor:
        """The dequantized weight [out, in]: soft (lo + h) while learning, else hard."""
        q = self.lo + self.h() if soft else self.integers().detach()
        return q * self.scale

    def regulariser(self, beta: float) -> torch.Tensor:
        """AdaRound's sum(1 - |2h - 1|^beta), mean over elements (0 when every h is 0 or 1)."""
        return (1 - (2 * self.h() - 1).abs().pow(beta)).mean()


class LearnedScale(nn.Module):
    """A static symmetric int8 activation quantizer with a learnable scale (LSQ-style gradient; the
    forward value is `static_quant(x, float32 scale, 0, S8)`)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.log_s = nn.Parameter(torch.tensor(float(np.log(scale)), dtype=torch.float64))

    def scale(self) -> float:
        """The scale as the graph stores it (float32)."""
        return float(np.float32(torch.exp(self.log_s).item()))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        exact = static_quant(x.detach(), self.scale(), 0, S8)
        if not torch.is_grad_enabled():
            return exact.to(x.dtype)
        s = torch.exp(self.log_s).float()
        v = x.float() / s
        lsq = torch.clamp(v + (torch.round(v) - v).detach(), *S8) * s
        return (exact + (lsq - lsq.detach())).to(x.dtype)


class IntegerSide(nn.Module):
    """The learnable integer side of one INT8 graph: roundings by weight name, scales by scale initializer."""

    def __init__(self, full: onnx.ModelProto, fp32: onnx.ModelProto, model: nn.Module, learn_scales: bool) -> None:
        super().__init__()
        self.spec = graph_spec(full, fp32, model)
        self.sites = [s for s in find_sites(fp32) if s.kind == "weight"]
        inits = {t.name: t for t in full.graph.initializer}
        fp_inits = {t.name: t for t in fp32.graph.initializer}
        producer = {o: n for n in full.graph.node for o in n.output}
        fp_nodes = {n.name: n for n in fp32.graph.node}
        self.stored_out_in: dict[str, bool] = {}  # weight key -> the graph stores it [out, in]
        self.weight_of: dict[int, str] = {}  # spec index -> weight name
        self.scale_of: dict[int, str] = {}  # spec index -> activation scale initializer
        self.rounding = nn.ModuleDict()
        self.scales = nn.ModuleDict()
        self.names: dict[str, str] = {}  # module key -> initializer name
        for i, (site, sq) in enumerate(zip(self.sites, self.spec, strict=True)):
            w = site.weight
            if w and f"{w}_quantized" in inits and w in fp_inits:
                key = _key(w)
                if key not in self.rounding:
                    fp_node = fp_nodes[site.node]  # MatMul B is [in, out]; Gemm with transB=1 is [out, in]
                    trans = fp_node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in fp_node.attribute)
                    self.stored_out_in[key] = trans
                    q = numpy_helper.to_array(inits[f"{w}_quantized"]).astype(np.float32)
                    wf = numpy_helper.to_array(fp_inits[w]).astype(np.float32)
                    q, wf = (q, wf) if trans else (q.T, wf.T)  # [out, in]
                    sc = numpy_helper.to_array(inits[f"{w}_scale"]).astype(np.float32).reshape(-1)
                    self.rounding[key] = LearnedRounding(torch.from_numpy(wf.copy()), torch.from_numpy(q.copy()),
                                                         torch.from_numpy(np.broadcast_to(sc, (q.shape[0],)).copy()))
                    self.names[key] = w
                self.weight_of[i] = key
            if learn_scales and isinstance(sq.act, ActQuant) and sq.act.kind == "static":
                node = producer[site.output]
                dq = producer[node.input[0]]
                name = dq.input[1]
                key = _key(name)
                if key not in self.scales:
                    self.scales[key] = LearnedScale(float(numpy_helper.to_array(inits[name])))
                    self.names[key] = name
                self.scale_of[i] = key

    def refresh(self, soft: bool) -> None:
        """Point every site at the current weights and quantizers."""
        weights = {k: r.weight(soft) for k, r in self.rounding.items()}
        for i, sq in enumerate(self.spec):
            if i in self.weight_of:
                sq.weight = weights[self.weight_of[i]]
            if i in self.scale_of:
                sq.act = self.scales[self.scale_of[i]]

    def regulariser(self, beta: float) -> torch.Tensor:
        return torch.stack([r.regulariser(beta) for r in self.rounding.values()]).mean()

    def flips(self) -> int:
        """Weights whose hard rounding differs from the exporter's."""
        return int(sum((r.integers() != r.q0).sum() for r in self.rounding.values()))

    def write(self, full: onnx.ModelProto) -> onnx.ModelProto:
        """A copy of `full` with the learned integers and scales in place of the exporter's."""
        out = copy.deepcopy(full)
        inits = {t.name: t for t in out.graph.initializer}
        for key, r in self.rounding.items():
            name = f"{self.names[key]}_quantized"
            q = r.integers().detach().numpy()
            q = (q if self.stored_out_in[key] else q.T).astype(np.int8)
            inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(q), name))
        for key, s in self.scales.items():
            name = self.names[key]
            inits[name].CopyFrom(numpy_helper.from_array(np.array(s.scale(), np.float32), name))
        return out


def _key(name: str) -> str:
    return name.replace(".", "_")


# ----------------------------------------------------------------------------------------------
# the objective


class TeacherPool:
    """Training-distribution puzzles with the original's own closed-loop outputs at every segment,
    computed once: tokens [N, S], q_halt / q_cont [T, N], logits [T, N, S, V], z_H [T, N, P, D], halting
    step [N] (1-based, the checkpoint's rule: q_halt > q_cont, or the segment cap)."""

    @torch.no_grad()
    def __init__(self, teacher: nn.Module, tokens: np.ndarray, labels: np.ndarray, steps: int, batch: int = 64) -> None:
        self.tokens, self.labels = torch.from_numpy(tokens), torch.from_numpy(labels)
        parts: dict[str, list[torch.Tensor]] = {"qh": [], "qc": [], "logits": [], "z": []}
        for i in range(0, len(tokens), batch):
            t = self.tokens[i:i + batch]
            x = teacher.embed(t, torch.zeros(len(t), dtype=torch.long))
            z_H, z_L = teacher.initial_carry(len(t), x.device)
            qh, qc, lg, zs = [], [], [], []
            for _ in range(steps):
                z_H, z_L = teacher.reason(z_H, z_L, x)
                logits, h, c = teacher.heads(z_H)
                qh.append(h)
                qc.append(c)
                lg.append(logits.float())
                zs.append(z_H.half())
            for k, v in (("qh", qh), ("qc", qc), ("logits", lg), ("z", zs)):
                parts[k].append(torch.stack(v))
        self.qh, self.qc = torch.cat(parts["qh"], 1), torch.cat(parts["qc"], 1)
        self.logits, self.z = torch.cat(parts["logits"], 1), torch.cat(parts["z"], 1)
        halts = self.qh > self.qc
        halts[-1] = True
        self.halt = halts.float().argmax(0) + 1


def rollout_loss(student: nn.Module, pool: TeacherPool, idx: torch.Tensor, w_global: float, one_step: bool,
                 hinge: float = 0.0) -> dict[str, torch.Tensor]:
    """The student's closed loop on pool rows `idx`, each row up to the original's halting step,
    against the original's own outputs at each segment: token KL, halting logits (weight w_global),
    relative carry error; with `hinge` > 0 the halting term is instead relu(hinge - sign(m_t) * m_s) on the
    halting margin m = q_halt - q_cont (the same decision as the original at every segment, by at least
    `hinge` logits). One-step gradient: only the last L and H update of a segment build a graph."""
    tokens, labels, t_halt = pool.tokens[idx], pool.labels[idx], pool.halt[idx]
    x = student.embed(tokens, torch.zeros(len(idx), dtype=torch.long))
    z_H, z_L = student.initial_carry(len(idx), x.device)
    mask_tok = (labels != 0).float()
    terms = {"tokens": 0.0, "q_global": 0.0, "carry": 0.0}
    rows = torch.arange(len(idx))  # positions in idx of the rows still running
    count = 0
    for t in range(int(t_halt.max())):
        keep = t < t_halt[rows]
        if not bool(keep.all()):
            rows, z_H, z_L, x = rows[keep], z_H[keep], z_L[keep], x[keep]
        z_H, z_L = student.reason(z_H, z_L, x, one_step_grad=one_step)
        logits, qh, qc = student.heads(z_H)
        g = idx[rows]
        logp_s, logp_t = F.log_softmax(logits.float(), -1), F.log_softmax(pool.logits[t, g], -1)
        m = mask_tok[rows]
        kl = ((logp_t.exp() * (logp_t - logp_s)).sum(-1) * m).sum(-1) / m.sum(-1).clamp_min(1)
        if hinge > 0:
            sign = torch.where(pool.qh[t, g] > pool.qc[t, g], 1.0, -1.0)
            qg = torch.relu(hinge - sign * (qh - qc))
        else:
            qg = 0.5 * ((qh - pool.qh[t, g]) ** 2 + (qc - pool.qc[t, g]) ** 2)
        zt = pool.z[t, g].float()
        carry = (z_H - zt).flatten(1).pow(2).sum(-1) / zt.flatten(1).pow(2).sum(-1).clamp_min(1e-12)
        for name, v in (("tokens", kl), ("q_global", qg), ("carry", carry)):
            terms[name] = terms[name] + v.sum()
        count += len(rows)
        z_H, z_L = z_H.detach(), z_L.detach()
    out = {k: v / count for k, v in terms.items()}
    out["loss"] = out["tokens"] + w_global * out["q_global"] + out["carry"]
    return out


# ----------------------------------------------------------------------------------------------
# evaluation helpers


def closed_loop_on(pset_tokens: np.ndarray, ids: np.ndarray, labels: np.ndarray | None, model: nn.Module,
                   pipe: Int8Pipeline, batch: int = 64) -> ClosedLoop:
    policy, steps = pipe.policy, pipe.max_steps
    ref = solve_in_batches(TorchSegmentRunner(model), pset_tokens, ids, policy, steps, batch, record_steps=True,
                           record_logits=True)
    inner = model.inner
    return ClosedLoop(pset_tokens, ids, labels, ref, inner.H_init.detach().float().numpy(),
                      inner.L_init.detach().float().numpy(), model.config.total_len, policy, steps,
                      DEFAULT_GATES["int8"], batch, 1, pipe.work_dir)


def fq_eval(student: nn.Module, side: IntegerSide, loop: ClosedLoop) -> dict[str, Any]:
    with torch.no_grad():
        side.refresh(soft=False)
        ev = loop.evaluate_runner(TorchSegmentRunner(student))
    return {k: ev["metrics"].get(k) for k in KEYS} | {"passed": ev["passed"]}


def summary(ev: dict[str, Any]) -> dict[str, Any]:
    return {k: ev["metrics"].get(k) for k in KEYS} | {"passed": ev["passed"]}


# ----------------------------------------------------------------------------------------------
# main


class LearnedPipeline(Int8Pipeline):
    """The export pipeline with the learned fully quantized graph in place of its own quantization."""

    learned: dict[str, onnx.ModelProto]

    def quantize(self, settings: Any) -> onnx.ModelProto:
        return copy.deepcopy(self.learned[settings.target])


def fresh_cache(root: Path) -> Path:
    """A cache directory with the calibration statistics but no search results (the search cache key
    does not see the learned graph)."""
    d = root / "cache"
    if not d.exists():
        shutil.copytree(default_cache_dir(), d, ignore=shutil.ignore_patterns("*.search.json"))
    return d


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--ckpt", default="checkpoints/sudoku6-demo/model.pt")
    ap.add_argument("--target", default="cpu")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr-round", type=float, default=1e-2)
    ap.add_argument("--lr-scale", type=float, default=1e-3)
    ap.add_argument("--reg", type=float, default=0.01, help="AdaRound regulariser weight")
    ap.add_argument("--w-global", type=float, default=1.0)
    ap.add_argument("--full-grad", action="store_true", help="gradient through every update of a segment")
    ap.add_argument("--pool", type=int, default=1024, help="training-distribution puzzles with teacher targets")
    ap.add_argument("--hinge", type=float, default=0.0, help="halting-margin hinge (logits) instead of q MSE")
    ap.add_argument("--hard", action="store_true", help="hard rounding in the forward (STE) instead of soft")
    ap.add_argument("--no-rounding", action="store_true")
    ap.add_argument("--givens", default="10,24")
    ap.add_argument("--monitor", type=int, default=256, help="held-out training-distribution puzzles")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--calib-size", type=int, default=1024)
    ap.add_argument("--search", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    target = settings_for(args.target).target
    root = args.out / target
    root.mkdir(parents=True, exist_ok=True)
    ck = load_checkpoint(args.ckpt)
    calib = load_puzzle_set(calib_data_dir(ck.task), split="calib")
    val = load_puzzle_set(calib_data_dir(ck.task), split="val")
    from hrm_edge.export.graphs import export_segment

    fp32_file = root / "segment.fp32.onnx"
    if not fp32_file.exists():
        export_segment(ck.model.set_compute_dtype("float32").eval(), fp32_file)
    pipe = LearnedPipeline(fp32_file, ck, calib, root / "work",
                           Int8Config(calib_size=args.calib_size, cache_dir=fresh_cache(args.out), threads=1,
                                      search_engine="ort"), progress=False, log=print, targets=(target,))
    settings = settings_for(target)
    full = Int8Pipeline.quantize(pipe, settings)  # the exporter's fully quantized graph (GPTQ)
    onnx.save(full, str(root / "int8-exporter.onnx"))
    model = pipe.model  # the original, float32; fake quant installs on it, its weights never change
    model.requires_grad_(False)
    teacher = copy.deepcopy(model).eval()
    side = IntegerSide(full, pipe.fp32, model, learn_scales=settings.mode == "static")
    print(f"{target}: {len(side.spec)} sites, {len(side.rounding)} weights, {len(side.scales)} activation scales")
    result: dict[str, Any] = {"checkpoint": args.ckpt, "target": target, "args": {k: str(v) for k, v in
                                                                                  vars(args).items()}}
    # the exporter's all-int8 graph through ORT, calib, against the original (the search's first trial)
    before = pipe.closed_loop.evaluate(root / "int8-exporter.onnx")
    result["exporter_all_int8_calib"] = summary(before)
    print("exporter all-int8, calib:", json.dumps(result["exporter_all_int8_calib"]), flush=True)

    sampler, data = training_sampler(ck.task, args.out, 500, 0)
    result["data"] = data
    gmin, gmax = (int(v) for v in args.givens.split(","))
    mon_tokens, mon_labels, _ = sampler.sample(args.monitor, gmin, gmax)
    monitor = closed_loop_on(mon_tokens, np.zeros(len(mon_tokens), np.int64), mon_labels, model, pipe)
    pool_tokens, pool_labels, _ = sampler.sample(args.pool, gmin, gmax)
    t_pool = time.perf_counter()
    pool = TeacherPool(teacher, pool_tokens, pool_labels, pipe.max_steps)
    result["pool"] = {"puzzles": args.pool, "seconds": round(time.perf_counter() - t_pool, 1),
                      "mean_halting_step": float(pool.halt.float().mean())}
    print("pool:", result["pool"], flush=True)
    rng = torch.Generator().manual_seed(0)
    params = [{"params": [p for r in side.rounding.values() for p in r.parameters()], "lr": args.lr_round},
              {"params": [p for s in side.scales.values() for p in s.parameters()], "lr": args.lr_scale}]
    if args.no_rounding:
        params = params[1:]
    opt = torch.optim.Adam(params)
    history = []
    with fake_quant(model, side.spec):
        history.append({"step": 0, "monitor": fq_eval(model, side, monitor), "flips": 0})
        print("step 0 monitor:", json.dumps(history[-1]), flush=True)
        t0 = time.perf_counter()
        for step in range(1, args.steps + 1):
            frac = step / args.steps
            beta = 20 - 18 * min(1.0, max(0.0, (frac - 0.2) / 0.8))  # AdaRound: 20 -> 2 after a 20% warm-up
            idx = torch.randint(0, args.pool, (args.batch,), generator=rng)
            side.refresh(soft=not args.hard)
            if args.hard:  # straight-through: hard value, gradient of the soft rounding
                for i, sq in enumerate(side.spec):
                    if i in side.weight_of:
                        r = side.rounding[side.weight_of[i]]
                        soft = r.weight(True)
                        sq.weight = soft + (r.weight(False) - soft).detach()
            terms = rollout_loss(model, pool, idx, args.w_global, not args.full_grad, args.hinge)
            loss = terms["loss"]
            if not args.no_rounding and not args.hard and frac > 0.2:
                loss = loss + args.reg * side.regulariser(beta)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 10 == 0:
                print(f"step {step}: " + " ".join(f"{k} {float(v.detach()):.4g}" for k, v in terms.items())
                      + f" flips {side.flips()} {time.perf_counter() - t0:.0f}s", flush=True)
            if step % args.eval_every == 0 or step == args.steps:
                history.append({"step": step, "monitor": fq_eval(model, side, monitor), "flips": side.flips(),
                                "seconds": round(time.perf_counter() - t0, 1),
                                "loss": {k: float(v.detach()) for k, v in terms.items()}})
                print(f"step {step} monitor:", json.dumps(history[-1]["monitor"]), flush=True)
        result["learn_seconds"] = round(time.perf_counter() - t0, 1)
    result["history"] = history
    result["flips"] = side.flips()
    result["weights"] = int(sum(r.q0.numel() for r in side.rounding.values()))
    learned = side.write(full)
    path = root / "int8-learned.onnx"
    onnx.save(learned, str(path))
    after = pipe.closed_loop.evaluate(path)
    result["learned_all_int8_calib"] = summary(after)
    print("learned all-int8, calib:", json.dumps(result["learned_all_int8_calib"]), flush=True)
    val_loop = closed_loop_on(val.inputs, val.puzzle_ids, val.labels, model, pipe)
    result["learned_all_int8_val"] = summary(val_loop.evaluate(path))
    result["exporter_all_int8_val"] = summary(val_loop.evaluate(root / "int8-exporter.onnx"))
    print("val all-int8: exporter", json.dumps(result["exporter_all_int8_val"]), "learned",
          json.dumps(result["learned_all_int8_val"]), flush=True)
    (root / "result.json").write_text(json.dumps(result, indent=1, default=str))
    if args.search:
        pipe.learned = {target: learned}
        t = time.time()
        built = pipe.build(target, root / "int8-learned-searched.onnx")
        q = built.entry["quantization"]
        result["search"] = {"float_sites": len(q["float_sites"]), "sites": q["sites"],
                            "float_labels": [f["label"] for f in q["float_sites"]],
                            "calib_parity": built.report["calib_parity"], "seconds": round(time.time() - t, 1),
                            "trials": built.report["search"]["trials"]}
        result["searched_val"] = summary(val_loop.evaluate(root / "int8-learned-searched.onnx"))
        print("searched:", result["search"]["float_sites"], "of", q["sites"], "float; val",
              json.dumps(result["searched_val"]), flush=True)
        (root / "result.json").write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()

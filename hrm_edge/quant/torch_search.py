"""The mixed-precision search's evaluators on the fake-quant model: PyTorch instead of one ONNX
Runtime session per candidate graph.

`FakeQuantEvaluator` reads the fully quantized INT8 graph once (`hrm_edge.quant.fakequant.graph_spec`:
every site's int8 weights, SmoothQuant and GPTQ included, its activation quantizer, scale and zero
point) and then scores candidate exclusion sets by toggling sites: a site kept in float is a site
whose activation is not quantized (`SiteQuant.act = None`), with the same int8-dequantized weight
that `restore_float(..., weights="int8")` writes (or the smoothed fp32 weight for `weights="float"`).
No ONNX rewrite, no session build, no file per candidate; batches run on CUDA when present.

- `open_loop(excluded)`: the leave-one-out sensitivity score of `hrm_edge.quant.search.OpenLoop`
  (mean relative error of z_H_out, z_L_out, logits and the halting margin, one segment, calibration
  inputs of every ACT step, the same per-step batches, so the dynamic flavour's per-call ranges
  span the same rows as in the ORT graph), against the PyTorch fp32 model on the same inputs;
- `closed_loop(excluded)`: `ClosedLoop.evaluate_runner` with a `TorchSegmentRunner` on the fake-quant
  model: the same puzzles, batches, comparison and gates as the ONNX Runtime search.

The fake quant equals the INT8 graph site by site to float rounding (<= 2.3e-7 relative), but a
whole trajectory drifts (a rounding difference upstream moves an activation across a quantization
boundary now and then), so the chosen graph is always confirmed once through ONNX Runtime.
Measured agreement with the ORT evaluators on the HRM 6x6 demo: tests/quant/test_torch_search.py.

When it pays: on CUDA. On a CPU the simulation costs more per candidate than ORT running the
rewritten INT8 graph (integer kernels against fp32 matmuls plus quantize steps; a session build is
1.5 s even at 27M parameters), so `Int8Config(search_engine="auto")` uses it only on CUDA
(`hrm_edge.quant.quantize.resolve_engine` has the numbers).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import torch

from hrm_edge.quant.fakequant import SiteQuant, fake_quant, graph_spec
from hrm_edge.quant.search import COMPARED, SCORED, ClosedLoop, benefits, find_sites


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm((a - b).double()) / max(float(torch.linalg.vector_norm(b.double())), 1e-12))


class FakeQuantEvaluator:
    """Open- and closed-loop scores of exclusion sets (fp32 node names of sites kept in float) of one
    fully quantized graph, computed on the PyTorch fake-quant model.

    model: the fp32 model the graphs were exported from; full: the fully quantized graph (no exclusions);
    fp32: the prepared (smoothed) fp32 graph it was quantized from; weights: "float" | "int8" |
    "int8-dq", as `restore_float` takes it; samples: open-loop (step, feeds) pairs; closed: the ORT
    search's `ClosedLoop` (its puzzles, reference, halting rule, gates and batch size; the fake-quant
    model runs in place of its ONNX Runtime session)."""

    def __init__(self, model: torch.nn.Module, full: onnx.ModelProto, fp32: onnx.ModelProto, weights: str,
                 samples: list[tuple[int, dict[str, np.ndarray]]], closed: ClosedLoop,
                 device: str | torch.device | None = None) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        nodes = [s.node for s in find_sites(fp32) if s.kind == "weight"]
        quantized = graph_spec(full, fp32, self.model)
        floated = graph_spec(fp32, fp32, self.model) if weights == "float" else quantized
        self._sites = {n: (self._moved(q), self._moved(f)) for n, q, f in zip(nodes, quantized, floated, strict=True)}
        self.samples, self.closed = samples, closed
        self._reference_outputs = [self._segment(feeds) for _, feeds in samples]

    def _moved(self, s: SiteQuant) -> SiteQuant:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(self.device)

        return dataclasses.replace(s, weight=move(s.weight), bias=move(s.bias))

    def spec(self, excluded: Sequence[str] = ()) -> list[SiteQuant]:
        """The per-site quantizers with these sites in float (activation unquantized)."""
        excluded = set(excluded)
        unknown = excluded - set(self._sites)
        if unknown:
            raise KeyError(f"fake quant: no weight site {sorted(unknown)[0]!r}")
        return [dataclasses.replace(f, act=None) if n in excluded else q for n, (q, f) in self._sites.items()]

    @torch.inference_mode()
    def _segment(self, feeds: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """One segment on these graph feeds: z_H_out, z_L_out, logits, q_halt, q_continue."""
        t = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in feeds.items()}
        x = t["x"] if "x" in t else self.model.embed(t["tokens"], t["puzzle_ids"])
        z_H, z_L = self.model.reason(t["z_H"], t["z_L"], x)
        logits, q_halt, q_continue = self.model.heads(z_H)
        return {"z_H_out": z_H, "z_L_out": z_L, "logits": logits.float(), "q_halt": q_halt, "q_continue": q_continue}

    def open_loop(self, excluded: Sequence[str] = ()) -> dict[str, Any]:
        """`OpenLoop.errors` of the graph with these sites in float, on the fake-quant model."""
        per_step = []
        with fake_quant(self.model, self.spec(excluded)):
            for (step, feeds), ref in zip(self.samples, self._reference_outputs, strict=True):
                got = self._segment(feeds)
                errs = {name: _rel(got[name], ref[name]) for name in COMPARED}
                errs["q_margin"] = _rel(got["q_halt"] - got["q_continue"], ref["q_halt"] - ref["q_continue"])
                argmax = float((got["logits"].argmax(-1) == ref["logits"].argmax(-1)).float().mean())
                halts = (got["q_halt"] > got["q_continue"]) == (ref["q_halt"] > ref["q_continue"])
                halt = float(halts.float().mean())
                per_step.append({"step": step, **errs, "token_agreement": argmax, "halt_agreement": halt})
        score = float(np.mean([np.mean([e[n] for n in SCORED]) for e in per_step]))
        return {"score": score, "per_step": per_step}

    def leave_one_out(self, nodes: Sequence[str], progress: bool = True) -> tuple[dict[str, Any], dict[str, float]]:
        """(open-loop errors with every site int8, {node: score reduction when only this site is float})."""
        base = self.open_loop()
        benefit = benefits(base["score"], nodes, lambda node: self.open_loop([node])["score"],
                           "sensitivity (leave one out, fake quant)", progress)
        return base, benefit

    def closed_loop(self, excluded: Sequence[str] = ()) -> dict[str, Any]:
        """`ClosedLoop.evaluate` of the graph with these sites in float, on the fake-quant model."""
        from hrm_edge.model.runner import TorchSegmentRunner

        with fake_quant(self.model, self.spec(excluded)):
            return {**self.closed.evaluate_runner(TorchSegmentRunner(self.model, self.device)), "engine": "torch"}

    def evaluator(self) -> Callable[[list[str]], dict[str, Any]]:
        """`closed_loop` in the form `search_exclusions` takes."""
        return lambda excluded: self.closed_loop(excluded)


__all__ = ["FakeQuantEvaluator", "default_device"]

"""Distillation objective of quantization-aware fine-tuning: keep the ORIGINAL model's behaviour.

The INT8 gate compares the quantized graph with the original checkpoint's fp32 reference (solved
agreement, halting agreement, accuracy), so the fine-tune's target is the original model itself, not the
task labels: a frozen fp32 teacher runs every training segment from the student's own incoming carry
(the same carry trajectory, deep supervision over ACT segments) and the fake-quantized student is pulled
towards its outputs. `Distiller` is a `Trainer(loss_fn=...)` callback (`hrm_edge.train.trainer.SegmentStep`);
per step, averaged over the B ACT slots:

- tokens: KL(teacher || student) of the softmax token distributions, mean over the non-PAD tokens;
- q: squared error of the halting logits, (q_halt_s - q_halt_t)^2 + (q_cont_s - q_cont_t)^2, halved,
  which holds the halting margin q_halt - q_cont the "q" policy decides on;
- carry: relative squared error of the outgoing carry, |z_H_s - z_H_t|^2 / |z_H_t|^2 per slot (what
  the next segment starts from);
- task: the trainer's own loss (deep supervision + halting BCE), off by default: the task loss moves the
  halting head away from the original's (bench/latest/session8-qat).

With the student equal to the teacher and no quantizer installed every term but `task` is zero.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hrm_edge.train.trainer import SegmentStep


@dataclass(frozen=True, kw_only=True)
class DistillWeights:
    """Weights of the terms (dimensionless; each term is O(1) or smaller for a close student)."""

    tokens: float = 1.0
    q: float = 1.0
    carry: float = 1.0
    task: float = 0.0


@dataclass(frozen=True)
class DistillTerms:
    """The unweighted terms of one step (scalars, mean over slots)."""

    tokens: torch.Tensor
    q: torch.Tensor
    carry: torch.Tensor


class Distiller:
    """Loss callback: the fake-quantized student against a frozen fp32 copy of the original model."""

    def __init__(self, original: nn.Module, weights: DistillWeights | None = None) -> None:
        """`original`: the model before fine-tuning (copied, frozen, float32; install no quantizer on it)."""
        self.teacher = copy.deepcopy(original).float().eval().requires_grad_(False)
        self.weights = weights or DistillWeights()

    @torch.no_grad()
    def teacher_segment(self, step: SegmentStep) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z_H [B, P, H], logits [B, S, V], q_halt [B], q_cont [B]) of the teacher from the student's carry."""
        ids = torch.zeros(len(step.tokens), dtype=torch.long, device=step.tokens.device)
        z_H, _, logits, q_halt, q_cont = self.teacher.segment(step.carry_h_in.float(), step.carry_l_in.float(),
                                                              step.tokens, ids)
        return z_H, logits, q_halt, q_cont

    def terms(self, step: SegmentStep) -> DistillTerms:
        z_t, logits_t, qh_t, qc_t = self.teacher_segment(step)
        mask = (step.labels != 0).float()
        logp_s = F.log_softmax(step.logits.float(), -1)
        logp_t = F.log_softmax(logits_t.float(), -1)
        kl = (logp_t.exp() * (logp_t - logp_s)).sum(-1)  # [B, S]
        tokens = ((kl * mask).sum(-1) / mask.sum(-1).clamp_min(1)).mean()
        q = 0.5 * ((step.q_halt.float() - qh_t) ** 2 + (step.q_cont.float() - qc_t) ** 2).mean()
        diff = (step.carry_h.float() - z_t).flatten(1).pow(2).sum(-1)
        carry = (diff / z_t.flatten(1).pow(2).sum(-1).clamp_min(1e-12)).mean()
        return DistillTerms(tokens, q, carry)

    def __call__(self, step: SegmentStep) -> torch.Tensor:
        t, w = self.terms(step), self.weights
        loss = w.tokens * t.tokens + w.q * t.q + w.carry * t.carry
        return loss + w.task * step.task_loss if w.task else loss


__all__ = ["DistillTerms", "DistillWeights", "Distiller"]

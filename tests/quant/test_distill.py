"""The QAT distillation objective on the HRM 6x6 demo: nothing to learn when the student is the teacher,
and a few steps under fake quantization pull the student's halting margin towards the teacher's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hrm_edge.model import create_model
from hrm_edge.model.checkpoint import load_checkpoint
from hrm_edge.puzzles.datasets import calib_data_dir, load_puzzle_set
from hrm_edge.quant.distill import Distiller, DistillWeights
from hrm_edge.quant.fakequant import fake_quant
from hrm_edge.quant.qat import qat_spec, site_absmax, smoothing
from hrm_edge.train.trainer import SegmentStep

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DEMO = "checkpoints/sudoku6-demo/model.pt"


def _fp32_model():
    ck = load_checkpoint(DEMO)
    model = create_model(dataclasses.replace(ck.config, forward_dtype="float32"), compute_dtype="float32")
    model.load_state_dict(ck.model.state_dict())
    return model.eval()


def _puzzles(n):
    s = load_puzzle_set(calib_data_dir("sudoku6"), split="val")
    return torch.from_numpy(np.asarray(s.inputs[:n], np.int64)), torch.from_numpy(np.asarray(s.labels[:n], np.int64))


def _step(model, tokens, labels, carry):
    """One segment of `model` from `carry` as the trainer hands it to a loss callback."""
    ids = torch.zeros(len(tokens), dtype=torch.long)
    z_H, _, logits, q_halt, q_cont = model.segment(*carry, tokens, ids)
    return SegmentStep(tokens, labels, *carry, z_H, logits, q_halt, q_cont, torch.zeros(()))


def _carry_after(model, tokens, segments):
    """The carry the fp32 model reaches after `segments` segments from the initial carry."""
    carry = model.initial_carry(len(tokens))
    ids = torch.zeros(len(tokens), dtype=torch.long)
    with torch.no_grad():
        for _ in range(segments):
            carry = model.segment(*carry, tokens, ids)[:2]
    return carry


def test_the_loss_is_zero_when_the_student_is_the_teacher_without_quantization():
    model = _fp32_model()
    tokens, labels = _puzzles(8)
    distiller = Distiller(model)
    with torch.no_grad():
        step = _step(model, tokens, labels, _carry_after(model, tokens, 2))
        terms = distiller.terms(step)
        loss = distiller(step)
    assert float(terms.tokens) < 1e-6 and float(terms.q) < 1e-9 and float(terms.carry) < 1e-9
    assert float(loss) < 1e-6


def test_distillation_moves_the_quantized_students_halting_margin_towards_the_teachers():
    teacher, student = _fp32_model(), _fp32_model()
    with torch.no_grad():
        student.inner.q_head.bias[0] += 1.0  # a student that halts more eagerly than the original
    tokens, labels = _puzzles(16)
    absmax = site_absmax(student, tokens.numpy())
    spec = qat_spec("tensorrt", absmax, smoothing(student, absmax, 0.85))
    distiller = Distiller(teacher, DistillWeights(tokens=0.0, carry=0.0))  # the halting term alone
    carry = _carry_after(teacher, tokens, 2)
    with torch.no_grad():
        s = _step(teacher, tokens, labels, carry)
        margin_t = s.q_halt - s.q_cont
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)

    def gap():
        with torch.no_grad():
            s = _step(student, tokens, labels, carry)
        return float((s.q_halt - s.q_cont - margin_t).mean())

    with fake_quant(student, spec):
        before = gap()
        for _ in range(5):
            loss = distiller(_step(student, tokens, labels, carry))
            opt.zero_grad()
            loss.backward()
            opt.step()
        after = gap()
    assert before == pytest.approx(1.0, abs=0.1)  # the bias, and a little quantization
    assert abs(after) < 0.5 * before, (before, after)

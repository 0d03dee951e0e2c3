"""scripts/int8_noise_floor.py: the relative noise is what it says, eps = 0 is exact, hooks go away."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hrm_edge.act import HaltingPolicy, solve_in_batches
from hrm_edge.model.runner import TorchSegmentRunner
from hrm_edge.quant.fakequant import linear_calls
from scripts.int8_noise_floor import (
    add_relative_noise,
    equivalent_eps,
    linears,
    perturbed,
    segment_outputs,
    site_errors,
)
from tests.model_helpers import q_model


def _segment(model: torch.nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.inference_mode():
        z_H, z_L = model.initial_carry(tokens.shape[0], tokens.device)
        return model.segment(z_H, z_L, tokens, torch.zeros(tokens.shape[0], dtype=torch.long))


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return q_model()


@pytest.fixture(scope="module")
def tokens(model: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(1, model.config.vocab_size, (6, model.config.seq_len), generator=g)


def test_noise_is_relative_per_row() -> None:
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(64, 512, generator=g) * torch.logspace(-3, 3, 64).unsqueeze(1)  # six decades of scale
    for eps in (1e-4, 1e-2):
        noisy = add_relative_noise(rows, eps, torch.Generator().manual_seed(1))
        per_row = (noisy - rows).norm(dim=-1) / rows.norm(dim=-1)
        assert per_row.mean().item() == pytest.approx(eps, rel=0.05)
        assert per_row.max().item() < 1.3 * eps and per_row.min().item() > 0.7 * eps  # no row escapes its scale
    assert torch.equal(add_relative_noise(rows, 0.0, torch.Generator().manual_seed(1)), rows)


def test_eps_zero_is_exact_and_hooks_are_removed(model: torch.nn.Module, tokens: torch.Tensor) -> None:
    clean = _segment(model, tokens)
    with perturbed(model, 0.0, 0):
        same = _segment(model, tokens)
    for a, b in zip(clean, same, strict=True):
        assert torch.equal(a, b)
    with perturbed(model, 1e-2, 0):
        noisy = _segment(model, tokens)
    assert not torch.equal(clean[2], noisy[2])  # logits moved
    after = _segment(model, tokens)
    for a, b in zip(clean, after, strict=True):
        assert torch.equal(a, b)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for _, m in linears(model))


def test_same_seed_same_rollout(model: torch.nn.Module, tokens: torch.Tensor) -> None:
    ids = np.zeros(len(tokens), np.int64)

    def run(seed: int) -> np.ndarray:
        with perturbed(model, 3e-2, seed):
            res = solve_in_batches(TorchSegmentRunner(model), tokens.numpy(), ids, HaltingPolicy("q"), 4, 4,
                                   record_steps=True)
        return res.step_q_halt

    a, b, c = run(0), run(0), run(1)
    assert np.array_equal(a, b, equal_nan=True)
    assert not np.array_equal(a, c, equal_nan=True)


def test_q_head_only_leaves_logits_alone(model: torch.nn.Module, tokens: torch.Tensor) -> None:
    clean = _segment(model, tokens)
    with perturbed(model, 1e-1, 0, only="inner.q_head"):
        z_H, _, logits, q_halt, _ = _segment(model, tokens)
    assert torch.equal(z_H, clean[0]) and torch.equal(logits, clean[2])
    assert not torch.equal(q_halt, clean[3])


def test_input_noise_changes_outputs(model: torch.nn.Module, tokens: torch.Tensor) -> None:
    clean = _segment(model, tokens)
    with perturbed(model, 1e-2, 0, where="input"):
        noisy = _segment(model, tokens)
    assert not torch.equal(clean[2], noisy[2])
    with pytest.raises(ValueError), perturbed(model, 1e-2, 0, where="weights"):
        pass


def test_open_loop_site_errors_track_eps(model: torch.nn.Module, tokens: torch.Tensor) -> None:
    ids = torch.zeros(len(tokens), dtype=torch.long)
    with torch.inference_mode():
        x = model.embed(tokens, ids)
        carry = model.initial_carry(len(tokens), tokens.device)
    n_calls = len(segment_outputs(model, x, *carry))
    assert n_calls == sum(linear_calls(model).values()) > len(linears(model))  # H/L cycles: calls > modules
    errs = site_errors(model, x, [carry], lambda: perturbed(model, 1e-3, 0))
    assert errs.shape == (n_calls,)
    assert np.median(errs) >= 0.9e-3  # each call adds eps, upstream noise only adds to it
    assert np.median(errs) < 1e-1
    assert not site_errors(model, x, [carry], lambda: perturbed(model, 0.0, 0)).any()


def test_equivalent_eps_interpolates_log_log() -> None:
    curve = [(1e-4, 2e-4), (1e-3, 2e-3), (1e-2, 2e-2)]
    assert equivalent_eps(curve, 2e-3) == pytest.approx(1e-3)
    assert equivalent_eps(curve, 2 * 10 ** -2.5) == pytest.approx(10 ** -2.5)
    assert equivalent_eps(curve, 1.0) is None

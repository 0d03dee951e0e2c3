"""The training loop: it learns, is deterministic, resumes exactly, and writes loadable checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hrm_edge.checkpoint import load_checkpoint
from hrm_edge.model.config import preset_config
from hrm_edge.puzzles import SudokuCodec, count_solutions
from hrm_edge.train import TrainConfig, Trainer, log_stablemax, token_loss
from hrm_edge.train_data import SudokuSampler, generated_pool


@pytest.fixture(scope="module")
def pool6():
    return generated_pool(40, (2, 3), seed=5)


def make_trainer(tmp_path, pool, seed=0, **kw) -> Trainer:
    mcfg = preset_config("sudoku-tiny", seq_len=36, vocab_size=8, forward_dtype="float32", halt_max_steps=3)
    cfg = TrainConfig(task="sudoku6", batch_size=8, seed=seed, warmup_steps=2, eval_every=10**9,
                      checkpoint_every=10**9, start_givens=30, **kw)
    return Trainer(mcfg, cfg, SudokuSampler(pool, np.random.default_rng(seed)), tmp_path)


def test_stablemax_matches_its_definition():
    x = torch.tensor([[-2.0, 0.0, 3.0]], dtype=torch.float64)
    s = torch.tensor([1 / 3, 1.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(log_stablemax(x)[0], torch.log(s / s.sum()))


def test_token_loss_ignores_pad_labels():
    logits = torch.randn(1, 3, 5)
    labels = torch.tensor([[2, 0, 4]])
    loss = token_loss(logits, labels, "softmax")
    assert loss[0, 1] == 0 and loss[0, 0] > 0


def test_sampler_gives_unique_puzzles_with_requested_givens(pool6):
    sampler = SudokuSampler(pool6, np.random.default_rng(0))
    inputs, labels, givens = sampler.sample(6, 20, 24)
    codec = SudokuCodec(2, 3)
    for inp, lab, g in zip(inputs, labels, givens, strict=True):
        assert 20 <= g <= 24 or g == (inp > 1).sum()
        assert codec.check(inp, lab)
        assert count_solutions((inp - 1).reshape(6, 6), (2, 3)) == 1


def test_training_reduces_the_loss(tmp_path, pool6):
    trainer = make_trainer(tmp_path, pool6, lr=3e-3)
    first = np.mean([trainer.train_step()["lm"] for _ in range(3)])
    for _ in range(40):
        trainer.train_step()
    last = np.mean([trainer.train_step()["lm"] for _ in range(3)])
    assert last < 0.8 * first


def test_same_seed_gives_identical_weights(tmp_path, pool6):
    a, b = make_trainer(tmp_path / "a", pool6), make_trainer(tmp_path / "b", pool6)
    for _ in range(4):
        a.train_step()
        b.train_step()
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_resume_continues_exactly(tmp_path, pool6):
    straight = make_trainer(tmp_path / "s", pool6)
    for _ in range(6):
        straight.train_step()
    first = make_trainer(tmp_path / "r", pool6)
    for _ in range(3):
        first.train_step()
    first.save(first.card())
    resumed = make_trainer(tmp_path / "r", pool6, seed=99)  # every bit of state must come from the file
    resumed.load_state_dict(torch.load(tmp_path / "r" / "train_state.pt", weights_only=True))
    for _ in range(3):
        resumed.train_step()
    assert resumed.step == 6
    for (name, pa), pb in zip(resumed.model.state_dict().items(), straight.model.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_saved_official_layout_loads_back_strictly(tmp_path, pool6):
    trainer = make_trainer(tmp_path, pool6)
    for _ in range(2):
        trainer.train_step()
    trainer.save(trainer.card())
    official = load_checkpoint(tmp_path / "official")
    single = load_checkpoint(tmp_path / "model.pt")
    assert official.provenance["format"] == "official" and official.provenance["step"] == 2
    assert official.task == "sudoku6" and single.task == "sudoku6"
    tokens = torch.randint(1, 8, (2, 36))
    ids = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        a = official.model.segment(*official.model.initial_carry(2), tokens, ids)[2]
        b = single.model.segment(*single.model.initial_carry(2), tokens, ids)[2]
    # H_init/L_init are bf16 in the official layout, as the official trainer stores them
    assert (a - b).abs().max().item() < 0.05
    assert single.card["step"] == 2

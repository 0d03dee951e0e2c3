"""The training loop: it learns, is deterministic, resumes exactly, and writes loadable checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hrm_edge.model.checkpoint import load_checkpoint
from hrm_edge.model.config import preset_config
from hrm_edge.puzzles import SudokuCodec, count_solutions
from hrm_edge.train.data import SudokuSampler, generated_pool
from hrm_edge.train.trainer import TrainConfig, Trainer, log_stablemax, token_loss


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


def test_cli_trains_a_trm_with_config_overrides(tmp_path, capsys):
    from tests.cli_helpers import run_cli

    code, _, err = run_cli(capsys, "train", "--family", "trm", "--preset", "trm-sudoku-tiny", "--set", "seq_len=36",
                             "--set", "vocab_size=8", "--set", "halt_max_steps=2", "--run-dir", str(tmp_path),
                             "--max-steps", "2", "--pool-size", "8", "--batch-size", "4", "--eval-every", "1000",
                             "--threads", "1", "--no-progress")
    assert code == 0, err
    ck = load_checkpoint(tmp_path / "model.pt")
    assert ck.config.family == "trm" and ck.config.seq_len == 36 and ck.config.halt_max_steps == 2
    assert ck.card["step"] == 2


@pytest.mark.parametrize("no_act_continue", [True, False])
def test_a_trm_learns_q_continue_only_with_hrm_halting(tmp_path, pool6, no_act_continue):
    mcfg = preset_config("trm-sudoku-tiny", seq_len=36, vocab_size=8, forward_dtype="float32", halt_max_steps=3,
                         no_ACT_continue=no_act_continue)
    cfg = TrainConfig(task="sudoku6", batch_size=8, warmup_steps=2, eval_every=10**9, checkpoint_every=10**9,
                      start_givens=30)
    trainer = Trainer(mcfg, cfg, SudokuSampler(pool6, np.random.default_rng(0)), tmp_path)
    for _ in range(3):
        trainer.train_step()
    q_continue_row = trainer.model.inner.q_head.weight[1]
    assert bool((q_continue_row != 0).any()) is (not no_act_continue)  # the official init is all zeros
    named = [d for d in trainer.card()["recipe_departures"] if d.startswith("HRM's halting for a TRM")]
    assert len(named) == (0 if no_act_continue else 1)


def test_cli_refuses_a_preset_of_the_other_family(tmp_path, capsys):
    from tests.cli_helpers import one_line_error

    line = one_line_error(capsys, "train", "--family", "trm", "--preset", "sudoku6-demo", "--run-dir", str(tmp_path))
    assert "HRM config" in line and "--family trm" in line


def test_lr_warms_up_stays_constant_then_cools_down_to_its_floor():
    from hrm_edge.train.trainer import lr_scale

    cfg = TrainConfig(warmup_steps=10, max_steps=1000, cooldown_steps=200, cooldown_min=0.05)
    assert lr_scale(0, cfg) == pytest.approx(0.1)
    assert lr_scale(500, cfg) == 1.0
    assert lr_scale(900, cfg) == pytest.approx(0.5)
    assert lr_scale(999, cfg) == pytest.approx(0.05)
    assert lr_scale(500, TrainConfig(warmup_steps=10, max_steps=1000)) == 1.0  # the official constant LR


def test_maze_sampler_draws_solvable_mazes_in_the_bands_and_never_a_shipped_one():
    from hrm_edge.puzzles.datasets import load_puzzle_set
    from hrm_edge.puzzles.maze import MazeCodec
    from hrm_edge.puzzles.maze_gen import maze_symmetry_key, shortest_route_count
    from hrm_edge.train.data import MazeSampler

    val = load_puzzle_set("calib_data/maze15", split="val")
    exclude = {maze_symmetry_key(m) for m in val.inputs}
    sampler = MazeSampler(15, np.random.default_rng(0), [(10, 19), (45, 225)], exclude)
    inputs, labels, lengths = sampler.sample(12)
    codec = MazeCodec(15)
    assert inputs.shape == labels.shape == (12, 225)
    for maze, label, length in zip(inputs, labels, lengths, strict=True):
        assert codec.is_shortest(maze, label) and shortest_route_count(maze.reshape(15, 15)) == 1
        assert 10 <= length <= 19 or 45 <= length <= 225
        assert maze_symmetry_key(maze) not in exclude
    again = MazeSampler(15, np.random.default_rng(0), [(10, 19), (45, 225)], exclude).sample(12)
    np.testing.assert_array_equal(again[0], inputs)  # deterministic under a seed


def test_cli_trains_a_maze_model(tmp_path, capsys):
    from tests.cli_helpers import run_cli

    code, _, err = run_cli(capsys, "train", "--preset", "maze15-demo", "--set", "hidden_size=32", "--set",
                           "num_heads=2", "--set", "puzzle_emb_ndim=32", "--set", "halt_max_steps=2",
                           "--run-dir", str(tmp_path), "--max-steps", "2", "--batch-size", "4",
                           "--eval-every", "1000", "--threads", "1", "--no-progress")
    assert code == 0, err
    ck = load_checkpoint(tmp_path / "official")
    assert ck.task == "maze:15" and ck.config.seq_len == 225
    card = load_checkpoint(tmp_path / "model.pt").card
    assert "path-length bands [[10, 19]" in card["train_config"]["extra"]["mazes"]
    assert card["recipe_departures"][0].startswith("mazes generated on the fly")
    assert "curriculum_min_givens" not in card  # mazes have no givens curriculum


def test_sigterm_saves_the_state_and_says_how_to_resume(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "hrm_edge.cli", "train", "--preset", "sudoku-tiny", "--set", "seq_len=36", "--set",
           "vocab_size=8", "--run-dir", str(tmp_path), "--pool-size", "8", "--batch-size", "4", "--minutes", "2",
           "--threads", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while not (tmp_path / "log.jsonl").exists() and time.monotonic() < deadline:  # fit() has started
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "run the same command to resume" in err and "Traceback" not in err
    state = torch.load(tmp_path / "train_state.pt", weights_only=True)
    assert state["step"] > 0

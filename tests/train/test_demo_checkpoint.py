"""The shipped demo checkpoints (HRM and TRM): each card's accuracy is what `hrm-edge eval` measures today."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hrm_edge.act import HaltingPolicy, SolveResult, parse_policy, run_act, solve_in_batches
from hrm_edge.model.checkpoint import load_checkpoint
from hrm_edge.model.runner import TorchSegmentRunner
from hrm_edge.puzzles.datasets import calib_data_dir, load_puzzle_set
from hrm_edge.train.evaluate import difficulty_buckets

REPO = Path(__file__).resolve().parents[2]
# name -> (family, task)
DEMOS = {"sudoku6-demo": ("hrm", "sudoku6"), "trm-sudoku6-demo": ("trm", "sudoku6"),
         "trm-sudoku6-att-demo": ("trm", "sudoku6"), "trm-sudoku-demo": ("trm", "sudoku"),
         "trm-maze11-demo": ("trm", "maze:11")}


@pytest.fixture(scope="module", params=list(DEMOS))
def demo(request):
    path = REPO / "checkpoints" / request.param
    ck = load_checkpoint(path / "model.pt")
    return path, ck, load_puzzle_set(calib_data_dir(ck.task), split="val")


def test_demo_checkpoint_is_small_and_carded(demo):
    path, ck, _ = demo
    assert (path / "model.pt").stat().st_size < 20e6
    assert (ck.config.family, ck.task) == DEMOS[path.name]
    assert ck.card["parameters"] == ck.model.parameter_count()
    assert {"training_command", "seed", "wall_minutes", "hardware", "accuracy"} <= set(ck.card)
    assert (path / "CARD.md").is_file() and (path / "eval.png").is_file()


# The 9x9 demo's full validation run (512 puzzles; the 256 real hard ones run ~7.6 of 8 segments)
# takes minutes on CI's 2 cores, so its card is checked per bucket on the generated puzzles instead.
BUCKET_CHECK = {"trm-sudoku-demo": 30}  # name -> smallest givens checked


@pytest.fixture(scope="module")
def fixed_run(demo):
    """The demo's validation set run for all `halt_max_steps` segments, every step recorded."""
    path, ck, pset = demo
    if path.name in BUCKET_CHECK:
        pytest.skip("checked per bucket by test_the_9x9_card_holds_on_its_generated_puzzles")
    return solve_in_batches(TorchSegmentRunner(ck.model), pset.inputs, pset.puzzle_ids, parse_policy("fixed"),
                            ck.config.halt_max_steps, batch_size=256, record_steps=True)


def halted_at(fixed: SolveResult, policy: HaltingPolicy) -> tuple[np.ndarray, np.ndarray]:
    """(predictions [N, S], steps [N]) of `policy`, read off a recorded fixed-policy trajectory: a puzzle's
    segments do not depend on when the others halt, so it halts at the first step its policy says so."""
    max_steps = fixed.step_q_halt.shape[0]
    halts = np.stack([policy.halts(fixed.step_q_halt[t], fixed.step_q_continue[t]) for t in range(max_steps)])
    halts[-1] = True
    first = halts.argmax(0)
    return fixed.step_predictions[first, np.arange(first.size)], (first + 1).astype(np.int32)


def test_a_policy_run_halts_where_the_fixed_trajectory_says():
    """The premise of `halted_at`, on the HRM demo: running `q` gives exactly the steps and predictions
    read off the fixed run (same batches, same runner)."""
    ck = load_checkpoint(REPO / "checkpoints" / "sudoku6-demo" / "model.pt")
    pset = load_puzzle_set(calib_data_dir(ck.task), split="val")
    policy, steps = parse_policy("q"), ck.config.halt_max_steps
    fixed = run_act(TorchSegmentRunner(ck.model), pset.inputs[:64], pset.puzzle_ids[:64], parse_policy("fixed"),
                    steps, record_steps=True)
    real = run_act(TorchSegmentRunner(ck.model), pset.inputs[:64], pset.puzzle_ids[:64], policy, steps)
    predictions, halt_steps = halted_at(fixed, policy)
    assert len(set(real.steps.tolist())) >= 3  # the puzzles really halt at different steps
    np.testing.assert_array_equal(halt_steps, real.steps)
    np.testing.assert_array_equal(predictions, real.predictions)


@pytest.mark.parametrize("policy", ["fixed", "q"])
def test_eval_reproduces_the_card(demo, fixed_run, policy):
    path, ck, pset = demo
    card = json.loads((path / "eval.json").read_text())["policies"][policy]
    predictions, steps = halted_at(fixed_run, parse_policy(policy))
    solved = (predictions == pset.labels).all(-1)
    assert float(solved.mean()) == pytest.approx(card["exact"], abs=1 / len(pset))
    assert float(steps.mean()) == pytest.approx(card["mean_segments"], abs=0.02)
    assert np.isclose(card["exact"], ck.card["accuracy"][policy]["exact"])
    assert_buckets_match(card["buckets"], difficulty_buckets(pset), solved, steps)  # per-difficulty table too


def assert_buckets_match(card_buckets: dict, masks: dict[str, np.ndarray], solved: np.ndarray,
                         steps: np.ndarray) -> None:
    """Each bucket's count, exact accuracy and mean segments are the card's."""
    for name, mask in masks.items():
        entry = card_buckets[name]
        assert entry["count"] == mask.sum()
        assert solved[mask].mean() == pytest.approx(entry["exact"], abs=1 / mask.sum())
        assert steps[mask].mean() == pytest.approx(entry["mean_segments"], abs=0.05)


def test_the_9x9_card_holds_on_its_generated_puzzles():
    path = REPO / "checkpoints" / "trm-sudoku-demo"
    ck = load_checkpoint(path / "model.pt")
    pset = load_puzzle_set(REPO / "calib_data" / "sudoku", split="val")
    givens = np.array([m["givens"] for m in pset.meta])
    sel = givens >= BUCKET_CHECK[path.name]
    res = solve_in_batches(TorchSegmentRunner(ck.model), pset.inputs[sel], pset.puzzle_ids[sel], parse_policy("q"),
                           ck.config.halt_max_steps, batch_size=256)
    solved = (res.predictions == pset.labels[sel]).all(-1)
    card = json.loads((path / "eval.json").read_text())["policies"]["q"]["buckets"]
    # the givens buckets that lie wholly inside the selection, as masks over it
    masks = {name: mask[sel] for name, mask in difficulty_buckets(pset).items()
             if name.startswith("givens ") and mask.any() and not (mask & ~sel).any()}
    assert_buckets_match(card, masks, solved, res.steps)
    assert sum(int(m.sum()) for m in masks.values()) == sel.sum() >= 256


def test_the_maze_demo_solves_nine_in_ten_and_thinks_longer_on_longer_paths():
    """#3's targets, on numbers from the card (which test_eval_reproduces_the_card re-measures)."""
    policies = json.loads((REPO / "checkpoints" / "trm-maze11-demo" / "eval.json").read_text())["policies"]
    fixed, q = policies["fixed"], policies["q"]
    assert fixed["exact"] >= 0.90 and q["exact"] >= 0.90
    assert q["exact"] >= fixed["exact"] - 0.01  # halting early costs at most 1 point
    bands = ("path 6-11", "path 12-17", "path 18-25", "path 26-121")
    segments = [q["buckets"][b]["mean_segments"] for b in bands]
    assert segments == sorted(segments)  # a longer path never stops sooner on average
    assert segments[-1] >= 1.5 * segments[0]  # the longest paths clearly take more segments than the shortest
    assert q["mean_segments"] < 0.5 * fixed["mean_segments"]  # and halting saves over half the compute

"""The shipped demo checkpoints (HRM and TRM): each card's accuracy is what `hrm-edge eval` measures today."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hrm_edge.act import parse_policy, solve_in_batches
from hrm_edge.checkpoint import load_checkpoint
from hrm_edge.puzzles.datasets import load_puzzle_set
from hrm_edge.runtimes.torch_runtime import TorchSegmentRunner

REPO = Path(__file__).resolve().parents[1]
# name -> (family, task)
DEMOS = {"sudoku6-demo": ("hrm", "sudoku6"), "trm-sudoku6-demo": ("trm", "sudoku6"),
         "trm-sudoku6-att-demo": ("trm", "sudoku6"), "trm-sudoku-demo": ("trm", "sudoku")}


@pytest.fixture(scope="module", params=list(DEMOS))
def demo(request):
    path = REPO / "checkpoints" / request.param
    ck = load_checkpoint(path / "model.pt")
    return path, ck, load_puzzle_set(REPO / "calib_data" / ck.task, split="val")


def test_demo_checkpoint_is_small_and_carded(demo):
    path, ck, _ = demo
    assert (path / "model.pt").stat().st_size < 20e6
    assert (ck.config.family, ck.task) == DEMOS[path.name]
    assert ck.card["parameters"] == ck.model.parameter_count()
    assert {"training_command", "seed", "wall_minutes", "hardware", "accuracy"} <= set(ck.card)
    assert (path / "CARD.md").is_file() and (path / "eval.png").is_file()


@pytest.mark.parametrize("policy", ["fixed", "q"])
def test_eval_reproduces_the_card(demo, policy):
    path, ck, pset = demo
    card = json.loads((path / "eval.json").read_text())["policies"][policy]
    res = solve_in_batches(TorchSegmentRunner(ck.model), pset.inputs, pset.puzzle_ids, parse_policy(policy),
                           ck.config.halt_max_steps, batch_size=256)
    exact = float((res.predictions == pset.labels).all(-1).mean())
    assert exact == pytest.approx(card["exact"], abs=1 / len(pset))
    assert float(res.steps.mean()) == pytest.approx(card["mean_segments"], abs=0.02)
    assert np.isclose(card["exact"], ck.card["accuracy"][policy]["exact"])

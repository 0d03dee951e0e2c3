"""`hrm-edge eval`: accuracy per policy and per difficulty bucket, written as eval.json and eval.png."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hrm_edge.puzzles.datasets import load_puzzle_set
from hrm_edge.train.evaluate import difficulty_buckets
from tests.cli_helpers import one_line_error, run_cli

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "checkpoints" / "trm-sudoku6-demo"


def test_maze_buckets_are_the_generator_path_length_bands():
    buckets = difficulty_buckets(load_puzzle_set(REPO / "calib_data" / "maze11", split="val"))
    assert {name: int(mask.sum()) for name, mask in buckets.items()} == {
        "path 6-11": 64, "path 12-17": 64, "path 18-25": 64, "path 26-121": 64}


def test_sudoku_buckets_are_givens_bands_and_rater_levels():
    buckets = difficulty_buckets(load_puzzle_set(REPO / "calib_data" / "sudoku6", split="val"))
    assert [n for n in buckets if n.startswith("givens")] == ["givens 10-14", "givens 15-19", "givens 20-24"]
    assert sum(int(buckets[n].sum()) for n in buckets if n.startswith("givens")) == 256


def test_eval_writes_the_cards_numbers_as_json_and_a_plot(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "eval", str(DEMO / "model.pt"), "--data", str(REPO / "calib_data" / "sudoku6"),
                           "--policy", "q", "--scan-steps", "2", "--out", str(tmp_path))
    assert code == 0 and "givens 10-14" in out
    report = json.loads((tmp_path / "eval.json").read_text())
    card = json.loads((DEMO / "eval.json").read_text())
    got, want = report["policies"]["q"], card["policies"]["q"]
    assert got["exact"] == pytest.approx(want["exact"], abs=1 / 256)
    assert got["mean_segments"] == pytest.approx(want["mean_segments"], abs=0.02)
    assert report["scaling"]["max_steps"] == [1, 2]
    assert (tmp_path / "eval.png").stat().st_size > 10_000


def test_eval_on_a_set_of_another_shape_is_one_line_error(capsys, tmp_path):
    line = one_line_error(capsys, "eval", str(DEMO / "model.pt"), "--data", str(REPO / "calib_data" / "maze11"),
                          "--out", str(tmp_path))
    assert line.endswith("puzzles have 121 tokens, the checkpoint expects 36")

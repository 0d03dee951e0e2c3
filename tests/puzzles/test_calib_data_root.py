"""Where the shipped calibration sets are found: $HRM_EDGE_CALIB_DATA, else the nearest calib_data/ of the
current directory or its parents, else nowhere (an error naming --data), never the package's own path."""

from __future__ import annotations

from pathlib import Path

from hrm_edge.puzzles.datasets import (
    CALIB_DATA_ENV,
    calib_data_dir,
    calib_data_root,
    load_puzzle_set,
    missing_set_message,
)
from tests.cli_helpers import one_line_error

REPO = Path(__file__).resolve().parents[2]


def test_the_checkout_sets_are_found_from_a_folder_inside_it(monkeypatch):
    monkeypatch.delenv(CALIB_DATA_ENV, raising=False)
    monkeypatch.chdir(REPO / "checkpoints" / "sudoku6-demo")
    assert calib_data_dir("maze:15") == REPO / "calib_data" / "maze15"
    assert len(load_puzzle_set(calib_data_dir("sudoku6"), split="val")) == 256


def test_the_environment_variable_comes_before_the_current_directory(monkeypatch, tmp_path):
    monkeypatch.setenv(CALIB_DATA_ENV, str(tmp_path / "sets"))
    monkeypatch.chdir(REPO)
    assert calib_data_dir("sudoku") == tmp_path / "sets" / "sudoku"


def test_outside_a_checkout_there_is_no_root_and_the_error_names_data(monkeypatch, tmp_path):
    monkeypatch.delenv(CALIB_DATA_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert calib_data_root() is None
    assert missing_set_message("sudoku6") == (
        "no puzzle set for task 'sudoku6' at calib_data/sudoku6: pass --data, set HRM_EDGE_CALIB_DATA to a folder "
        "laid out like hrm-edge's calib_data/, or run inside an hrm-edge checkout")


def test_export_outside_a_checkout_without_data_is_one_error_line(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv(CALIB_DATA_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, "export", str(REPO / "checkpoints" / "sudoku6-demo" / "model.pt"), "-o", "bundle")
    assert line == f"error: {missing_set_message('sudoku6')}"

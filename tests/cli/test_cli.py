"""`hrm-edge` commands end to end on a seeded tiny model; every error is one line and a non-zero exit."""

from __future__ import annotations

import json

import pytest

from hrm_edge.model.checkpoint import load_checkpoint, write_official_layout
from tests.cli_helpers import one_line_error, run_cli

# magictour_top1465.txt, first puzzle
HARD = "4...3.......6..8..........1....5..9..8....6...7.2........1.27..5.3....4.9........"


def test_solve_prints_a_grid_validity_and_segments(capsys, tiny_ckpt):
    code, out, _ = run_cli(capsys, "solve", str(tiny_ckpt), "--puzzle", HARD, "--policy", "fixed")
    assert code == 0
    assert "# puzzle 1:" in out and "4 segment(s)" in out
    assert "0/1 valid" in out  # an untrained model solves nothing, and says so


def test_solve_json_reports_each_puzzle_and_a_summary(capsys, tiny_ckpt, tmp_path):
    file = tmp_path / "p.txt"
    file.write_text("# two puzzles\n" + HARD + "\n" + HARD.replace("4", ".", 1) + "\n")
    code, out, _ = run_cli(capsys, "solve", str(tiny_ckpt), "--file", str(file), "--json", "--max-steps", "2")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["index"] for r in rows[:2]] == [1, 2]
    assert all(r["segments"] <= 2 and len(r["solution"]) == 81 for r in rows[:2])
    assert rows[2]["summary"]["puzzles"] == 2 and rows[2]["summary"]["max_steps"] == 2


def test_malformed_puzzle_is_one_line_error(capsys, tiny_ckpt):
    assert "expected 81 cells, got 80" in one_line_error(capsys, "solve", str(tiny_ckpt), "--puzzle", HARD[:-1])


def test_contradicting_givens_are_one_line_error(capsys, tiny_ckpt):
    assert "appears twice in row 1" in one_line_error(capsys, "solve", str(tiny_ckpt), "--puzzle", "44" + "." * 79)


def test_bad_policy_is_one_line_error(capsys, tiny_ckpt):
    line = one_line_error(capsys, "solve", str(tiny_ckpt), "--puzzle", HARD, "--policy", "threshold:2")
    assert "strictly between 0 and 1" in line


def test_missing_checkpoint_is_one_line_error(capsys, tmp_path):
    assert "does not exist" in one_line_error(capsys, "info", str(tmp_path / "nope.pt"))


def test_corrupt_checkpoint_is_one_line_error(capsys, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    assert "not a readable torch checkpoint" in one_line_error(capsys, "info", str(bad))


def test_unknown_option_is_one_line_error(capsys, tiny_ckpt):
    assert "No such option" in one_line_error(capsys, "solve", str(tiny_ckpt), "--speed", "11")


def test_info_reports_the_published_27m_parameter_count(capsys, tmp_path):
    path = tmp_path / "m27.pt"
    assert run_cli(capsys, "init", "sudoku-27m", "-o", str(path))[0] == 0
    code, out, _ = run_cli(capsys, "info", str(path), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["parameters"] == 27_275_266
    assert data["segment_gflop_batch1"] == pytest.approx(13.7, abs=0.1)


def test_convert_turns_an_official_directory_into_one_file(capsys, tiny_ckpt, tmp_path):
    model = load_checkpoint(tiny_ckpt).model
    write_official_layout(tmp_path / "run", model, step=10)
    out_file = tmp_path / "converted.pt"
    code, out, _ = run_cli(capsys, "convert", str(tmp_path / "run"), "-o", str(out_file))
    assert code == 0 and "task sudoku" in out
    ck = load_checkpoint(out_file)
    assert ck.provenance["converted_from"]["step"] == 10


def test_help_lists_every_command(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for command in ("solve", "info", "convert", "init", "train"):
        assert command in out

"""`hrm-edge solve` streams: results print a batch at a time while input is still coming, a bad line
late in a large file stops solving after the results before it, naming its line, and the reader
cuts puzzle files exactly where the codec would."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from hrm_edge.puzzles.codecs import get_codec
from hrm_edge.puzzles.stream import iter_puzzle_texts
from tests.cli_helpers import run_cli

REPO = Path(__file__).resolve().parents[2]
SUDOKU = [line.split()[0] for line in (REPO / "calib_data" / "sudoku" / "val.txt").read_text().splitlines()
          if line and not line.startswith("#")]


def test_a_bad_line_late_in_a_large_file_comes_after_the_results_before_it(capsys, tiny_ckpt, tmp_path):
    lines = [SUDOKU[i % len(SUDOKU)] for i in range(3000)]
    lines[2500] = "x" + lines[2500][1:]  # line 2501
    file = tmp_path / "puzzles.txt"
    file.write_text("\n".join(lines) + "\n")
    code, out, err = run_cli(capsys, "solve", str(tiny_ckpt), "--file", str(file), "--json", "--max-steps", "1",
                             "--batch-size", "100")
    assert code == 1
    assert err.splitlines() == [f"error: {file} line 2501: sudoku puzzle 2501: bad character 'x' in cell 1 "
                                "(row 1, column 1); allowed: digits 1-9, '.' or '0' for blank"]
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["index"] for r in rows] == list(range(1, 2501))
    assert rows[2499]["puzzle"] == lines[2499]


def test_results_print_while_the_input_is_still_open(tiny_ckpt):
    proc = subprocess.Popen([sys.executable, "-m", "hrm_edge.cli", "solve", str(tiny_ckpt), "--file", "-",
                             "--json", "--max-steps", "1", "--batch-size", "8"], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdin.write("\n".join(SUDOKU[:9]) + "\n")  # one batch, and the first puzzle of the next
    proc.stdin.flush()
    first = json.loads(proc.stdout.readline())  # arrives before stdin is closed
    assert first["index"] == 1 and first["puzzle"] == SUDOKU[0]
    proc.stdin.close()
    rest = proc.stdout.read().splitlines()
    assert proc.wait(timeout=300) == 0
    assert [json.loads(line)["index"] for line in rest[:-1]] == list(range(2, 10))
    assert json.loads(rest[-1])["summary"]["puzzles"] == 9


def test_json_output_is_one_object_per_line_then_the_summary(capsys, tiny_ckpt, tmp_path):
    file = tmp_path / "p.txt"
    file.write_text("# a comment\n" + "\n".join(SUDOKU[:70]) + "\n")
    code, out, _ = run_cli(capsys, "solve", str(tiny_ckpt), "--file", str(file), "--json", "--max-steps", "2",
                           "--batch-size", "32")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 71 and rows[-1]["summary"]["puzzles"] == 70
    assert all(1 <= r["segments"] <= 2 for r in rows[:-1])


def test_progress_draws_puzzle_and_segment_bars_on_stderr(capsys, tiny_ckpt):
    code, _, err = run_cli(capsys, "solve", str(tiny_ckpt), "--puzzle", SUDOKU[0], "--policy", "fixed",
                           "--max-steps", "65", "--progress")
    assert code == 0
    assert "segments:" in err and err.rstrip().split("\r")[-1].startswith("solved: 1 puzzles")


def test_the_reader_cuts_where_the_codec_splits_the_whole_text():
    grid = "12.4.6\n......\n------+------\n123456\n\n# note\n......\n......\n......\n"
    texts = {
        "sudoku6": grid + "\n" + grid + grid.replace("\n\n", "\n") + "1" * 36 + " solution\n" + "1" * 35 + "\n",
        "arc": "012\n345\n\n67\n\n\n# c\n1\n2\n",
        "maze:11": (REPO / "calib_data" / "maze11" / "val.txt").read_text(),
    }
    for task, text in texts.items():
        codec = get_codec(task)
        assert [t for _, t in iter_puzzle_texts(codec, text.split("\n"))] == codec.split(text), task


def test_the_reader_names_the_line_each_puzzle_starts_on():
    codec = get_codec("sudoku6")
    grid = "12.4.6\n......\n......\n......\n......\n......"
    text = f"# header\n{'1' * 36}\n\n{grid}\n{grid}\n{'2' * 36}\n"
    assert [n for n, _ in iter_puzzle_texts(codec, text.split("\n"))] == [2, 4, 10, 16]


def test_the_reader_hands_out_puzzles_before_the_input_ends():
    def lines() -> Iterator[str]:
        yield from SUDOKU[:3]
        raise AssertionError("read past the third line")

    pieces = iter_puzzle_texts(get_codec("sudoku"), lines())
    assert [next(pieces), next(pieces)] == [(1, SUDOKU[0]), (2, SUDOKU[1])]  # the third line decides the second

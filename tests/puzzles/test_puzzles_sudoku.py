"""Sudoku codec, exact solver, rater, generator and augmentation (real magictour data)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from hrm_edge.puzzles import (
    PuzzleError,
    SudokuCodec,
    augment_sudoku,
    count_solutions,
    generate_sudoku,
    get_codec,
    grid_to_tokens,
    rate_difficulty,
    solve_sudoku,
    sudoku_symmetry_key,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MAGICTOUR = DATA / "sudoku" / "magictour_top1465.txt"
FIRST = "4...3.......6..8..........1....5..9..8....6...7.2........1.27..5.3....4.9........"
SOLVED = "123456789456789123789123456214365897365897214897214365531642978642978531978531642"


@pytest.fixture(scope="module")
def codec() -> SudokuCodec:
    return SudokuCodec()


@pytest.fixture(scope="module")
def magictour(codec: SudokuCodec) -> list[str]:
    if not MAGICTOUR.is_file():
        pytest.skip(f"shared data not found at {MAGICTOUR}")
    return codec.split(MAGICTOUR.read_text())


@pytest.fixture(scope="module")
def magictour_solutions(magictour: list[str], codec: SudokuCodec) -> tuple[list[list[np.ndarray]], float]:
    start = time.perf_counter()
    sols = [solve_sudoku(codec.parse(p), max_solutions=2) for p in magictour]
    return sols, time.perf_counter() - start


def test_official_token_ids(codec: SudokuCodec) -> None:
    tokens = codec.encode("1" + "." * 79 + "9")
    assert (codec.seq_len, codec.vocab_size, codec.pad_id) == (81, 11, 0)
    assert tokens.dtype == np.int64 and tokens.shape == (81,)
    assert tokens[0] == 2 and tokens[1] == 1 and tokens[80] == 10
    assert np.array_equal(codec.encode(SOLVED)[:9], np.arange(2, 11))
    assert np.array_equal(codec.encode("0" * 81), codec.encode("." * 81))


def test_magictour_file_has_1465_puzzles(magictour: list[str]) -> None:
    assert len(magictour) == 1465
    assert magictour[0] == FIRST


def test_round_trip_every_magictour_puzzle(magictour: list[str], codec: SudokuCodec) -> None:
    for text in magictour:
        tokens = codec.encode(text)
        assert codec.decode(tokens) == text
        assert np.array_equal(codec.encode(codec.decode(tokens)), tokens)


def test_formatted_grid_parses_back(codec: SudokuCodec) -> None:
    tokens = codec.encode(FIRST)
    grid = codec.format_grid(tokens)
    assert grid.splitlines()[0] == "4 . . | . 3 . | . . ."
    assert grid.splitlines()[3] == "------+-------+------"
    (piece,) = codec.split(grid)
    assert np.array_equal(codec.encode(piece), tokens)
    assert np.array_equal(codec.encode(grid), tokens)


def test_split_skips_comments_and_separators(codec: SudokuCodec) -> None:
    text = f"# a comment\n{FIRST}\n\n{codec.format_grid(codec.encode(SOLVED))}\n{FIRST} {SOLVED}\n"
    pieces = codec.split(text)
    assert len(pieces) == 3
    assert [codec.decode(codec.encode(p)) for p in pieces] == [FIRST, SOLVED, FIRST]


@pytest.mark.slow
def test_solver_solves_every_magictour_puzzle_uniquely(
    magictour: list[str], magictour_solutions: tuple[list[list[np.ndarray]], float], codec: SudokuCodec
) -> None:
    sols, seconds = magictour_solutions
    assert [len(s) for s in sols] == [1] * 1465
    for text, (solution,) in zip(magictour, sols, strict=True):
        assert codec.check(codec.encode(text), grid_to_tokens(solution))
    print(f"magictour: {seconds:.2f} s for 1465 puzzles, {1000 * seconds / 1465:.2f} ms each (uniqueness search)")
    assert seconds < 60


def test_count_solutions_limits(codec: SudokuCodec) -> None:
    assert count_solutions(np.zeros((9, 9), dtype=int)) == 2
    assert count_solutions(codec.parse(FIRST), limit=5) == 1
    contradiction = np.zeros((9, 9), dtype=int)
    contradiction[0, :8] = np.arange(1, 9)
    contradiction[1, 8] = 9  # row 1 needs 9 in its last cell, box 3 already has it
    assert count_solutions(contradiction) == 0


def test_rejects_wrong_length(codec: SudokuCodec) -> None:
    with pytest.raises(PuzzleError, match=r"^sudoku puzzle 3: expected 81 cells, got 80$"):
        codec.encode(FIRST[:80], index=3)


def test_rejects_bad_character(codec: SudokuCodec) -> None:
    with pytest.raises(PuzzleError, match=r"^sudoku puzzle: bad character 'x' in cell 2 \(row 1, column 2\)"):
        codec.encode("4x" + FIRST[2:])


def test_rejects_duplicate_in_row(codec: SudokuCodec) -> None:
    text = "." * 9 + "5...5...." + "." * 63
    with pytest.raises(PuzzleError, match=r"^sudoku puzzle 1: digit 5 appears twice in row 2$"):
        codec.encode(text, index=1)


def test_rejects_duplicate_in_column(codec: SudokuCodec) -> None:
    cells = ["."] * 81
    cells[2], cells[7 * 9 + 2] = "7", "7"
    with pytest.raises(PuzzleError, match=r"digit 7 appears twice in column 3$"):
        codec.encode("".join(cells))


def test_rejects_duplicate_in_box(codec: SudokuCodec) -> None:
    cells = ["."] * 81
    cells[4 * 9 + 3], cells[5 * 9 + 5] = "2", "2"  # box 5 (centre), different rows and columns
    with pytest.raises(PuzzleError, match=r"digit 2 appears twice in box 5$"):
        codec.encode("".join(cells))


def test_error_message_is_one_line(codec: SudokuCodec) -> None:
    with pytest.raises(PuzzleError) as info:
        codec.encode("12\n34")
    assert "\n" not in str(info.value)


def test_check_rejects_bad_predictions(codec: SudokuCodec) -> None:
    puzzle = codec.encode(SOLVED[:40] + "." * 41)
    good = codec.encode(SOLVED)
    assert codec.check(puzzle, good)
    swapped = good.copy()
    swapped[[0, 1]] = swapped[[1, 0]]  # breaks givens and columns
    blank = good.copy()
    blank[80] = 1
    tail_swap = good.copy()
    tail_swap[[79, 80]] = tail_swap[[80, 79]]  # keeps givens and row 9, breaks columns
    for bad in (swapped, blank, tail_swap, good[:80], good.astype(float), np.full(81, 99), "garbage"):
        assert codec.check(puzzle, bad) is False


def test_sudoku6_codec() -> None:
    codec = get_codec("sudoku6")
    assert isinstance(codec, SudokuCodec)
    assert (codec.task, codec.seq_len, codec.vocab_size, codec.box) == ("sudoku6", 36, 8, (2, 3))
    tokens = codec.encode("123456" + "." * 30)
    assert tokens[:7].tolist() == [2, 3, 4, 5, 6, 7, 1]
    with pytest.raises(PuzzleError, match=r"bad character '7'"):
        codec.encode("7" + "." * 35)
    assert codec.format_grid(tokens).splitlines()[:3] == ["1 2 3 | 4 5 6", ". . . | . . .", "------+------"]


def test_unknown_task_lists_known_ones() -> None:
    with pytest.raises(PuzzleError, match=r"unknown task 'chess'; known tasks: sudoku, sudoku6, maze"):
        get_codec("chess")


@pytest.mark.parametrize(("box", "givens"), [((3, 3), 28), ((2, 3), 12)])
def test_generated_puzzles_have_unique_solutions(box: tuple[int, int], givens: int) -> None:
    rng = np.random.default_rng(123)
    codec = SudokuCodec(*box)
    for _ in range(20):
        puzzle, solution = generate_sudoku(rng, givens, box)
        assert np.count_nonzero(puzzle) == givens
        assert count_solutions(puzzle, box) == 1
        assert codec.check(grid_to_tokens(puzzle), grid_to_tokens(solution))


def test_generator_is_deterministic_under_seed() -> None:
    a = [generate_sudoku(np.random.default_rng(7), 30)[0] for _ in range(2)]
    b = generate_sudoku(np.random.default_rng(8), 30)[0]
    assert np.array_equal(a[0], a[1])
    assert not np.array_equal(a[0], b)


def test_generator_stops_at_a_minimal_puzzle_when_target_unreachable() -> None:
    puzzle, _ = generate_sudoku(np.random.default_rng(0), 4, (2, 3))
    assert np.count_nonzero(puzzle) > 4
    assert count_solutions(puzzle, (2, 3)) == 1
    for cell in np.flatnonzero(puzzle):  # minimal: every given is needed
        trial = puzzle.copy().reshape(-1)
        trial[cell] = 0
        assert count_solutions(trial.reshape(6, 6), (2, 3)) == 2


def test_rater_rates_magictour_harder_than_a_60_given_puzzle(magictour: list[str], codec: SudokuCodec) -> None:
    easy, _ = generate_sudoku(np.random.default_rng(1), 60)
    easy_rating = rate_difficulty(easy)
    assert easy_rating["givens"] == 60 and easy_rating["level"] == 0 and easy_rating["solved_logically"]
    levels = [rate_difficulty(codec.parse(p))["level"] for p in magictour[:100]]
    assert min(levels) >= 2
    assert sum(level == 3 for level in levels) >= 30


def test_rater_names_levels() -> None:
    rating = rate_difficulty(SudokuCodec().parse(FIRST))
    assert rating["level"] == 3 and rating["level_name"] == "search" and rating["givens"] == 18
    assert rating["remaining_blanks"] > 0


@pytest.mark.parametrize("box", [(3, 3), (2, 3)])
def test_augmentation_keeps_validity(box: tuple[int, int]) -> None:
    rng = np.random.default_rng(5)
    codec = SudokuCodec(*box)
    puzzle, solution = generate_sudoku(rng, 30 if box == (3, 3) else 14, box)
    for _ in range(10):
        p2, s2 = augment_sudoku(rng, puzzle, solution, box)
        assert codec.check(grid_to_tokens(p2), grid_to_tokens(s2))
        assert count_solutions(p2, box) == 1
        assert np.count_nonzero(p2) == np.count_nonzero(puzzle)
        assert sudoku_symmetry_key(p2, box) == sudoku_symmetry_key(puzzle, box)


def test_augmentation_transposes_only_square_boxes() -> None:
    rng = np.random.default_rng(0)
    _, solution = generate_sudoku(rng, 36, (2, 3))
    for _ in range(30):
        _, s2 = augment_sudoku(rng, solution, solution, (2, 3))
        # A 2x3-box grid stays one: every 2-row x 3-column box holds 1..6.
        boxes = s2.reshape(3, 2, 2, 3).transpose(0, 2, 1, 3).reshape(6, 6)
        assert (np.sort(boxes, axis=1) == np.arange(1, 7)).all()

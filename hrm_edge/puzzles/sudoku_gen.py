"""Sudoku generation, augmentation and symmetry keys (digit grids ``[n, n]``, 0 = blank).

Everything random takes a ``numpy.random.Generator`` and is deterministic under its seed.
"""

from __future__ import annotations

import numpy as np

from hrm_edge.puzzles.base import PuzzleError
from hrm_edge.puzzles.sudoku_solver import as_digit_grid, count_solutions, solve_sudoku

__all__ = [
    "augment_sudoku",
    "default_box",
    "generate_sudoku",
    "make_unique",
    "random_solution",
    "sudoku_symmetry_key",
]


def default_box(n: int) -> tuple[int, int]:
    """Usual box shape for an ``n x n`` board: 9 -> (3, 3), 6 -> (2, 3), 4 -> (2, 2)."""
    shapes = {1: (1, 1), 4: (2, 2), 6: (2, 3), 8: (2, 4), 9: (3, 3)}
    if n not in shapes:
        raise PuzzleError(f"sudoku: no default box shape for a {n}x{n} board; pass box=(rows, cols)")
    return shapes[n]


def random_solution(rng: np.random.Generator, box: tuple[int, int] = (3, 3)) -> np.ndarray:
    """A uniformly-seeded random complete grid ``int64 [n, n]`` (search with random digit order)."""
    n = box[0] * box[1]
    return solve_sudoku(np.zeros((n, n), dtype=np.int64), box, max_solutions=1, rng=rng)[0]


def generate_sudoku(
    rng: np.random.Generator, givens: int, box: tuple[int, int] = (3, 3), attempts: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Random Sudoku with a unique solution and (if reachable) exactly ``givens`` givens.

    A random full grid is drawn, then cells are blanked in random order, skipping any
    blank that would make the solution non-unique, until ``givens`` remain. If the
    removal order runs out first (the puzzle became minimal), it retries with a new
    grid up to ``attempts`` times and returns the puzzle with the fewest givens; the
    actual count is ``np.count_nonzero(puzzle)`` (>= ``givens``).

    Returns:
        ``(puzzle, solution)``: digit grids ``int64 [n, n]``, puzzle 0 = blank.
    """
    n = box[0] * box[1]
    if not 0 <= givens <= n * n:
        raise PuzzleError(f"sudoku generator: givens must be 0..{n * n}, got {givens}")
    best: tuple[np.ndarray, np.ndarray] | None = None
    for _ in range(max(1, attempts)):
        solution = random_solution(rng, box)
        puzzle = solution.reshape(-1).copy()
        left = n * n
        for cell in rng.permutation(n * n):
            if left <= givens:
                break
            keep = puzzle[cell]
            puzzle[cell] = 0
            if count_solutions(puzzle.reshape(n, n), box, limit=2) == 1:
                left -= 1
            else:
                puzzle[cell] = keep
        candidate = (puzzle.reshape(n, n), solution)
        if best is None or left < np.count_nonzero(best[0]):
            best = candidate
        if left <= givens:
            break
    assert best is not None
    return best


def make_unique(
    rng: np.random.Generator, puzzle: np.ndarray, box: tuple[int, int] = (3, 3)
) -> tuple[np.ndarray, np.ndarray, int]:
    """Turn a puzzle with several solutions into a unique one by adding givens.

    Picks one solution (at random among the first few found), then copies its digits into
    blank cells, in random order, until the solution is unique.

    Returns:
        ``(puzzle, solution, added)``: digit grids ``int64 [n, n]`` and the number of givens added.

    Raises:
        PuzzleError: if the puzzle has no solution.
    """
    grid = as_digit_grid(puzzle, box).copy()
    options = solve_sudoku(grid, box, max_solutions=8)
    if not options:
        raise PuzzleError("sudoku puzzle: no solution, cannot make it unique")
    solution = options[int(rng.integers(len(options)))]
    added = 0
    blanks = [int(i) for i in rng.permutation(grid.size) if grid.flat[i] == 0]
    for cell in blanks:
        if count_solutions(grid, box, limit=2) == 1:
            break
        grid.flat[cell] = solution.flat[cell]
        added += 1
    return grid, solution, added


def augment_sudoku(
    rng: np.random.Generator,
    puzzle: np.ndarray,
    solution: np.ndarray,
    box: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply one random validity-preserving transformation to a puzzle and its solution.

    The transformation: relabel digits 1..n by a random permutation (0 = blank stays),
    permute the bands (groups of ``box_rows`` rows) and the rows inside each band,
    permute the stacks (groups of ``box_cols`` columns) and the columns inside each
    stack, and transpose with probability 1/2 -- only when the boxes are square
    (9x9): transposing a 6x6 board would turn its 2x3 boxes into 3x2 boxes.

    Args:
        puzzle, solution: digit grids ``[n, n]``.
        box: box shape; default from the board size (9 -> 3x3, 6 -> 2x3).

    Returns:
        The transformed ``(puzzle, solution)``, ``int64 [n, n]``.
    """
    p = np.asarray(puzzle, dtype=np.int64)
    s = np.asarray(solution, dtype=np.int64)
    n = p.shape[0]
    br, bc = box if box is not None else default_box(n)
    if p.shape != (n, n) or s.shape != (n, n) or br * bc != n:
        raise PuzzleError(f"sudoku augment: expected two {n}x{n} grids for boxes {br}x{bc}")
    digit_map = np.concatenate([[0], rng.permutation(n) + 1])
    rows = np.concatenate([band * br + rng.permutation(br) for band in rng.permutation(n // br)])
    cols = np.concatenate([stack * bc + rng.permutation(bc) for stack in rng.permutation(n // bc)])
    transpose = br == bc and bool(rng.random() < 0.5)

    def apply(grid: np.ndarray) -> np.ndarray:
        out = grid.T if transpose else grid
        return digit_map[out[np.ix_(rows, cols)]]

    return apply(p), apply(s)


def sudoku_symmetry_key(puzzle: np.ndarray, box: tuple[int, int] | None = None) -> str:
    """A key that is equal for puzzles related by the transformations of :func:`augment_sudoku`.

    It combines invariants of those transformations: the sorted digit frequencies, and the
    multiset (per band, per stack) of per-row / per-column given counts, taken in the
    orientation-independent order when transposition is allowed. Equal puzzles (up to the
    symmetries) always get equal keys; different keys prove two puzzles are not
    equivalent. (Unrelated puzzles may share a key, so comparing keys is conservative.)
    """
    p = np.asarray(puzzle, dtype=np.int64)
    n = p.shape[0]
    br, bc = box if box is not None else default_box(n)
    given = p > 0
    digit_counts = sorted(int(np.count_nonzero(p == d)) for d in range(1, n + 1))
    row_counts = given.sum(axis=1)
    col_counts = given.sum(axis=0)
    bands = sorted(tuple(sorted(row_counts[b * br : (b + 1) * br].tolist())) for b in range(n // br))
    stacks = sorted(tuple(sorted(col_counts[s * bc : (s + 1) * bc].tolist())) for s in range(n // bc))
    # Per-box given counts, as a multiset over boxes within each band (row order-free).
    box_counts = given.reshape(n // br, br, n // bc, bc).sum(axis=(1, 3))
    band_boxes = sorted(tuple(sorted(r)) for r in box_counts.tolist())
    stack_boxes = sorted(tuple(sorted(c)) for c in box_counts.T.tolist())
    lines = [(bands, band_boxes), (stacks, stack_boxes)]
    if br == bc:
        lines.sort()
    return repr((int(given.sum()), digit_counts, lines))

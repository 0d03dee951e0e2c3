"""Exact Sudoku solver: bitmask depth-first search with constraint propagation.

Grids here are digit grids, ``int`` arrays of shape ``[n, n]`` with 0 = blank and
1..n = digits, where ``n = box_rows * box_cols`` (``box=(3, 3)`` is the 9x9 game,
``box=(2, 3)`` the 6x6 game with boxes 2 rows high and 3 columns wide).

The search propagates naked singles (a cell with one candidate) and hidden
singles (a digit with one place in a row, column or box) to a fixpoint, then
branches on the cell with the fewest candidates. Pure Python; a hard 9x9 puzzle
takes a few milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from hrm_edge.puzzles.base import PuzzleError

__all__ = ["count_solutions", "solve_sudoku"]


@dataclass(frozen=True)
class Layout:
    """Index tables for one box shape; cells are numbered row-major ``0 .. n*n-1``."""

    box_rows: int
    box_cols: int
    n: int
    full: int  # bitmask with n bits set; bit d-1 stands for digit d
    row: tuple[int, ...]  # cell -> row index
    col: tuple[int, ...]  # cell -> column index
    box: tuple[int, ...]  # cell -> box index (row-major over boxes)
    units: tuple[tuple[int, ...], ...]  # rows, then columns, then boxes (3n units of n cells)
    popcount: tuple[int, ...]  # mask -> number of set bits
    digits: tuple[tuple[int, ...], ...]  # mask -> digits (1-based) whose bits are set


@lru_cache(maxsize=8)
def layout(box_rows: int, box_cols: int) -> Layout:
    """Cached index tables for boxes of ``box_rows x box_cols`` cells."""
    if box_rows < 1 or box_cols < 1:
        raise PuzzleError(f"sudoku box shape must be positive, got {box_rows}x{box_cols}")
    n = box_rows * box_cols
    cells = range(n * n)
    row = tuple(i // n for i in cells)
    col = tuple(i % n for i in cells)
    box = tuple((r // box_rows) * (n // box_cols) + c // box_cols for r, c in zip(row, col, strict=True))
    units = (
        tuple(tuple(r * n + c for c in range(n)) for r in range(n))
        + tuple(tuple(r * n + c for r in range(n)) for c in range(n))
        + tuple(tuple(i for i in cells if box[i] == b) for b in range(n))
    )
    masks = range(1 << n)
    popcount = tuple(bin(m).count("1") for m in masks)
    digits = tuple(tuple(d + 1 for d in range(n) if m >> d & 1) for m in masks)
    return Layout(box_rows, box_cols, n, (1 << n) - 1, row, col, box, units, popcount, digits)


def as_digit_grid(grid: np.ndarray, box: tuple[int, int]) -> np.ndarray:
    """Validate a digit grid for ``box`` and return it as ``int64 [n, n]``; raises PuzzleError."""
    n = box[0] * box[1]
    arr = np.asarray(grid)
    if arr.size != n * n:
        raise PuzzleError(f"sudoku grid: expected {n}x{n} = {n * n} cells, got {arr.size}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise PuzzleError(f"sudoku grid: expected integer digits, got dtype {arr.dtype}")
    arr = arr.reshape(n, n).astype(np.int64)
    if arr.min() < 0 or arr.max() > n:
        raise PuzzleError(f"sudoku grid: digits must be 0 (blank) .. {n}, got {int(arr.min())}..{int(arr.max())}")
    return arr


class _Search:
    """One search run: holds the tables, the solution list and the branching order."""

    def __init__(self, lay: Layout, limit: int, rng: np.random.Generator | None) -> None:
        self.lay = lay
        self.limit = limit
        self.rng = rng
        self.solutions: list[list[int]] = []

    def run(self, cells: list[int]) -> None:
        lay = self.lay
        rm = [0] * lay.n
        cm = [0] * lay.n
        bm = [0] * lay.n
        for i, d in enumerate(cells):
            if d:
                bit = 1 << (d - 1)
                r, c, b = lay.row[i], lay.col[i], lay.box[i]
                if (rm[r] | cm[c] | bm[b]) & bit:
                    return  # contradicting givens: no solution
                rm[r] |= bit
                cm[c] |= bit
                bm[b] |= bit
        empties = [i for i, d in enumerate(cells) if not d]
        self._search(cells, rm, cm, bm, empties)

    def _search(self, g: list[int], rm: list[int], cm: list[int], bm: list[int], empties: list[int]) -> None:
        lay = self.lay
        row, col, box, pop, full = lay.row, lay.col, lay.box, lay.popcount, lay.full
        while True:
            # Naked singles; remember the most constrained open cell.
            placed = False
            best, best_count, best_mask = -1, 99, 0
            rest = []
            for i in empties:
                r, c, b = row[i], col[i], box[i]
                m = full & ~(rm[r] | cm[c] | bm[b])
                k = pop[m]
                if k == 1:
                    g[i] = lay.digits[m][0]
                    rm[r] |= m
                    cm[c] |= m
                    bm[b] |= m
                    placed = True
                elif k == 0:
                    return
                else:
                    rest.append(i)
                    if k < best_count:
                        best, best_count, best_mask = i, k, m
            empties = rest
            if placed:
                continue
            if not empties:
                self.solutions.append(list(g))
                return
            # Hidden singles.
            status = self._hidden_singles(g, rm, cm, bm)
            if status < 0:
                return
            if status == 0:
                break
            empties = [i for i in empties if not g[i]]
        digits = lay.digits[best_mask]
        if self.rng is not None:
            digits = tuple(digits[j] for j in self.rng.permutation(len(digits)))
        r, c, b = row[best], col[best], box[best]
        for d in digits:
            bit = 1 << (d - 1)
            g2 = list(g)
            g2[best] = d
            rm2, cm2, bm2 = list(rm), list(cm), list(bm)
            rm2[r] |= bit
            cm2[c] |= bit
            bm2[b] |= bit
            self._search(g2, rm2, cm2, bm2, [i for i in empties if i != best])
            if len(self.solutions) >= self.limit:
                return

    def _hidden_singles(self, g: list[int], rm: list[int], cm: list[int], bm: list[int]) -> int:
        """Place every hidden single; returns -1 on contradiction, else the number placed."""
        lay = self.lay
        row, col, box, full = lay.row, lay.col, lay.box, lay.full
        placed = 0
        for unit in lay.units:
            once = twice = used = 0
            for i in unit:
                d = g[i]
                if d:
                    used |= 1 << (d - 1)
                else:
                    m = full & ~(rm[row[i]] | cm[col[i]] | bm[box[i]])
                    twice |= once & m
                    once |= m
            if (once | used) != full:
                return -1  # some digit has no place left in this unit
            single = once & ~twice & ~used
            if not single:
                continue
            for i in unit:
                if g[i]:
                    continue
                r, c, b = row[i], col[i], box[i]
                m = single & ~(rm[r] | cm[c] | bm[b])
                if not m:
                    continue
                if m & (m - 1):
                    return -1  # one cell is the only place of two digits
                g[i] = lay.digits[m][0]
                rm[r] |= m
                cm[c] |= m
                bm[b] |= m
                placed += 1
        return placed


def solve_sudoku(
    grid: np.ndarray,
    box: tuple[int, int] = (3, 3),
    max_solutions: int = 2,
    rng: np.random.Generator | None = None,
) -> list[np.ndarray]:
    """Solve a Sudoku exactly.

    Args:
        grid: digit grid ``[n, n]`` (or ``n*n`` flat), 0 = blank, 1..n = digits.
        box: box shape ``(box_rows, box_cols)``; ``n = box_rows * box_cols``.
        max_solutions: stop after this many solutions (2 is enough to test uniqueness).
        rng: if given, branch on candidate digits in random order (for generating grids).

    Returns:
        Up to ``max_solutions`` solved grids, ``int64 [n, n]``; ``[]`` if the puzzle
        has no solution (including contradicting givens).
    """
    lay = layout(*box)
    arr = as_digit_grid(grid, box)
    search = _Search(lay, max(1, int(max_solutions)), rng)
    search.run([int(v) for v in arr.reshape(-1)])
    return [np.array(s, dtype=np.int64).reshape(lay.n, lay.n) for s in search.solutions]


def count_solutions(grid: np.ndarray, box: tuple[int, int] = (3, 3), limit: int = 2) -> int:
    """Number of solutions of ``grid``, counting at most ``limit`` (so 2 means "2 or more")."""
    return len(solve_sudoku(grid, box, max_solutions=limit))

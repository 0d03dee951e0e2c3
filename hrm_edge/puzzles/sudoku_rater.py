"""Logical difficulty rating of a Sudoku: which human deduction techniques it needs.

The rater keeps a candidate bitmask per cell and always applies the simplest
technique that makes progress, restarting from the simplest after each step:

====  =========================  ==============================================
level name                       techniques
====  =========================  ==============================================
0     naked singles              a cell with one candidate left
1     hidden singles             a digit with one place left in a row/col/box
2     locked candidates/pairs    pointing and claiming (box/line interaction),
                                 naked pairs, hidden pairs
3     search                     the above stall: needs guessing/backtracking
====  =========================  ==============================================

The level of a puzzle is the highest level it needed. Grids are digit grids
``[n, n]`` (0 = blank), see :mod:`hrm_edge.puzzles.sudoku_solver`.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import combinations

import numpy as np

from hrm_edge.puzzles.base import PuzzleError
from hrm_edge.puzzles.sudoku_solver import Layout, as_digit_grid, layout

__all__ = ["LEVEL_NAMES", "rate_difficulty"]

LEVEL_NAMES: tuple[str, ...] = ("naked singles", "hidden singles", "locked candidates/pairs", "search")


@lru_cache(maxsize=8)
def _peers(box_rows: int, box_cols: int) -> tuple[tuple[int, ...], ...]:
    """Cell -> the other cells sharing its row, column or box."""
    lay = layout(box_rows, box_cols)
    return tuple(tuple(sorted({j for u in lay.units if i in u for j in u} - {i})) for i in range(lay.n * lay.n))


class _ContradictionError(Exception):
    """The candidate state became contradictory (the puzzle has no solution)."""


class _Rater:
    def __init__(self, lay: Layout, grid: list[int]) -> None:
        self.lay = lay
        self.grid = list(grid)
        self.cand = [0 if d else lay.full for d in grid]
        self.peers = _peers(lay.box_rows, lay.box_cols)
        for i, d in enumerate(grid):
            if d:
                self._eliminate_peers(i, d)

    def _eliminate_peers(self, i: int, d: int) -> None:
        bit = 1 << (d - 1)
        for j in self.peers[i]:
            if self.grid[j] == d:
                raise _ContradictionError
            self.cand[j] &= ~bit

    def place(self, i: int, d: int) -> None:
        if self.grid[i] or not self.cand[i] >> (d - 1) & 1:
            raise _ContradictionError
        self.grid[i] = d
        self.cand[i] = 0
        self._eliminate_peers(i, d)

    def open_cells(self) -> list[int]:
        return [i for i, d in enumerate(self.grid) if not d]

    # ---------------------------------------------------------- techniques
    def naked_single(self) -> bool:
        for i in self.open_cells():
            m = self.cand[i]
            if m == 0:
                raise _ContradictionError
            if not m & (m - 1):
                self.place(i, self.lay.digits[m][0])
                return True
        return False

    def hidden_single(self) -> bool:
        for unit in self.lay.units:
            for d in range(1, self.lay.n + 1):
                bit = 1 << (d - 1)
                if any(self.grid[i] == d for i in unit):
                    continue
                spots = [i for i in unit if self.cand[i] & bit]
                if not spots:
                    raise _ContradictionError
                if len(spots) == 1:
                    self.place(spots[0], d)
                    return True
        return False

    def locked_candidates(self) -> bool:
        lay = self.lay
        n = lay.n
        rows, cols, boxes = lay.units[:n], lay.units[n : 2 * n], lay.units[2 * n :]
        for line_units, line_of in ((rows, lay.row), (cols, lay.col)):
            for d in range(1, n + 1):
                bit = 1 << (d - 1)
                # Pointing: inside a box the digit is confined to one line.
                for box in boxes:
                    spots = [i for i in box if self.cand[i] & bit]
                    lines = {line_of[i] for i in spots}
                    if len(lines) == 1 and spots:
                        targets = [j for j in line_units[lines.pop()] if j not in box and self.cand[j] & bit]
                        if targets:
                            for j in targets:
                                self.cand[j] &= ~bit
                            return True
                # Claiming: inside a line the digit is confined to one box.
                for line in line_units:
                    spots = [i for i in line if self.cand[i] & bit]
                    owners = {lay.box[i] for i in spots}
                    if len(owners) == 1 and spots:
                        targets = [j for j in boxes[owners.pop()] if j not in line and self.cand[j] & bit]
                        if targets:
                            for j in targets:
                                self.cand[j] &= ~bit
                            return True
        return False

    def pairs(self) -> bool:
        lay = self.lay
        for unit in lay.units:
            open_cells = [i for i in unit if not self.grid[i]]
            # Naked pair: two cells sharing the same two candidates.
            for a, b in combinations(open_cells, 2):
                m = self.cand[a]
                if m == self.cand[b] and lay.popcount[m] == 2:
                    targets = [j for j in open_cells if j not in (a, b) and self.cand[j] & m]
                    if targets:
                        for j in targets:
                            self.cand[j] &= ~m
                        return True
            # Hidden pair: two digits confined to the same two cells.
            spots = {d: tuple(i for i in open_cells if self.cand[i] >> (d - 1) & 1) for d in range(1, lay.n + 1)}
            two = [d for d, s in spots.items() if len(s) == 2]
            for d1, d2 in combinations(two, 2):
                if spots[d1] == spots[d2]:
                    keep = (1 << (d1 - 1)) | (1 << (d2 - 1))
                    if any(self.cand[i] & ~keep for i in spots[d1]):
                        for i in spots[d1]:
                            self.cand[i] &= keep
                        return True
        return False


def rate_difficulty(grid: np.ndarray, box: tuple[int, int] = (3, 3)) -> dict:
    """Rate a Sudoku by the deduction techniques a logical solver needs.

    Args:
        grid: digit grid ``[n, n]`` (0 = blank).
        box: box shape ``(box_rows, box_cols)``.

    Returns:
        ``{"level": int 0..3, "level_name": str, "givens": int, "solved_logically": bool,
        "remaining_blanks": int, "steps": {technique: count}}`` where ``remaining_blanks`` is
        the number of cells still open when logic stalled (0 if solved).

    Raises:
        PuzzleError: if the givens contradict each other or logic reaches a contradiction
        (no solution).
    """
    lay = layout(*box)
    arr = as_digit_grid(grid, box)
    flat = [int(v) for v in arr.reshape(-1)]
    steps = {"naked_single": 0, "hidden_single": 0, "locked_candidates": 0, "pairs": 0}
    try:
        rater = _Rater(lay, flat)
        ladder = (
            (0, "naked_single", rater.naked_single),
            (1, "hidden_single", rater.hidden_single),
            (2, "locked_candidates", rater.locked_candidates),
            (2, "pairs", rater.pairs),
        )
        level = 0
        while rater.open_cells():
            for lvl, name, technique in ladder:
                if technique():
                    steps[name] += 1
                    level = max(level, lvl)
                    break
            else:
                level = 3
                break
    except _ContradictionError:
        raise PuzzleError("sudoku puzzle: no solution (logical deduction reached a contradiction)") from None
    remaining = len(rater.open_cells())
    return {
        "level": level,
        "level_name": LEVEL_NAMES[level],
        "givens": sum(1 for d in flat if d),
        "solved_logically": remaining == 0,
        "remaining_blanks": remaining,
        "steps": steps,
    }

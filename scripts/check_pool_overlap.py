"""Check that no calibration or validation 6x6 Sudoku is a training-pool puzzle in disguise.

    python scripts/check_pool_overlap.py RUN_DIR/pool.npz [calib_data/sudoku6]

Two puzzles are the same in disguise when a row/column permutation that keeps the 2x3 boxes
(band and stack order, rows within a band, columns within a stack: 3456 of them) and a digit
relabelling map one onto the other; training augments pool puzzles with exactly these. Each
puzzle is reduced to a canonical form (over the 3456 cell permutations, digits renamed in order
of first appearance, smallest byte string), and the forms are compared. Prints the counts; exits
1 on any overlap.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np

from hrm_edge.puzzles.datasets import load_puzzle_set
from hrm_edge.train.data import SudokuPool


def box_preserving_permutations() -> np.ndarray:
    """int64 [3456, 36]: cell index maps of the 6x6 (2x3 box) row/column symmetries."""
    rows = [[band * 2 + within[i][r] for i, band in enumerate(bands) for r in range(2)]
            for bands in itertools.permutations(range(3))
            for within in itertools.product(itertools.permutations(range(2)), repeat=3)]
    cols = [[stack * 3 + within[i][c] for i, stack in enumerate(stacks) for c in range(3)]
            for stacks in itertools.permutations(range(2))
            for within in itertools.product(itertools.permutations(range(3)), repeat=2)]
    return np.array([(np.array(r)[:, None] * 6 + np.array(c)[None, :]).reshape(-1) for r in rows for c in cols])


def canonical(digits: np.ndarray, perms: np.ndarray) -> bytes:
    """Canonical form of a digit grid int [36] (0 = blank) under `perms` and digit relabelling."""
    x = digits[perms]
    first = np.full((len(perms), 6), 99)
    for d in range(1, 7):
        present = x == d
        first[:, d - 1] = np.where(present.any(1), present.argmax(1), 99)
    order = np.argsort(first, axis=1, kind="stable") + 1
    rename = np.zeros((len(perms), 7), np.int64)
    np.put_along_axis(rename, order, np.tile(np.arange(1, 7), (len(perms), 1)), axis=1)
    y = np.take_along_axis(rename, x, axis=1)
    y[x == 0] = 0
    return min(row.tobytes() for row in y.astype(np.int8))


def main() -> int:
    pool = SudokuPool.load(sys.argv[1])
    shipped = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parents[1] / "calib_data/sudoku6"
    if pool.box != (2, 3):
        raise SystemExit("this check is for 6x6 (2x3 box) pools")
    perms = box_preserving_permutations()
    pool_forms = {canonical(p.astype(np.int64), perms) for p in pool.puzzles}
    print(f"pool: {len(pool.puzzles)} puzzles, {len(pool_forms)} distinct up to symmetry")
    overlap = 0
    for split in ("calib", "val"):
        pset = load_puzzle_set(shipped, split=split)
        hits = sum(canonical(t - 1, perms) in pool_forms for t in pset.inputs)  # tokens: blank 1, digit d -> d + 1
        print(f"{split}: {len(pset)} puzzles, {hits} equivalent to a pool puzzle")
        overlap += hits
    return 1 if overlap else 0


if __name__ == "__main__":
    sys.exit(main())

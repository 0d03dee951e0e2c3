"""The 8 symmetries of a square grid, numbered as in the official HRM dataset builders.

``tid``: 0 identity, 1 rotate 90 deg counter-clockwise, 2 rotate 180, 3 rotate 270,
4 mirror left-right, 5 mirror up-down, 6 transpose (main diagonal),
7 anti-diagonal reflection. The numbering matters: augmented ARC puzzle names
(``..._t<tid>_...``) refer to it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DIHEDRAL_INVERSE", "dihedral_transform", "inverse_dihedral_transform"]

DIHEDRAL_INVERSE: tuple[int, ...] = (0, 3, 2, 1, 4, 5, 6, 7)


def dihedral_transform(grid: np.ndarray, tid: int) -> np.ndarray:
    """Apply symmetry ``tid`` (0..7) to a 2-D array ``[h, w]``; returns a new array."""
    arr = np.asarray(grid)
    if tid in (1, 2, 3):
        out = np.rot90(arr, k=tid)
    elif tid == 4:
        out = arr[:, ::-1]
    elif tid == 5:
        out = arr[::-1, :]
    elif tid == 6:
        out = arr.T
    elif tid == 7:
        out = np.rot90(arr, k=1)[:, ::-1]
    elif tid == 0:
        out = arr
    else:
        raise ValueError(f"dihedral transform id must be 0..7, got {tid}")
    return np.ascontiguousarray(out)


def inverse_dihedral_transform(grid: np.ndarray, tid: int) -> np.ndarray:
    """Undo :func:`dihedral_transform` with the same ``tid``."""
    return dihedral_transform(grid, DIHEDRAL_INVERSE[tid])

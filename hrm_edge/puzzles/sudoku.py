"""Sudoku codec: text <-> official HRM token ids, validation and answer checking.

Token ids (official, ``dataset/build_sudoku_dataset.py``): 0 = PAD, 1 = blank,
``d + 1`` for digit ``d`` (so 2..10 for 9x9). A 9x9 puzzle is 81 ids (row-major),
vocabulary 11. The same scheme serves smaller boards, e.g. 6x6 with 2x3 boxes
(36 ids, vocabulary 8).

Accepted text: the cells in row-major order, digits ``1..n`` and ``.`` or ``0`` for
blanks, either on one line or as ``n`` lines; whitespace and the separators
``| - +`` are ignored. Rows, columns and boxes in messages are 1-based.
"""

from __future__ import annotations

import numpy as np

from hrm_edge.puzzles.base import Codec, PuzzleError, strip_comments, where
from hrm_edge.puzzles.sudoku_solver import as_digit_grid, layout

__all__ = ["BLANK_ID", "SudokuCodec", "find_conflict", "grid_to_tokens", "tokens_to_grid"]

BLANK_ID = 1
_SEPARATORS = frozenset(" \t|-+")
_BLANKS = frozenset(".0")


def grid_to_tokens(grid: np.ndarray) -> np.ndarray:
    """Digit grid ``[n, n]`` (0 = blank) -> token ids ``int64 [n*n]`` (blank 1, digit d -> d+1)."""
    return np.asarray(grid, dtype=np.int64).reshape(-1) + 1


def tokens_to_grid(tokens: np.ndarray, n: int) -> np.ndarray:
    """Token ids ``[n*n]`` -> digit grid ``int64 [n, n]`` (PAD and blank both become 0)."""
    return np.maximum(np.asarray(tokens, dtype=np.int64).reshape(n, n) - 1, 0)


def find_conflict(grid: np.ndarray, box: tuple[int, int]) -> str | None:
    """First duplicated given in a digit grid ``[n, n]``, described in words, or None.

    E.g. ``"digit 5 appears twice in row 2"`` (rows, columns, boxes 1-based; boxes row-major).
    """
    lay = layout(*box)
    flat = np.asarray(grid).reshape(-1)
    kinds = ("row",) * lay.n + ("column",) * lay.n + ("box",) * lay.n
    for u, unit in enumerate(lay.units):
        seen: set[int] = set()
        for i in unit:
            d = int(flat[i])
            if d and d in seen:
                return f"digit {d} appears twice in {kinds[u]} {u % lay.n + 1}"
            seen.add(d)
    return None


class SudokuCodec(Codec):
    """Codec for an ``n x n`` Sudoku with boxes of ``box_rows x box_cols`` cells (n <= 9).

    ``SudokuCodec()`` is the official 9x9 task (seq_len 81, vocab 11);
    ``SudokuCodec(2, 3)`` is 6x6 with boxes 2 rows high, 3 columns wide (seq_len 36, vocab 8).
    """

    def __init__(self, box_rows: int = 3, box_cols: int = 3) -> None:
        n = box_rows * box_cols
        if not 1 <= n <= 9 or box_rows < 1 or box_cols < 1:
            raise PuzzleError(f"sudoku box {box_rows}x{box_cols}: board size must be 1..9 (single-digit cells)")
        self.box_rows = box_rows
        self.box_cols = box_cols
        self.n = n
        self.box = (box_rows, box_cols)
        self.task = "sudoku" if (box_rows, box_cols) == (3, 3) else ("sudoku6" if n == 6 else f"sudoku{n}")
        self.seq_len = n * n
        self.vocab_size = n + 2
        self.pad_id = 0

    # ----------------------------------------------------------------- text
    def _cells(self, line: str) -> int:
        """Number of cell characters in a line (anything that is not a separator)."""
        return sum(ch not in _SEPARATORS for ch in line)

    def split(self, text: str) -> list[str]:
        """Puzzle texts in ``text``: one-line puzzles, or ``n``-line grids (blank lines separate grids).

        ``#`` comment lines are dropped, and so are separator-only lines (``------+------``).
        A line whose first whitespace-separated field has exactly ``n*n`` cells is a whole
        puzzle and the rest of the line (e.g. a solution or a rating) is ignored.
        Leftover rows that do not make a full grid are returned joined, so that
        :meth:`encode` reports the wrong cell count.
        """
        puzzles: list[str] = []
        rows: list[str] = []

        def flush() -> None:
            if rows:
                puzzles.append("\n".join(rows))
                rows.clear()

        for line in strip_comments(text):
            if not line.strip():
                flush()
                continue
            first = line.split()[0]
            if self._cells(first) == self.seq_len and not rows:
                puzzles.append(first)
                continue
            if self._cells(line) == 0:
                continue
            rows.append(line)
            if sum(self._cells(r) for r in rows) >= self.seq_len:
                flush()
        flush()
        return puzzles

    def parse(self, text: str, *, index: int | None = None) -> np.ndarray:
        """Puzzle text -> validated digit grid ``int64 [n, n]`` (0 = blank). Raises PuzzleError."""
        loc = where(self.task, index)
        chars = [(pos, ch) for pos, ch in enumerate(text.strip()) if ch not in _SEPARATORS and ch not in "\r\n"]
        if len(chars) != self.seq_len:
            raise PuzzleError(f"{loc}: expected {self.seq_len} cells, got {len(chars)}")
        values = []
        for cell, (_pos, ch) in enumerate(chars):
            if ch in _BLANKS:
                values.append(0)
            elif ch.isdigit() and ch.isascii() and 1 <= int(ch) <= self.n:
                values.append(int(ch))
            else:
                r, c = divmod(cell, self.n)
                raise PuzzleError(
                    f"{loc}: bad character {ch!r} in cell {cell + 1} (row {r + 1}, column {c + 1}); "
                    f"allowed: digits 1-{self.n}, '.' or '0' for blank"
                )
        grid = np.array(values, dtype=np.int64).reshape(self.n, self.n)
        conflict = find_conflict(grid, self.box)
        if conflict:
            raise PuzzleError(f"{loc}: {conflict}")
        return grid

    def encode(self, text: str, *, index: int | None = None) -> np.ndarray:
        """Puzzle text -> token ids ``int64 [n*n]`` (blank 1, digit d -> d+1). Raises PuzzleError."""
        return grid_to_tokens(self.parse(text, index=index))

    def encode_grid(self, grid: np.ndarray, *, index: int | None = None) -> np.ndarray:
        """Digit grid ``[n, n]`` (0 = blank) -> validated token ids ``int64 [n*n]``."""
        arr = as_digit_grid(grid, self.box)
        conflict = find_conflict(arr, self.box)
        if conflict:
            raise PuzzleError(f"{where(self.task, index)}: {conflict}")
        return grid_to_tokens(arr)

    def decode(self, tokens: np.ndarray) -> str:
        """Token ids ``[n*n]`` -> one line of ``n*n`` chars: digits, ``.`` for blank, ``?`` for PAD."""
        flat = self.as_tokens(tokens)
        return "".join("?" if t == 0 else "." if t == BLANK_ID else str(t - 1) for t in flat.tolist())

    def decode_grid(self, tokens: np.ndarray) -> np.ndarray:
        """Token ids ``[n*n]`` -> digit grid ``int64 [n, n]`` (0 for blank/PAD); raises on bad ids."""
        return tokens_to_grid(self.as_tokens(tokens), self.n)

    def format_grid(self, tokens: np.ndarray) -> str:
        """Multi-line grid with ``|`` between boxes and ``------+------`` lines between bands."""
        text = self.decode(tokens)
        n, br, bc = self.n, self.box_rows, self.box_cols
        rows = []
        for r in range(n):
            cells = text[r * n : (r + 1) * n]
            rows.append(" | ".join(" ".join(cells[s : s + bc]) for s in range(0, n, bc)))
        sep = "".join("+" if ch == "|" else "-" for ch in rows[0])
        lines = []
        for r, row in enumerate(rows):
            if r and r % br == 0:
                lines.append(sep)
            lines.append(row)
        return "\n".join(lines)

    # --------------------------------------------------------------- checks
    def check(self, inputs: np.ndarray, prediction: np.ndarray) -> bool:
        """True iff ``prediction`` is a full valid grid keeping every given of ``inputs``.

        ``inputs`` must be valid token ids (raises PuzzleError otherwise); any prediction
        that is not (wrong size, PAD or blank cells, repeated digits, changed givens) gives False.
        """
        given = self.as_tokens(inputs, "inputs")
        pred = self.try_tokens(prediction)
        if pred is None:
            return False
        if np.any(pred < 2):
            return False
        clue = given >= 2
        if np.any(pred[clue] != given[clue]):
            return False
        return is_complete_solution(tokens_to_grid(pred, self.n), self.box)


def is_complete_solution(grid: np.ndarray, box: tuple[int, int]) -> bool:
    """Whether a digit grid ``[n, n]`` has every row, column and box a permutation of 1..n."""
    lay = layout(*box)
    flat = np.asarray(grid).reshape(-1)
    want = np.arange(1, lay.n + 1)
    units = np.array(lay.units)  # [3n, n] cell indices
    vals = np.sort(flat[units], axis=1)
    return bool(np.all(vals == want))

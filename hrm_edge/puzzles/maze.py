"""Maze codec, BFS solver and path checks.

Token ids (official, ``dataset/build_maze_dataset.py``, charset ``"# SGo"``):
0 = PAD, 1 = ``#`` wall, 2 = ``' '`` open, 3 = ``S`` start, 4 = ``G`` goal,
5 = ``o`` path (labels only). A ``size x size`` maze is ``size*size`` ids, row-major;
the official task is 30x30 (seq_len 900, vocab 6).

Accepted text: ``size`` lines of exactly ``size`` characters, or one line of
``size*size`` characters. Rows and columns in messages are 1-based.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from hrm_edge.puzzles.base import Codec, PuzzleError, where

__all__ = [
    "CHARSET",
    "GOAL",
    "MAX_MAZE_SIZE",
    "MIN_MAZE_SIZE",
    "OPEN",
    "PATH",
    "START",
    "WALL",
    "MazeCodec",
    "label_from_path",
    "path_length",
    "solve_maze",
]

CHARSET = "# SGo"
WALL, OPEN, START, GOAL, PATH = 1, 2, 3, 4, 5
MIN_MAZE_SIZE, MAX_MAZE_SIZE = 2, 30
_CHAR_TO_ID = {ch: i + 1 for i, ch in enumerate(CHARSET)}
_ID_TO_CHAR = "?" + CHARSET  # PAD renders as '?'
_STEPS = ((-1, 0), (1, 0), (0, -1), (0, 1))

Cell = tuple[int, int]


def _square(grid: np.ndarray) -> np.ndarray:
    """Any array with a square number of ids -> int64 ``[n, n]``."""
    arr = np.asarray(grid, dtype=np.int64)
    n = round(arr.size**0.5)
    if n * n != arr.size:
        raise PuzzleError(f"maze grid: {arr.size} cells is not a square grid")
    return arr.reshape(n, n)


def _find(grid: np.ndarray, token: int) -> list[Cell]:
    return [(int(r), int(c)) for r, c in zip(*np.nonzero(grid == token), strict=True)]


def solve_maze(grid: np.ndarray) -> list[Cell] | None:
    """Shortest 4-neighbour path from ``S`` to ``G`` by breadth-first search.

    Args:
        grid: maze token ids ``[n, n]`` (or flat ``n*n``); walls block, every other
            cell (open, ``o``, ``S``, ``G``) is walkable. Must hold one ``S`` and one ``G``.

    Returns:
        The cells ``(row, col)`` (0-based) from ``S`` to ``G`` inclusive, or None if ``G``
        cannot be reached. Ties between equally short paths break deterministically
        (neighbours tried up, down, left, right).
    """
    g = _square(grid)
    starts, goals = _find(g, START), _find(g, GOAL)
    if len(starts) != 1 or len(goals) != 1:
        raise PuzzleError(f"maze: expected one S and one G, got {len(starts)} S and {len(goals)} G")
    start, goal = starts[0], goals[0]
    n = g.shape[0]
    walkable = (g != WALL) & (g != 0)
    parent: dict[Cell, Cell | None] = {start: None}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        if cell == goal:
            path = []
            node: Cell | None = cell
            while node is not None:
                path.append(node)
                node = parent[node]
            return path[::-1]
        r, c = cell
        for dr, dc in _STEPS:
            nxt = (r + dr, c + dc)
            if 0 <= nxt[0] < n and 0 <= nxt[1] < n and nxt not in parent and walkable[nxt]:
                parent[nxt] = cell
                queue.append(nxt)
    return None


def path_length(grid: np.ndarray) -> int | None:
    """Number of steps of the shortest ``S`` -> ``G`` path (cells on it minus one), or None."""
    path = solve_maze(grid)
    return None if path is None else len(path) - 1


def label_from_path(grid: np.ndarray, path: list[Cell]) -> np.ndarray:
    """Copy of maze ids ``[n, n]`` with the path's cells between ``S`` and ``G`` set to ``o``."""
    label = _square(grid).copy()
    for r, c in path[1:-1]:
        label[r, c] = PATH
    return label


class MazeCodec(Codec):
    """Codec for ``size x size`` mazes (official task: 30x30, seq_len 900, vocab 6)."""

    def __init__(self, size: int = 30) -> None:
        if not MIN_MAZE_SIZE <= size <= MAX_MAZE_SIZE:
            raise PuzzleError(f"maze size must be {MIN_MAZE_SIZE}..{MAX_MAZE_SIZE}, got {size}")
        self.size = size
        self.task = "maze" if size == 30 else f"maze:{size}"
        self.seq_len = size * size
        self.vocab_size = len(CHARSET) + 1
        self.pad_id = 0

    # ----------------------------------------------------------------- text
    @staticmethod
    def _is_comment(line: str) -> bool:
        """``#`` starts both walls and comments: a comment has a character outside the charset."""
        return line.startswith("#") and any(ch not in CHARSET for ch in line)

    def split(self, text: str) -> list[str]:
        """Maze texts in ``text``: ``size``-line grids or ``size*size``-char lines.

        Lines starting with ``#`` that contain a character outside ``"# SGo"`` are comments.
        Empty lines separate grids (a line of spaces is a row of open cells). On a
        line holding ``input|label`` (the calibration-file layout) only the input part is kept.
        """
        puzzles: list[str] = []
        rows: list[str] = []

        def flush() -> None:
            if rows:
                puzzles.append("\n".join(rows))
                rows.clear()

        for raw in text.replace("\r", "").split("\n"):
            line = raw.split("|", 1)[0] if "|" in raw else raw
            if self._is_comment(line):
                continue
            if not line.strip() and len(line) != self.size:
                flush()
                continue
            if len(line) == self.seq_len and not rows:
                puzzles.append(line)
                continue
            rows.append(line)
            if len(rows) == self.size:
                flush()
        flush()
        return puzzles

    def parse(self, text: str, *, index: int | None = None, label: bool = False) -> np.ndarray:
        """Maze text -> validated ids ``int64 [size, size]``; ``label=True`` allows ``o`` path cells.

        Raises PuzzleError on a wrong size, a bad character, not exactly one ``S`` and one
        ``G``, or (``label=False``) an ``o`` in the input.
        """
        loc = where(self.task, index)
        n = self.size
        lines = text.replace("\r", "").split("\n")
        while lines and lines[-1] == "":
            lines.pop()
        if len(lines) == 1 and len(lines[0]) == n * n:
            lines = [lines[0][i : i + n] for i in range(0, n * n, n)]
        if len(lines) != n:
            raise PuzzleError(
                f"{loc}: expected {n} rows of {n} characters (or one line of {n * n}), got {len(lines)} rows"
            )
        allowed = CHARSET if label else CHARSET[:4]
        ids = np.empty((n, n), dtype=np.int64)
        for r, line in enumerate(lines):
            if len(line) != n:
                raise PuzzleError(f"{loc}: row {r + 1} has {len(line)} characters, expected {n}")
            for c, ch in enumerate(line):
                if ch not in allowed:
                    hint = " (a path 'o' is only allowed in labels)" if ch == "o" else ""
                    raise PuzzleError(
                        f"{loc}: bad character {ch!r} at row {r + 1}, column {c + 1}; "
                        f"allowed: {', '.join(repr(a) for a in allowed)}{hint}"
                    )
                ids[r, c] = _CHAR_TO_ID[ch]
        for token, name in ((START, "S"), (GOAL, "G")):
            found = _find(ids, token)
            if len(found) != 1:
                at = ", ".join(f"row {r + 1} column {c + 1}" for r, c in found[:3])
                raise PuzzleError(f"{loc}: expected exactly one {name}, got {len(found)}" + (f" ({at})" if at else ""))
        return ids

    def encode(self, text: str, *, index: int | None = None) -> np.ndarray:
        """Maze text (no path) -> ids ``int64 [size*size]``. Raises PuzzleError."""
        return self.parse(text, index=index).reshape(-1)

    def encode_label(self, text: str, *, index: int | None = None) -> np.ndarray:
        """Solved-maze text (path marked ``o``) -> ids ``int64 [size*size]``. Raises PuzzleError."""
        return self.parse(text, index=index, label=True).reshape(-1)

    def decode(self, tokens: np.ndarray) -> str:
        """Ids ``[size*size]`` -> ``size`` lines of ``size`` chars (PAD shown as ``?``)."""
        flat = self.as_tokens(tokens)
        chars = "".join(_ID_TO_CHAR[t] for t in flat.tolist())
        return "\n".join(chars[i : i + self.size] for i in range(0, self.seq_len, self.size))

    def format_grid(self, tokens: np.ndarray) -> str:
        """The decoded rows inside a ``+---+`` frame, so that trailing open cells stay visible."""
        edge = "+" + "-" * self.size + "+"
        return "\n".join([edge, *("|" + row + "|" for row in self.decode(tokens).split("\n")), edge])

    # --------------------------------------------------------------- checks
    def check(self, inputs: np.ndarray, prediction: np.ndarray) -> bool:
        """True iff ``prediction`` marks a valid path from ``S`` to ``G`` in maze ``inputs``.

        The prediction must equal the input except open cells turned ``o``, and the ``o``
        cells together with ``S`` and ``G`` must form one non-branching 4-neighbour path:
        ``S`` and ``G`` have exactly one neighbour in it, every ``o`` exactly two, and it is
        connected. (A shortest path always has this shape; see :meth:`is_shortest`.)
        Never raises because of the prediction.
        """
        given = self.as_tokens(inputs, "inputs").reshape(self.size, self.size)
        flat = self.try_tokens(prediction)
        if flat is None:
            return False
        pred = flat.reshape(self.size, self.size)
        changed = pred != given
        if np.any(changed & ~((given == OPEN) & (pred == PATH))):
            return False
        if np.count_nonzero(given == START) != 1 or np.count_nonzero(given == GOAL) != 1:
            return False
        on_path = (pred == PATH) | (pred == START) | (pred == GOAL)
        padded = np.pad(on_path, 1).astype(np.int64)
        neighbours = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
        ends = (pred == START) | (pred == GOAL)
        if np.any(neighbours[ends] != 1) or np.any(neighbours[pred == PATH] != 2):
            return False
        # Degrees fit a path plus possibly separate cycles; require one connected piece.
        start = _find(pred, START)[0]
        seen = {start}
        stack = [start]
        while stack:
            r, c = stack.pop()
            for dr, dc in _STEPS:
                nxt = (r + dr, c + dc)
                if 0 <= nxt[0] < self.size and 0 <= nxt[1] < self.size and on_path[nxt] and nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return len(seen) == int(on_path.sum())

    def is_shortest(self, inputs: np.ndarray, prediction: np.ndarray) -> bool:
        """True iff :meth:`check` passes and the path is as short as the BFS shortest path."""
        if not self.check(inputs, prediction):
            return False
        best = path_length(self.as_tokens(inputs, "inputs"))
        steps = int(np.count_nonzero(np.asarray(prediction).reshape(-1) == PATH)) + 1
        return best is not None and steps == best

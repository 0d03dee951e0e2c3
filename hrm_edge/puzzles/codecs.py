"""The codec of each task name: the one registry of puzzle formats."""

from __future__ import annotations

from hrm_edge.puzzles.arc import ArcCodec
from hrm_edge.puzzles.base import Codec, PuzzleError, shown
from hrm_edge.puzzles.maze import MAX_MAZE_SIZE, MIN_MAZE_SIZE, MazeCodec
from hrm_edge.puzzles.sudoku import SudokuCodec

KNOWN_TASKS: tuple[str, ...] = ("sudoku", "sudoku6", "maze", "maze:<n>", "arc")


def get_codec(task: str) -> Codec:
    """Codec for a task name.

    Known tasks: ``"sudoku"`` (9x9, official ids), ``"sudoku6"`` (6x6, 2x3 boxes),
    ``"maze"`` (30x30, official ids), ``"maze:<n>"`` (n x n maze, 2 <= n <= 30, same ids),
    ``"arc"`` (30x30 canvas, official ids). Raises :class:`PuzzleError` for anything else.
    """
    name = str(task).strip().lower()
    if name == "sudoku":
        return SudokuCodec(3, 3)
    if name == "sudoku6":
        return SudokuCodec(2, 3)
    if name == "maze":
        return MazeCodec(30)
    if name.startswith("maze:"):
        size_text = name.split(":", 1)[1]
        # ASCII digits only, at most 4: str.isdigit() also admits '²' (int() refuses it) and int() refuses
        # more than 4300 digits.
        if not (size_text.isascii() and size_text.isdigit() and len(size_text) <= 4) \
                or not MIN_MAZE_SIZE <= int(size_text) <= MAX_MAZE_SIZE:
            raise PuzzleError(
                f"task {shown(task)}: maze size must be an integer {MIN_MAZE_SIZE}..{MAX_MAZE_SIZE}, e.g. 'maze:15'"
            )
        return MazeCodec(int(size_text))
    if name == "arc":
        return ArcCodec()
    raise PuzzleError(f"unknown task {shown(task)}; known tasks: {', '.join(KNOWN_TASKS)}")

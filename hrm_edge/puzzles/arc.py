"""ARC codec: grids <-> official HRM token ids on a 30x30 canvas, and ARC task files.

Token ids (official, ``dataset/build_arc_dataset.py``): 0 = PAD, 1 = EOS,
``colour + 2`` for colours 0..9 (ids 2..11); seq_len 900 (30x30, row-major), vocab 12.
An ``h x w`` grid (h, w <= 30) sits at the top-left corner (translation is a
training-time augmentation, not used here); EOS marks its size: cells
``[h, 0:w]`` when ``h < 30`` and ``[0:h, w]`` when ``w < 30`` (the corner ``[h, w]``
stays PAD); every other cell is PAD.

Accepted text for one grid: JSON (a list of rows, each a list of ints), or rows of
digits one per line (``"012\\n340"``). Rows and columns in messages are 1-based.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hrm_edge.puzzles.base import Codec, PuzzleError, parse_json, shown, strip_comments, where

__all__ = [
    "ARC_MAX_SIZE",
    "EOS_ID",
    "ArcCodec",
    "crop_grid",
    "iter_test_pairs",
    "load_arc_tasks",
    "validate_grid",
]

ARC_MAX_SIZE = 30
EOS_ID = 1
COLOUR_OFFSET = 2

Grid = list[list[int]]


def validate_grid(grid: Any, loc: str = "arc grid") -> np.ndarray:
    """Check an ARC grid (list of equal-length rows of colours 0..9, at most 30x30).

    Returns it as ``int64 [h, w]``; raises PuzzleError naming the problem and where.
    """
    if isinstance(grid, np.ndarray):
        grid = grid.tolist()
    if not isinstance(grid, list) or not grid:
        raise PuzzleError(f"{loc}: expected a non-empty list of rows, got {type(grid).__name__}")
    if len(grid) > ARC_MAX_SIZE:
        raise PuzzleError(f"{loc}: {len(grid)} rows, at most {ARC_MAX_SIZE} allowed")
    width = None
    for r, row in enumerate(grid):
        if not isinstance(row, list) or not row:
            raise PuzzleError(f"{loc}: row {r + 1} is not a non-empty list of colours")
        if width is None:
            width = len(row)
            if width > ARC_MAX_SIZE:
                raise PuzzleError(f"{loc}: {width} columns, at most {ARC_MAX_SIZE} allowed")
        elif len(row) != width:
            raise PuzzleError(f"{loc}: ragged rows: row {r + 1} has {len(row)} cells, row 1 has {width}")
        for c, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v <= 9:
                raise PuzzleError(f"{loc}: colour {shown(v)} at row {r + 1}, column {c + 1} is not an integer 0..9")
    return np.array(grid, dtype=np.int64)


def crop_grid(tokens: np.ndarray) -> np.ndarray:
    """Largest top-left rectangle of colour ids in a 30x30 canvas, as colours ``int64 [h, w]``.

    Same rule as the official evaluation: grow the rectangle row by row, each row
    limiting the width to its leading run of colour ids, and keep the largest area.
    Returns a ``[0, 0]`` array when the top-left cell is not a colour.
    """
    canvas = np.asarray(tokens, dtype=np.int64).reshape(ARC_MAX_SIZE, ARC_MAX_SIZE)
    is_colour = (canvas >= COLOUR_OFFSET) & (canvas < COLOUR_OFFSET + 10)
    best_area, best = 0, (0, 0)
    width = ARC_MAX_SIZE
    for r in range(ARC_MAX_SIZE):
        stops = np.flatnonzero(~is_colour[r, :width])
        if stops.size:
            width = int(stops[0])
        if (r + 1) * width > best_area:
            best_area, best = (r + 1) * width, (r + 1, width)
        if width == 0:
            break
    return canvas[: best[0], : best[1]] - COLOUR_OFFSET


class ArcCodec(Codec):
    """Codec for ARC grids on the official 30x30 canvas (seq_len 900, vocab 12)."""

    task = "arc"
    seq_len = ARC_MAX_SIZE * ARC_MAX_SIZE
    vocab_size = 12
    pad_id = 0

    # ----------------------------------------------------------------- text
    def split(self, text: str) -> list[str]:
        """Grid texts in ``text``.

        JSON input may be one grid, a list of grids, one task (``{"train", "test"}``: its test
        inputs) or a dict of tasks (all their test inputs). Otherwise the text is digit rows,
        blank lines separating grids, ``#`` lines ignored.
        """
        data = _json_or_none(text)
        if data is not None:
            try:
                return [json.dumps(g, separators=(",", ":")) for g in _grids_in(data)]
            except RecursionError:  # a grid nested almost as deep as json.loads allows
                raise PuzzleError("arc input: JSON nested too deeply") from None
        puzzles: list[str] = []
        rows: list[str] = []
        for line in [*strip_comments(text), ""]:
            if line.strip():
                rows.append(line.strip())
            elif rows:
                puzzles.append("\n".join(rows))
                rows = []
        return puzzles

    def parse(self, text: str, *, index: int | None = None) -> np.ndarray:
        """Grid text (JSON or digit rows) -> validated colours ``int64 [h, w]``."""
        loc = where(self.task, index)
        stripped = text.strip()
        if stripped.startswith("["):
            return validate_grid(parse_json(stripped, f"{loc} grid"), loc)
        rows = []
        for r, line in enumerate(stripped.splitlines()):
            cells = line.replace(" ", "").replace(",", "")
            for c, ch in enumerate(cells):
                if not (ch.isascii() and ch.isdigit()):
                    raise PuzzleError(
                        f"{loc}: bad character {ch!r} at row {r + 1}, column {c + 1}; "
                        "expected digits 0-9 or a JSON list of rows"
                    )
            rows.append([int(ch) for ch in cells])
        return validate_grid(rows, loc)

    def encode(self, text: str, *, index: int | None = None) -> np.ndarray:
        """Grid text -> ids ``int64 [900]``. Raises PuzzleError."""
        return self.encode_grid(self.parse(text, index=index).tolist(), index=index)

    def encode_grid(self, grid: Grid, *, index: int | None = None) -> np.ndarray:
        """Grid (rows of colours 0..9, at most 30x30) -> ids ``int64 [900]`` with EOS markers."""
        arr = validate_grid(grid, where(self.task, index))
        h, w = arr.shape
        canvas = np.zeros((ARC_MAX_SIZE, ARC_MAX_SIZE), dtype=np.int64)
        canvas[:h, :w] = arr + COLOUR_OFFSET
        if h < ARC_MAX_SIZE:
            canvas[h, :w] = EOS_ID
        if w < ARC_MAX_SIZE:
            canvas[:h, w] = EOS_ID
        return canvas.reshape(-1)

    def decode_grid(self, tokens: np.ndarray) -> Grid:
        """Ids ``[900]`` -> the grid, cropped like the official evaluation (:func:`crop_grid`).

        Robust to garbage: returns the largest top-left rectangle of colours; raises
        PuzzleError if there is none (top-left cell not a colour) or the ids are malformed.
        """
        grid = crop_grid(self.as_tokens(tokens))
        if grid.size == 0:
            raise PuzzleError("arc tokens: no grid, the top-left cell is not a colour")
        return grid.tolist()

    def decode(self, tokens: np.ndarray) -> str:
        """Ids ``[900]`` -> compact JSON of the (cropped) grid, e.g. ``[[0,1],[2,3]]``.

        A prediction without any grid decodes to ``[]`` instead of raising (ids outside the
        vocabulary or a wrong size still raise PuzzleError).
        """
        grid = crop_grid(self.as_tokens(tokens))
        return json.dumps(grid.tolist() if grid.size else [], separators=(",", ":"))

    def format_grid(self, tokens: np.ndarray) -> str:
        """Rows of colour digits separated by spaces, one row per line (``(no grid)`` if none)."""
        grid = crop_grid(self.as_tokens(tokens))
        if grid.size == 0:
            return "(no grid: the top-left cell is not a colour)"
        return "\n".join(" ".join(str(v) for v in row) for row in grid.tolist())

    # --------------------------------------------------------------- checks
    def is_well_formed(self, prediction: np.ndarray) -> bool:
        """True iff ``prediction`` is exactly what :meth:`encode_grid` makes of some grid."""
        flat = self.try_tokens(prediction)
        if flat is None:
            return False
        grid = crop_grid(flat)
        return grid.size > 0 and bool(np.array_equal(self.encode_grid(grid.tolist()), flat))

    def check(self, inputs: np.ndarray, prediction: np.ndarray) -> bool:
        """ARC answers are not implied by the input: True iff the prediction is a well-formed grid.

        (``inputs`` is validated, not compared.) Use :meth:`matches` against a known answer.
        """
        self.as_tokens(inputs, "inputs")
        return self.is_well_formed(prediction)

    def matches(self, prediction: np.ndarray, expected_grid: Grid) -> bool:
        """True iff ``prediction`` (ids ``[900]``) decodes (cropped) to exactly ``expected_grid``."""
        flat = self.try_tokens(prediction)
        if flat is None:
            return False
        grid = crop_grid(flat)
        expected = np.asarray(expected_grid)
        return grid.shape == expected.shape and bool(np.array_equal(grid, expected))


def _json_or_none(text: str) -> Any:
    """The parsed JSON of ``text``, or None when it is not JSON (then it is digit rows)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise PuzzleError("arc input: JSON nested too deeply") from None
    except ValueError:
        return None


def _test_inputs(task: dict[str, Any], what: str) -> list[Any]:
    """The input grids of a task's "test" pairs (unvalidated); PuzzleError when they are not there."""
    pairs = task["test"]
    if not isinstance(pairs, list):
        raise PuzzleError(f"{what}: 'test' must be a list of pairs, got {type(pairs).__name__}")
    for k, pair in enumerate(pairs, start=1):
        if not isinstance(pair, dict) or "input" not in pair:
            raise PuzzleError(f"{what}: test pair {k} is not an object with an 'input' grid")
    return [pair["input"] for pair in pairs]


def _grids_in(data: Any, nested: bool = False) -> list[Any]:
    """Grids found in parsed JSON: a grid, a list of grids, a task or a dict of tasks (`nested`:
    one of those tasks, which must then be a task or a grid, never another dict of tasks)."""
    if isinstance(data, dict):
        if "test" in data:
            return _test_inputs(data, "arc task")
        if nested:
            raise PuzzleError("arc JSON: a task in a dict of tasks has no 'test' list")
        return [g for task in data.values() for g in _grids_in(task, nested=True)]
    is_list_of_lists = isinstance(data, list) and bool(data) and all(isinstance(x, list) for x in data)
    if is_list_of_lists and all(isinstance(y, list) for x in data for y in x):
        return list(data)  # a list of grids
    return [data]


def load_arc_tasks(path: str | Path) -> dict[str, dict]:
    """Load ARC tasks: a JSON file ``{task_id: {"train": [...], "test": [...]}}``, a single-task
    file (named by its stem), or a directory of single-task ``*.json`` files.

    Every grid is validated (PuzzleError names the task, split, pair and side).
    """
    p = Path(path)
    if p.is_dir():
        tasks = {f.stem: _read_json(f) for f in sorted(p.glob("*.json"))}
    else:
        data = _read_json(p)
        tasks = {p.stem: data} if isinstance(data, dict) and "train" in data else data
    if not isinstance(tasks, dict):
        raise PuzzleError(f"{p}: expected a JSON object of ARC tasks")
    for task_id, task in tasks.items():
        if not isinstance(task, dict) or not isinstance(task.get("test"), list):
            raise PuzzleError(f"{p}: task {task_id!r} has no 'test' list")
        for split in ("train", "test"):
            pairs = task.get(split, [])
            if not isinstance(pairs, list):
                raise PuzzleError(f"{p}: task {task_id!r} {split!r} is not a list of pairs")
            for k, pair in enumerate(pairs, start=1):
                loc = f"arc task {task_id} {split} pair {k}"
                if not isinstance(pair, dict) or "input" not in pair:
                    raise PuzzleError(f"{p}: {loc} is not an object with an 'input' grid")
                for side in ("input", "output"):
                    if side in pair:
                        validate_grid(pair[side], f"{loc} {side}")
    return tasks


def _read_json(path: Path) -> Any:
    """A JSON file's content; unreadable files and bad JSON are one PuzzleError line."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise PuzzleError(f"{path}: cannot read ({type(exc).__name__})") from None
    return parse_json(text, str(path))


def iter_test_pairs(tasks: dict[str, dict]) -> Iterator[tuple[str, int, Grid, Grid | None]]:
    """Yield ``(task_id, test_index, input_grid, output_grid or None)`` for every test pair,
    tasks in sorted id order, test index 0-based."""
    for task_id in sorted(tasks):
        for k, pair in enumerate(tasks[task_id]["test"]):
            yield task_id, k, pair["input"], pair.get("output")

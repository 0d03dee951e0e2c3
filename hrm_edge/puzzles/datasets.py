"""Calibration / validation puzzle sets on disk: file formats, writer helpers and the loader.

A set is a directory holding ``MANIFEST.json`` and, per split (``calib``, ``val``), a data
file and a ``<split>.meta.jsonl`` file (one JSON object per puzzle, same order). The
manifest's ``task`` field (a :func:`~hrm_edge.puzzles.base.get_codec` name) picks the
data format, and its ``files`` map gives the sha256 of every file, checked on load:

- sudoku / sudoku6 (``<split>.txt``): ``#`` comment lines, then one puzzle per line,
  ``<puzzle> <solution>`` with ``n*n`` chars each (``.`` = blank); the solution may be absent.
- maze / maze:<n> (``<split>.txt``): each maze is ``n`` lines ``<input row>|<label row>``
  (``2n+1`` chars, ``|`` at index ``n``), mazes separated by empty lines; other lines starting
  with ``#`` are comments.
- arc (``<split>.json``): a JSON list of ``{"id", "task_id", "test_index", "input", "output"}``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hrm_edge.files import sha256_file
from hrm_edge.puzzles.arc import ArcCodec
from hrm_edge.puzzles.base import Codec, PuzzleError
from hrm_edge.puzzles.codecs import get_codec
from hrm_edge.puzzles.maze import MazeCodec
from hrm_edge.puzzles.sudoku import SudokuCodec

__all__ = [
    "CALIB_DATA_ENV",
    "MANIFEST_NAME",
    "PuzzleSet",
    "calib_data_dir",
    "calib_data_root",
    "format_maze_pair",
    "format_sudoku_pair",
    "load_puzzle_set",
    "missing_set_message",
    "sha256_file",
]

MANIFEST_NAME = "MANIFEST.json"

CALIB_DATA = "calib_data"  # the folder of shipped sets at the root of an hrm-edge source checkout
CALIB_DATA_ENV = "HRM_EDGE_CALIB_DATA"  # names a folder laid out like calib_data/


def calib_data_root(cwd: Path | None = None) -> Path | None:
    """The folder holding the shipped sets, or None when there is none to find.

    The sets are not package data, and never located from this module's own path: they are
    2.8 MB (every device bundle would carry them inside its runtime wheel, which only solves
    puzzles it is given) under their own licences (calib_data/LICENSE-*), and an installed
    package sits in site-packages, far from any checkout. So a set is always a path the user
    can see. In order: ``$HRM_EDGE_CALIB_DATA`` when set; else the nearest ``calib_data/`` in
    ``cwd`` (default: the current directory) or one of its parents, which finds the checkout's
    own from anywhere inside it (``make demo``, the tests); else None. Commands that take a set
    accept ``--data`` (or ``--calib-data``, ``--golden-data``, ``--val``) before all of these.
    """
    env = os.environ.get(CALIB_DATA_ENV)
    if env:
        return Path(env)
    here = (cwd or Path.cwd()).resolve()
    return next((d / CALIB_DATA for d in (here, *here.parents) if (d / CALIB_DATA).is_dir()), None)


def calib_data_dir(task: str) -> Path:
    """The shipped set of a task: <calib_data_root()>/<task>, with the ':' of "maze:15" dropped
    (calib_data/maze15). Without a root this is ``calib_data/<task>`` relative to the current
    directory, which does not exist: callers check ``exists()`` and name ``--data`` (see
    ``missing_set_message``)."""
    return (calib_data_root() or Path(CALIB_DATA)) / task.replace(":", "")


def missing_set_message(task: str) -> str:
    """The one-line error for a task whose shipped set is not found."""
    return (f"no puzzle set for task {task!r} at {calib_data_dir(task)}: pass --data, set {CALIB_DATA_ENV} "
            f"to a folder laid out like hrm-edge's {CALIB_DATA}/, or run inside an hrm-edge checkout")


@dataclass
class PuzzleSet:
    """One split of a puzzle set, as token ids ready for the model.

    Attributes:
        task: codec name (``"sudoku"``, ``"sudoku6"``, ``"maze"``, ``"maze:15"``, ``"arc"``).
        split: split name (``"calib"`` or ``"val"``).
        inputs: ``int64 [N, seq_len]`` input token ids.
        labels: ``int64 [N, seq_len]`` answer token ids, or None when the file has no answers.
        puzzle_ids: ``int64 [N]`` puzzle identifiers for the model. 0 (the official blank
            identifier) everywhere: Sudoku and maze models use only that; ARC models need each
            task's identifier from the checkpoint's ``identifiers.json``, looked up by ``names``.
        difficulty: ``int64 [N]``: Sudoku rater level 0..3, maze shortest-path steps, ARC -1.
        names: per-puzzle name (e.g. ``"magictour_top1465:17"``, ARC ``"<task_id>/<test_index>"``).
        meta: per-puzzle metadata dicts from ``<split>.meta.jsonl``.
    """

    task: str
    split: str
    inputs: np.ndarray
    labels: np.ndarray | None
    puzzle_ids: np.ndarray
    difficulty: np.ndarray
    names: list[str] = field(default_factory=list)
    meta: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def codec(self) -> Codec:
        """The codec of this set's task."""
        return get_codec(self.task)


def format_sudoku_pair(codec: SudokuCodec, puzzle: np.ndarray, solution: np.ndarray | None) -> str:
    """One data line ``<puzzle> <solution>`` from token ids ``[n*n]`` (solution optional)."""
    text = codec.decode(puzzle)
    return text if solution is None else f"{text} {codec.decode(solution)}"


def format_maze_pair(codec: MazeCodec, maze: np.ndarray, label: np.ndarray) -> str:
    """``size`` lines ``<input row>|<label row>`` from token ids ``[size*size]`` (no trailing newline)."""
    left = codec.decode(maze).split("\n")
    right = codec.decode(label).split("\n")
    return "\n".join(f"{a}|{b}" for a, b in zip(left, right, strict=True))


# ---------------------------------------------------------------- readers
def _read_sudoku(codec: SudokuCodec, path: Path) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    inputs: list[np.ndarray] = []
    labels: list[np.ndarray | None] = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split()
        if len(fields) > 2:
            raise PuzzleError(f"{path.name} line {lineno}: expected '<puzzle> <solution>', got {len(fields)} fields")
        idx = len(inputs) + 1
        inputs.append(codec.encode(fields[0], index=idx))
        labels.append(codec.encode(fields[1], index=idx) if len(fields) == 2 else None)
    return inputs, labels


def _read_maze(codec: MazeCodec, path: Path) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    inputs: list[np.ndarray] = []
    labels: list[np.ndarray | None] = []
    left: list[str] = []
    right: list[str] = []

    def flush() -> None:
        if left:
            idx = len(inputs) + 1
            inputs.append(codec.encode("\n".join(left), index=idx))
            labels.append(codec.encode_label("\n".join(right), index=idx))
            left.clear()
            right.clear()

    n = codec.size
    for line in path.read_text().split("\n"):
        is_data = len(line) == 2 * n + 1 and line[n] == "|"
        if line.startswith("#") and not is_data:
            continue
        if not line:
            flush()
            continue
        a, sep, b = line.partition("|")
        if not sep:
            raise PuzzleError(f"{path.name}: maze line without '|' separator: {line[:40]!r}")
        left.append(a)
        right.append(b)
    flush()
    return inputs, labels


def _read_arc(codec: ArcCodec, path: Path) -> tuple[list[np.ndarray], list[np.ndarray | None], list[str]]:
    entries = json.loads(path.read_text())
    inputs: list[np.ndarray] = []
    labels: list[np.ndarray | None] = []
    names: list[str] = []
    for k, entry in enumerate(entries, start=1):
        inputs.append(codec.encode_grid(entry["input"], index=k))
        out = entry.get("output")
        labels.append(None if out is None else codec.encode_grid(out, index=k))
        names.append(str(entry.get("id", k)))
    return inputs, labels, names


def _verify(directory: Path, manifest: dict[str, Any], name: str) -> Path:
    path = directory / name
    want = manifest.get("files", {}).get(name)
    if want is None:
        raise PuzzleError(f"{directory / MANIFEST_NAME}: no sha256 listed for {name}")
    if not path.is_file():
        raise PuzzleError(f"{path}: file listed in the manifest is missing")
    got = sha256_file(path)
    if got != want:
        raise PuzzleError(f"{path}: sha256 mismatch, manifest says {want[:16]}..., file is {got[:16]}...")
    return path


def load_puzzle_set(path: str | Path, split: str | None = None) -> PuzzleSet:
    """Load one split of a puzzle set, verifying the sha256 of its files against the manifest.

    Args:
        path: the set directory (with ``MANIFEST.json``) or one of its data files
            (e.g. ``calib_data/sudoku/val.txt``; the split is then the file's stem).
        split: split name when ``path`` is a directory (default ``"calib"``).

    Raises:
        PuzzleError: missing manifest or file, sha256 mismatch, unknown split, bad puzzle.
    """
    p = Path(path)
    if p.is_dir():
        directory, split = p, split or "calib"
    else:
        directory, split = p.parent, split or p.name.split(".")[0]
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise PuzzleError(f"{directory}: no {MANIFEST_NAME}")
    manifest = json.loads(manifest_path.read_text())
    splits = manifest.get("splits", {})
    if split not in splits:
        raise PuzzleError(f"{manifest_path}: no split {split!r}; splits: {', '.join(sorted(splits))}")
    entry = splits[split]
    codec = get_codec(manifest["task"])
    data_path = _verify(directory, manifest, entry["file"])
    meta_path = _verify(directory, manifest, entry["meta"])
    meta = [json.loads(line) for line in meta_path.read_text().splitlines() if line.strip()]

    if isinstance(codec, SudokuCodec):
        inputs, labels = _read_sudoku(codec, data_path)
        names = [str(m.get("id", i)) for i, m in enumerate(meta)]
        difficulty = [int(m.get("level", -1)) for m in meta]
    elif isinstance(codec, MazeCodec):
        inputs, labels = _read_maze(codec, data_path)
        names = [str(m.get("id", i)) for i, m in enumerate(meta)]
        difficulty = [int(m.get("path_len", -1)) for m in meta]
    else:
        assert isinstance(codec, ArcCodec)
        inputs, labels, names = _read_arc(codec, data_path)
        difficulty = [-1] * len(inputs)

    count = len(inputs)
    if len(meta) != count or entry.get("count", count) != count:
        raise PuzzleError(
            f"{data_path}: {count} puzzles, but {len(meta)} metadata lines and manifest count {entry.get('count')}"
        )
    has_labels = count > 0 and all(label is not None for label in labels)
    return PuzzleSet(
        task=codec.task,
        split=split,
        inputs=np.stack(inputs) if count else np.zeros((0, codec.seq_len), np.int64),
        labels=np.stack(labels) if has_labels else None,  # type: ignore[arg-type]
        puzzle_ids=np.zeros(count, dtype=np.int64),
        difficulty=np.array(difficulty, dtype=np.int64),
        names=names,
        meta=meta,
    )

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

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hrm_edge.files import sha256_file
from hrm_edge.puzzles.arc import ArcCodec
from hrm_edge.puzzles.base import Codec, PuzzleError, parse_json, shown
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
def _read_text(path: Path) -> str:
    """A set file's text; unreadable or non-UTF-8 files are one PuzzleError line."""
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise PuzzleError(f"{path}: cannot read ({type(exc).__name__})") from None


def _read_sudoku(codec: SudokuCodec, path: Path) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    inputs: list[np.ndarray] = []
    labels: list[np.ndarray | None] = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
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
    for line in _read_text(path).split("\n"):
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
    entries = parse_json(_read_text(path), str(path))
    if not isinstance(entries, list):
        raise PuzzleError(f"{path}: expected a JSON list of puzzles, got {type(entries).__name__}")
    inputs: list[np.ndarray] = []
    labels: list[np.ndarray | None] = []
    names: list[str] = []
    for k, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or "input" not in entry:
            raise PuzzleError(f"{path}: puzzle {k} is not an object with an 'input' grid")
        inputs.append(codec.encode_grid(entry["input"], index=k))
        out = entry.get("output")
        labels.append(None if out is None else codec.encode_grid(out, index=k))
        names.append(str(entry.get("id", k)))
    return inputs, labels, names


def _file_name(manifest_path: Path, entry: dict[str, Any], key: str) -> str:
    """A split's data or meta file name: a plain name inside the set's directory, never a path."""
    name = entry.get(key)
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name or "\\" in name:
        raise PuzzleError(f"{manifest_path}: split {key!r} must name a file in the set's directory, got {shown(name)}")
    return name


def _meta_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a ``<split>.meta.jsonl`` file, one per non-blank line."""
    meta = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if line.strip():
            item = parse_json(line, f"{path.name} line {lineno}")
            if not isinstance(item, dict):
                raise PuzzleError(f"{path.name} line {lineno}: expected a JSON object, got {type(item).__name__}")
            meta.append(item)
    return meta


def _meta_ints(path: Path, meta: list[dict[str, Any]], key: str) -> list[int]:
    """Each puzzle's integer ``key`` (-1 when absent); anything but an integer is a PuzzleError."""
    values = []
    for lineno, item in enumerate(meta, start=1):
        value = item.get(key, -1)
        if not isinstance(value, int) or isinstance(value, bool) or not -1 <= value < 2**62:
            raise PuzzleError(f"{path.name} entry {lineno}: {key!r} must be an integer >= -1, got {shown(value)}")
        values.append(value)
    return values


def _verify(directory: Path, manifest: dict[str, Any], name: str) -> Path:
    path = directory / name
    files = manifest.get("files", {})
    want = files.get(name) if isinstance(files, dict) else None
    if want is None:
        raise PuzzleError(f"{directory / MANIFEST_NAME}: no sha256 listed for {name}")
    if not isinstance(want, str):
        raise PuzzleError(f"{directory / MANIFEST_NAME}: the sha256 of {name} is not a string")
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
    manifest = parse_json(_read_text(manifest_path), str(manifest_path))
    if not isinstance(manifest, dict):
        raise PuzzleError(f"{manifest_path}: expected a JSON object, got {type(manifest).__name__}")
    splits = manifest.get("splits", {})
    if not isinstance(splits, dict) or not all(isinstance(k, str) for k in splits):
        raise PuzzleError(f"{manifest_path}: 'splits' must be an object of split names")
    if split not in splits:
        raise PuzzleError(f"{manifest_path}: no split {split!r}; splits: {', '.join(sorted(splits))}")
    entry = splits[split]
    if not isinstance(entry, dict):
        raise PuzzleError(f"{manifest_path}: split {split!r} must be an object with 'file' and 'meta'")
    if not isinstance(manifest.get("task"), str):
        raise PuzzleError(f"{manifest_path}: 'task' must be a task name such as 'sudoku', got "
                          f"{shown(manifest.get('task'))}")
    codec = get_codec(manifest["task"])
    data_path = _verify(directory, manifest, _file_name(manifest_path, entry, "file"))
    meta_path = _verify(directory, manifest, _file_name(manifest_path, entry, "meta"))
    meta = _meta_lines(meta_path)

    if isinstance(codec, SudokuCodec):
        inputs, labels = _read_sudoku(codec, data_path)
        names = [str(m.get("id", i)) for i, m in enumerate(meta)]
        difficulty = _meta_ints(meta_path, meta, "level")
    elif isinstance(codec, MazeCodec):
        inputs, labels = _read_maze(codec, data_path)
        names = [str(m.get("id", i)) for i, m in enumerate(meta)]
        difficulty = _meta_ints(meta_path, meta, "path_len")
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

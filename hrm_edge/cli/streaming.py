"""What `hrm-edge solve` streams: puzzles read and encoded a batch at a time, segment counting for
progress, and the progress bars on stderr. Nothing here holds more than one batch of puzzles."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from hrm_edge.errors import HrmEdgeError
from hrm_edge.puzzles.base import Codec, PuzzleError
from hrm_edge.puzzles.stream import iter_puzzle_texts, read_lines

SEGMENT_BAR_STEPS = 64  # with a larger --max-steps, a second bar counts the segments of the current batch


def open_puzzle_file(file: str) -> tuple[BinaryIO, str]:
    """(binary stream, name for messages) of --file PATH, or of stdin for "-"; HrmEdgeError when it
    cannot be read. Opened before any model is loaded, so a wrong path fails at once."""
    if file == "-":
        if sys.stdin is None or sys.stdin.closed:
            raise HrmEdgeError("--file -: standard input is closed")
        return sys.stdin.buffer, "stdin"
    if Path(file).is_dir():
        raise HrmEdgeError(f"--file {file}: is a directory, not a puzzle file")
    try:
        return open(file, "rb"), file  # the caller closes it
    except OSError as exc:
        raise HrmEdgeError(f"--file {file}: {exc.strerror or exc}") from None


def puzzle_sources(codec: Codec, puzzles: tuple[str, ...], opened: tuple[BinaryIO, str] | None
                   ) -> Iterator[tuple[str, str]]:
    """(where, text) of each puzzle: the --puzzle arguments ("--puzzle K"), then those of the opened
    file or stdin ("NAME line N"), read lazily."""
    for k, arg in enumerate(puzzles, start=1):
        for text in codec.split(arg):
            yield f"--puzzle {k}", text
    if opened is None:
        return
    stream, name = opened
    try:
        for line, text in iter_puzzle_texts(codec, read_lines(stream, name)):
            yield f"{name} line {line}", text
    except OSError as exc:
        raise HrmEdgeError(f"{name}: cannot read: {exc.strerror or exc}") from None


def encoded_batches(codec: Codec, sources: Iterable[tuple[str, str]], size: int) -> Iterator[np.ndarray]:
    """Token ids `int64 [n <= size, seq_len]` of consecutive puzzles. A bad puzzle (or unreadable
    input) ends the stream: the puzzles before it are yielded first, then its error is raised with
    the line it starts on."""
    rows: list[np.ndarray] = []
    error: Exception | None = None
    try:
        for index, (where, text) in enumerate(sources, start=1):
            try:
                rows.append(codec.encode(text, index=index))
            except PuzzleError as exc:
                raise PuzzleError(f"{where}: {exc}") from None
            if len(rows) == size:
                yield np.stack(rows)
                rows = []
    except (PuzzleError, HrmEdgeError) as exc:
        error = exc
    if rows:
        yield np.stack(rows)
    if error is not None:
        raise error


class SolveProgress:
    """Progress on stderr: puzzles solved (rate, no total: the input is streamed) and, when
    `max_steps` > SEGMENT_BAR_STEPS, the segments of the current batch. tqdm bars; plain lines every
    2 s where tqdm is not installed (the torch-free install). Disabled: every method does nothing."""

    def __init__(self, enabled: bool, max_steps: int) -> None:
        self.enabled = enabled
        self._puzzles = self._segments = None
        self._count, self._last_line = 0, time.monotonic()
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self._puzzles = tqdm(desc="solved", unit=" puzzles", file=sys.stderr, dynamic_ncols=True)
        if max_steps > SEGMENT_BAR_STEPS:
            self._segments = tqdm(desc="segments", total=max_steps, unit=" seg", file=sys.stderr, position=1,
                                  leave=False, dynamic_ncols=True)

    def new_batch(self) -> None:
        if self._segments is not None:
            self._segments.reset()

    def segment(self) -> None:
        if self._segments is not None:
            self._segments.update()

    def solved(self, n: int) -> None:
        self._count += n
        if self._puzzles is not None:
            self._puzzles.update(n)
        elif self.enabled and time.monotonic() - self._last_line >= 2:
            self._last_line = time.monotonic()
            print(f"solved {self._count} puzzles", file=sys.stderr, flush=True)

    def close(self) -> None:
        for bar in (self._segments, self._puzzles):
            if bar is not None:
                bar.close()


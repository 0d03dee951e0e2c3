"""Puzzle texts read from a file or stdin one at a time, each with the line it starts on.

`iter_puzzle_texts` gives exactly the pieces of `codec.split(whole_text)` while holding only the
lines of the puzzle being read: it cuts the text after a line when the codec's split of the lines
so far, followed by the next line, equals their two splits side by side (then no grid continues
across the cut). A JSON document (text whose first line starts with `[` or `{`, e.g. ARC tasks) is
read whole, since it parses only whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import BinaryIO

from hrm_edge.puzzles.base import Codec, PuzzleError

MAX_LINE_BYTES = 64 << 20  # a longer line is not a puzzle file: refused before it fills memory


def read_lines(stream: BinaryIO, name: str) -> Iterator[str]:
    """Decoded lines of a binary stream, without line endings; PuzzleError naming `name` and the
    line for text that is not UTF-8 or a line over MAX_LINE_BYTES."""
    number = 0
    while raw := stream.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(raw) > MAX_LINE_BYTES:
            raise PuzzleError(f"{name} line {number}: longer than {MAX_LINE_BYTES >> 20} MiB; not a puzzle file")
        try:
            yield raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise PuzzleError(f"{name} line {number}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                              f"{exc.start + 1}); is it a puzzle file?") from None


def _joined(lines: list[tuple[int, str]]) -> str:
    return "\n".join(text for _, text in lines)


def iter_puzzle_texts(codec: Codec, lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    """(1-based line number where the puzzle starts, puzzle text) for each puzzle in `lines`.

    The texts are those of `codec.split` on the whole text, unvalidated. Held in memory: the lines of
    one puzzle (at most 2 * seq_len + 2 lines; a longer run is handed out as one piece, which
    `codec.encode` then refuses), or a whole JSON document."""
    pending: list[tuple[int, str]] = []  # lines since the last safe cut; the first one holds a puzzle part
    pieces: list[str] = []  # codec.split of the pending lines
    quiet_run = blank_kept = False  # in a run of lines that hold nothing alone; whether it kept a blank line
    numbered = enumerate(lines, start=1)
    for number, line in numbered:
        if not pending and line.lstrip().startswith(("[", "{")):
            for text in codec.split("\n".join([line, *(rest for _, rest in numbered)])):
                yield number, text
            return
        alone = codec.split(line)
        if not alone:  # a comment, separator or blank line: it ends a grid or is ignored
            if pending and not quiet_run:
                pending.append((number, line))
                quiet_run, blank_kept = True, not line.strip()
            elif pending and not blank_kept and not line.strip():
                pending.append((number, line))
                blank_kept = True
            continue
        quiet_run = False
        if pending:
            together = codec.split(_joined([*pending, (number, line)]))
            if together == pieces + alone or len(pending) > 2 * codec.seq_len + 2:
                for text in pieces:
                    yield pending[0][0], text
                pending, pieces = [], []
            else:
                pending.append((number, line))
                pieces = together
                continue
        pending, pieces = [(number, line)], alone
    for text in pieces:
        yield pending[0][0], text

"""Common puzzle interface: the error type, the abstract codec and the task registry.

A *codec* turns the text of one puzzle into the exact token ids an official HRM
checkpoint reads (a 1-D ``int64`` array of ``seq_len`` ids), turns token ids back
into text, and checks a predicted answer. Everything in ``hrm_edge.puzzles`` uses
only numpy and the standard library, so it runs on devices without torch.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Iterable
from typing import Any

import numpy as np

from hrm_edge.errors import HrmEdgeError

__all__ = ["Codec", "PuzzleError"]


class PuzzleError(HrmEdgeError, ValueError):
    """A puzzle, a puzzle file or a task name (or a token array claiming to be a puzzle) is malformed.

    The message is always a single line that names what is wrong and where,
    e.g. ``"sudoku puzzle 3: expected 81 cells, got 80"``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for naming user input in a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_json(text: str, what: str) -> Any:
    """``json.loads`` whose every failure is one PuzzleError line naming ``what``: bad syntax, an
    integer of more than 4300 digits (ValueError), nesting deeper than the interpreter's stack."""
    try:
        return json.loads(text)
    except RecursionError:
        raise PuzzleError(f"{what}: JSON nested too deeply") from None
    except ValueError as exc:
        raise PuzzleError(f"{what}: invalid JSON ({exc})") from None


def where(task: str, index: int | None) -> str:
    """Message prefix ``"<task> puzzle <index>"`` (``index`` is 1-based, may be None)."""
    return f"{task} puzzle" if index is None else f"{task} puzzle {index}"


def strip_comments(text: str) -> list[str]:
    """Lines of ``text`` without line endings, dropping lines whose first non-blank char is ``#``."""
    return [line for line in text.splitlines() if not line.lstrip().startswith("#")]


class Codec(abc.ABC):
    """Text <-> token-id conversion and answer checking for one task.

    Attributes:
        task: task name as accepted by :func:`hrm_edge.puzzles.codecs.get_codec` (e.g. ``"sudoku"``).
        seq_len: number of token positions of one puzzle.
        vocab_size: number of token ids (ids are ``0 .. vocab_size-1``).
        pad_id: the padding id (always 0 in the official datasets).
    """

    task: str
    seq_len: int
    vocab_size: int
    pad_id: int = 0

    @abc.abstractmethod
    def split(self, text: str) -> list[str]:
        """Split a file's text (or a CLI string) into the texts of individual puzzles.

        Comment lines are ignored and blank lines separate multi-line grids; the
        pieces are returned unvalidated (:meth:`encode` validates them).
        """

    @abc.abstractmethod
    def encode(self, text: str, *, index: int | None = None) -> np.ndarray:
        """Validate one puzzle text and return its token ids, ``int64`` shape ``[seq_len]``.

        ``index`` (1-based) only decorates error messages. Raises :class:`PuzzleError`.
        """

    @abc.abstractmethod
    def decode(self, tokens: np.ndarray) -> str:
        """Token ids ``[seq_len]`` -> canonical compact text; inverse of :meth:`encode`."""

    @abc.abstractmethod
    def format_grid(self, tokens: np.ndarray) -> str:
        """Token ids ``[seq_len]`` -> human-readable multi-line grid (no trailing newline)."""

    @abc.abstractmethod
    def check(self, inputs: np.ndarray, prediction: np.ndarray) -> bool:
        """Whether ``prediction`` (ids ``[seq_len]``) validly answers ``inputs`` (ids ``[seq_len]``).

        Never raises because of the prediction: garbage (wrong shape, dtype or ids)
        gives ``False``.
        """

    def encode_many(self, texts: Iterable[str]) -> np.ndarray:
        """Encode several puzzle texts; returns ``int64 [N, seq_len]``. Errors name the 1-based index."""
        rows = [self.encode(t, index=i) for i, t in enumerate(texts, start=1)]
        if not rows:
            return np.zeros((0, self.seq_len), dtype=np.int64)
        return np.stack(rows)

    def as_tokens(self, tokens: np.ndarray, what: str = "tokens") -> np.ndarray:
        """Validate an id array (any integer dtype, any shape with ``seq_len`` elements) -> int64 [seq_len].

        Raises :class:`PuzzleError` on a wrong size, a non-integer dtype or ids outside the vocabulary.
        """
        arr = np.asarray(tokens)
        if arr.size != self.seq_len:
            raise PuzzleError(f"{self.task} {what}: expected {self.seq_len} token ids, got {arr.size}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise PuzzleError(f"{self.task} {what}: expected integer token ids, got dtype {arr.dtype}")
        flat = arr.reshape(-1).astype(np.int64)
        bad = np.flatnonzero((flat < 0) | (flat >= self.vocab_size))
        if bad.size:
            i = int(bad[0])
            raise PuzzleError(
                f"{self.task} {what}: token id {int(flat[i])} at position {i} is outside 0..{self.vocab_size - 1}"
            )
        return flat

    def try_tokens(self, tokens: np.ndarray) -> np.ndarray | None:
        """Like :meth:`as_tokens` but returns None instead of raising (for predictions)."""
        try:
            return self.as_tokens(tokens)
        except (PuzzleError, TypeError, ValueError):
            return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task!r}, seq_len={self.seq_len}, vocab_size={self.vocab_size})"

"""The puzzles package: torch-free import and the task registry."""

from __future__ import annotations

import subprocess
import sys

import pytest

import hrm_edge.puzzles as puzzles
from hrm_edge.puzzles import Codec, PuzzleError, get_codec


def test_imports_without_torch() -> None:
    code = "import sys; sys.modules['torch'] = None; import hrm_edge.puzzles, hrm_edge.puzzles.datasets"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_public_names_exist() -> None:
    missing = [name for name in puzzles.__all__ if not hasattr(puzzles, name)]
    assert missing == []


@pytest.mark.parametrize(
    ("task", "seq_len", "vocab"),
    [("sudoku", 81, 11), ("sudoku6", 36, 8), ("maze", 900, 6), ("maze:15", 225, 6), ("arc", 900, 12)],
)
def test_registry_sizes(task: str, seq_len: int, vocab: int) -> None:
    codec = get_codec(task)
    assert isinstance(codec, Codec)
    assert (codec.task, codec.seq_len, codec.vocab_size, codec.pad_id) == (task, seq_len, vocab, 0)


def test_puzzle_error_is_a_value_error_with_one_line() -> None:
    err = PuzzleError("a\nb   c")
    assert isinstance(err, ValueError) and str(err) == "a b c"

"""Every codec's text parser and `get_codec`: arbitrary input either gives valid token ids that
round-trip or one PuzzleError line, never another exception."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hrm_edge.puzzles import Codec, get_codec
from tests.fuzz.strategies import DEEP_JSON, parses_or_refuses

TASKS = ("sudoku", "sudoku6", "maze:5", "maze", "arc")

# Text made of the characters the parsers care about, so that many inputs get past the first check.
puzzle_alphabet = st.sampled_from([*"0123456789.#SGo |-+,[]{}\":\n\r\t", "test", "input", "\u00b2", "\u0663"])
puzzle_text = st.one_of(
    st.text(max_size=400),
    st.lists(puzzle_alphabet, max_size=1_000).map("".join),
    # 9x9 / 6x6 cell strings: blanks and digits, some with conflicts, some valid.
    st.lists(st.sampled_from(list("123456789..")), min_size=81, max_size=81).map("".join),
    st.lists(st.sampled_from(list("123456..")), min_size=36, max_size=36).map("".join),
    # maze rows: 5 lines of 5 characters from the charset.
    st.lists(st.lists(st.sampled_from(list("# SGo")), min_size=5, max_size=5).map("".join),
             min_size=5, max_size=5).map("\n".join),
)


def assert_valid_tokens(codec: Codec, tokens: np.ndarray) -> None:
    assert tokens.dtype == np.int64 and tokens.shape == (codec.seq_len,)
    assert tokens.min() >= 0 and tokens.max() < codec.vocab_size


@pytest.mark.parametrize("task", TASKS)
@given(text=puzzle_text)
@example(text="")
@example(text="1" * 81)
def test_any_text_splits_and_encodes_to_valid_ids_or_one_puzzle_error(task, text):
    codec = get_codec(task)
    pieces = parses_or_refuses(codec.split, text)
    for i, piece in enumerate((pieces or [])[:5], start=1):
        tokens = parses_or_refuses(codec.encode, piece, index=i)
        if tokens is not None:
            assert_valid_tokens(codec, tokens)
            # An accepted puzzle decodes to text that encodes to the same ids.
            np.testing.assert_array_equal(codec.encode(codec.decode(tokens)), tokens)


@pytest.mark.parametrize("text", DEEP_JSON)
def test_arc_text_nested_deeper_than_the_stack_is_one_puzzle_error(text):
    codec = get_codec("arc")
    assert parses_or_refuses(codec.encode, text) is None
    pieces = parses_or_refuses(codec.split, text) or []
    assert all(parses_or_refuses(codec.encode, p) is None for p in pieces)


@given(task=st.one_of(st.text(max_size=20), st.text(max_size=8).map(lambda s: "maze:" + s),
                      st.integers().map(lambda n: f"maze:{n}"),
                      st.sampled_from(["maze:" + "9" * 5_000, "maze:\u00b2"])))
def test_any_task_name_is_a_codec_or_one_puzzle_error(task):
    codec = parses_or_refuses(get_codec, task)
    if codec is not None:
        again = get_codec(codec.task)  # the codec's own name is canonical
        assert (type(again), again.seq_len, again.vocab_size) == (type(codec), codec.seq_len, codec.vocab_size)


def a_valid_input(task: str) -> np.ndarray:
    """Token ids of one valid puzzle of `task`: an empty Sudoku, an open maze (S top-left, G bottom-right),
    a 1x1 ARC grid."""
    codec = get_codec(task)
    if task == "arc":
        return codec.encode("[[0]]")
    if task.startswith("maze"):
        ids = np.full(codec.seq_len, 2)
        ids[0], ids[-1] = 3, 4
        return ids
    return np.ones(codec.seq_len, dtype=np.int64)


@pytest.mark.parametrize("task", TASKS)
@given(prediction=hnp.arrays(st.sampled_from([np.int64, np.int8, np.uint16, np.float32]),
                             hnp.array_shapes(min_dims=0, max_dims=2, max_side=40)))
def test_check_of_a_garbage_prediction_is_false_never_an_exception(task, prediction):
    assert get_codec(task).check(a_valid_input(task), prediction) in (True, False)

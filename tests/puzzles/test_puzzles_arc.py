"""ARC codec: official 30x30 canvas with EOS markers, cropping, validation, task files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hrm_edge.puzzles import ArcCodec, PuzzleError, get_codec, iter_test_pairs, load_arc_tasks

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
EVALUATION = DATA / "arc-agi-1" / "evaluation.json"


@pytest.fixture(scope="module")
def codec() -> ArcCodec:
    return ArcCodec()


@pytest.fixture(scope="module")
def evaluation() -> dict[str, dict]:
    if not EVALUATION.is_file():
        pytest.skip(f"shared data not found at {EVALUATION}")
    return load_arc_tasks(EVALUATION)


def test_official_sizes() -> None:
    codec = get_codec("arc")
    assert (codec.task, codec.seq_len, codec.vocab_size, codec.pad_id) == ("arc", 900, 12, 0)


def test_evaluation_set_counts(evaluation: dict[str, dict]) -> None:
    assert len(evaluation) == 400
    assert len(list(iter_test_pairs(evaluation))) == 419


def test_round_trip_every_evaluation_test_grid(evaluation: dict[str, dict], codec: ArcCodec) -> None:
    count = 0
    for _task_id, _k, inp, out in iter_test_pairs(evaluation):
        for grid in (inp, out):
            tokens = codec.encode_grid(grid)
            assert tokens.shape == (900,) and tokens.dtype == np.int64
            assert codec.decode_grid(tokens) == grid
            assert codec.check(tokens, tokens)
            assert codec.matches(tokens, grid)
            count += 1
    assert count == 2 * 419


def test_eos_placement_on_3x2_grid(codec: ArcCodec) -> None:
    grid = [[0, 1], [2, 3], [4, 9]]
    canvas = codec.encode_grid(grid).reshape(30, 30)
    expected = np.zeros((30, 30), dtype=np.int64)
    expected[0, 0], expected[0, 1], expected[0, 2] = 2, 3, 1
    expected[1, 0], expected[1, 1], expected[1, 2] = 4, 5, 1
    expected[2, 0], expected[2, 1], expected[2, 2] = 6, 11, 1
    expected[3, 0], expected[3, 1] = 1, 1  # EOS row below; corner [3, 2] stays PAD
    assert np.array_equal(canvas, expected)
    assert canvas[3, 2] == 0 and canvas[:, 3:].sum() == 0 and canvas[4:].sum() == 0


def test_full_30x30_grid_has_no_eos(codec: ArcCodec) -> None:
    grid = (np.arange(900).reshape(30, 30) % 10).tolist()
    tokens = codec.encode_grid(grid)
    assert not np.any(tokens == 1) and not np.any(tokens == 0)
    assert codec.decode_grid(tokens) == grid


def test_full_width_grid_has_only_eos_row(codec: ArcCodec) -> None:
    canvas = codec.encode_grid([[5] * 30] * 2).reshape(30, 30)
    assert (canvas[2] == 1).all() and (canvas[:2] == 7).all() and canvas[3:].sum() == 0


def test_encode_accepts_json_and_digit_rows(codec: ArcCodec) -> None:
    a = codec.encode("[[1, 2, 3], [4, 5, 6]]")
    b = codec.encode("123\n456")
    assert np.array_equal(a, b)
    assert codec.decode(a) == "[[1,2,3],[4,5,6]]"
    assert codec.format_grid(a) == "1 2 3\n4 5 6"


def test_split_task_json_gives_test_inputs(evaluation: dict[str, dict], codec: ArcCodec) -> None:
    task_id = sorted(evaluation)[0]
    pieces = codec.split(json.dumps(evaluation[task_id]))
    assert [json.loads(p) for p in pieces] == [pair["input"] for pair in evaluation[task_id]["test"]]
    assert codec.split("# two grids\n12\n34\n\n5\n") == ["12\n34", "5"]


def test_rejects_31_wide_grid(codec: ArcCodec) -> None:
    with pytest.raises(PuzzleError, match=r"^arc puzzle: 31 columns, at most 30 allowed$"):
        codec.encode_grid([[0] * 31])


def test_rejects_31_rows(codec: ArcCodec) -> None:
    with pytest.raises(PuzzleError, match=r"31 rows, at most 30 allowed"):
        codec.encode_grid([[0]] * 31)


def test_rejects_ragged_rows(codec: ArcCodec) -> None:
    with pytest.raises(PuzzleError, match=r"^arc puzzle 4: ragged rows: row 2 has 1 cells, row 1 has 2$"):
        codec.encode_grid([[0, 1], [2]], index=4)


def test_rejects_colour_10(codec: ArcCodec) -> None:
    with pytest.raises(PuzzleError, match=r"colour 10 at row 2, column 1 is not an integer 0\.\.9"):
        codec.encode("[[1], [10]]")


def test_rejects_empty_grid(codec: ArcCodec) -> None:
    with pytest.raises(PuzzleError, match=r"expected a non-empty list of rows"):
        codec.encode("[]")


def test_decode_garbage_keeps_largest_rectangle(codec: ArcCodec) -> None:
    canvas = np.zeros((30, 30), dtype=np.int64)
    canvas[:2, :4] = 3  # 2x4 block of colour 1
    canvas[2:5, :2] = 4  # 3 more rows, only 2 wide: 5x2 = 10 > 8
    assert codec.decode_grid(canvas.reshape(-1)) == [[1, 1], [1, 1], [2, 2], [2, 2], [2, 2]]
    assert not codec.check(canvas.reshape(-1), canvas.reshape(-1))  # no EOS markers: not well formed


def test_decode_without_grid_raises(codec: ArcCodec) -> None:
    with pytest.raises(PuzzleError, match=r"no grid, the top-left cell is not a colour"):
        codec.decode_grid(np.zeros(900, dtype=np.int64))
    assert codec.decode(np.zeros(900, dtype=np.int64)) == "[]"


def test_check_and_matches_never_raise_on_garbage(codec: ArcCodec) -> None:
    inputs = codec.encode_grid([[1, 2], [3, 4]])
    for junk in (np.zeros(900, dtype=np.int64), np.full(900, 99), inputs[:899], inputs.astype(float)):
        assert codec.check(inputs, junk) is False
        assert codec.matches(junk, [[1, 2], [3, 4]]) is False
    assert codec.matches(inputs, [[1, 2], [3, 4]])
    assert not codec.matches(inputs, [[1, 2]])


def test_load_arc_tasks_names_bad_grid(tmp_path: Path) -> None:
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps({"abc": {"train": [], "test": [{"input": [[1, 11]], "output": [[1]]}]}}))
    with pytest.raises(PuzzleError, match=r"^arc task abc test pair 1 input: colour 11 at row 1, column 2"):
        load_arc_tasks(path)

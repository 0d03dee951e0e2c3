"""The committed calibration / validation sets: integrity, disjointness, correct labels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hrm_edge.puzzles import (
    ArcCodec,
    MazeCodec,
    PuzzleError,
    PuzzleSet,
    SudokuCodec,
    count_solutions,
    load_puzzle_set,
    maze_symmetry_key,
    path_length,
    sudoku_symmetry_key,
    tokens_to_grid,
)
from hrm_edge.puzzles.datasets import sha256_file
from hrm_edge.puzzles.maze_gen import shortest_route_count

CALIB = Path(__file__).resolve().parents[2] / "calib_data"
SETS = {"sudoku": "sudoku", "sudoku6": "sudoku6", "maze": "maze", "maze15": "maze:15", "maze11": "maze:11",
        "arc": "arc"}
COUNTS = {"sudoku": (512, 512), "sudoku6": (1024, 256), "maze": (128, 128), "maze15": (128, 128),
          "maze11": (1024, 256), "arc": (415, 419)}


@pytest.fixture(scope="module")
def sets() -> dict[str, dict[str, PuzzleSet]]:
    if not (CALIB / "sudoku" / "MANIFEST.json").is_file():
        pytest.skip(f"{CALIB} not built; run python scripts/build_calib_data.py")
    return {name: {split: load_puzzle_set(CALIB / name, split) for split in ("calib", "val")} for name in SETS}


def canonical(puzzle_set: PuzzleSet, i: int) -> object:
    """Symmetry-invariant key of puzzle ``i`` of a set."""
    codec = puzzle_set.codec
    if isinstance(codec, SudokuCodec):
        return sudoku_symmetry_key(tokens_to_grid(puzzle_set.inputs[i], codec.n), codec.box)
    if isinstance(codec, MazeCodec):
        return maze_symmetry_key(puzzle_set.inputs[i])
    return puzzle_set.inputs[i].tobytes()


@pytest.mark.parametrize("name", list(SETS))
def test_manifest_sha256_matches_files(name: str) -> None:
    manifest_path = CALIB / name / "MANIFEST.json"
    if not manifest_path.is_file():
        pytest.skip(f"{CALIB} not built")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["task"] == SETS[name]
    assert len(manifest["files"]) == 4
    for file_name, digest in manifest["files"].items():
        assert sha256_file(CALIB / name / file_name) == digest
    for source in manifest["sources"]:
        licence = source["licence"]
        if isinstance(licence, dict):
            assert sha256_file(CALIB / name / licence["file"]) == licence["sha256"]


@pytest.mark.parametrize("name", list(SETS))
def test_sets_load_with_expected_counts_and_shapes(sets: dict[str, dict[str, PuzzleSet]], name: str) -> None:
    for split, count in zip(("calib", "val"), COUNTS[name], strict=True):
        ps = sets[name][split]
        seq_len = ps.codec.seq_len
        assert ps.task == SETS[name] and ps.split == split and len(ps) == count
        assert ps.inputs.shape == (count, seq_len) and ps.inputs.dtype == np.int64
        assert ps.labels is not None and ps.labels.shape == (count, seq_len)
        assert ps.puzzle_ids.shape == ps.difficulty.shape == (count,)
        assert len(ps.names) == len(set(ps.names)) == len(ps.meta) == count


@pytest.mark.parametrize("name", list(SETS))
def test_calib_and_val_never_overlap(sets: dict[str, dict[str, PuzzleSet]], name: str) -> None:
    calib, val = sets[name]["calib"], sets[name]["val"]
    assert not {row.tobytes() for row in calib.inputs} & {row.tobytes() for row in val.inputs}
    calib_keys = {canonical(calib, i) for i in range(len(calib))}
    val_keys = {canonical(val, i) for i in range(len(val))}
    assert not calib_keys & val_keys
    if name != "arc":  # ARC tasks may share an input grid (different rules); names are unique
        assert len(calib_keys) == len(calib) and len(val_keys) == len(val)  # no duplicates within a split


@pytest.mark.parametrize("name", ["sudoku", "sudoku6"])
def test_sudoku_labels_are_the_unique_solutions(sets: dict[str, dict[str, PuzzleSet]], name: str) -> None:
    for ps in sets[name].values():
        codec = ps.codec
        assert isinstance(codec, SudokuCodec) and ps.labels is not None
        for inp, lab in zip(ps.inputs, ps.labels, strict=True):
            assert codec.check(inp, lab)
            assert count_solutions(tokens_to_grid(inp, codec.n), codec.box) == 1


@pytest.mark.parametrize("name", ["maze", "maze15", "maze11"])
def test_maze_labels_are_shortest_paths(sets: dict[str, dict[str, PuzzleSet]], name: str) -> None:
    for ps in sets[name].values():
        codec = ps.codec
        assert isinstance(codec, MazeCodec) and ps.labels is not None
        for inp, lab, steps in zip(ps.inputs, ps.labels, ps.difficulty, strict=True):
            assert codec.check(inp, lab) and codec.is_shortest(inp, lab)
            assert path_length(inp) == steps


@pytest.mark.parametrize("name", ["maze", "maze15", "maze11"])
def test_every_maze_has_exactly_one_shortest_path(sets: dict[str, dict[str, PuzzleSet]], name: str) -> None:
    """Otherwise the label is an arbitrary pick among ties and exact accuracy would fault right answers."""
    for ps in sets[name].values():
        n = ps.codec.size
        assert [shortest_route_count(inp.reshape(n, n)) for inp in ps.inputs] == [1] * len(ps)


def test_arc_labels_are_the_official_outputs(sets: dict[str, dict[str, PuzzleSet]]) -> None:
    codec = ArcCodec()
    for split in ("calib", "val"):
        ps = sets["arc"][split]
        entries = json.loads((CALIB / "arc" / f"{split}.json").read_text())
        assert ps.labels is not None
        for entry, inp, lab in zip(entries, ps.inputs, ps.labels, strict=True):
            assert codec.check(inp, lab) and codec.matches(lab, entry["output"])
            assert codec.decode_grid(inp) == entry["input"]


def test_sudoku_difficulty_spans_easy_to_hard(sets: dict[str, dict[str, PuzzleSet]]) -> None:
    for ps in sets["sudoku"].values():
        levels = np.bincount(ps.difficulty, minlength=4)
        assert levels.min() >= 20  # every rater level 0..3 is represented
        givens = (ps.inputs >= 2).sum(axis=1)
        assert givens.min() <= 18 and givens.max() >= 55


def test_maze_difficulty_includes_hard_mazes(sets: dict[str, dict[str, PuzzleSet]]) -> None:
    for ps in sets["maze"].values():
        assert (ps.difficulty > 110).sum() >= 50 and ps.difficulty.min() >= 40


def test_maze11_bands_are_equally_filled(sets: dict[str, dict[str, PuzzleSet]]) -> None:
    for split, per_band in (("calib", 256), ("val", 64)):
        steps = sets["maze11"][split].difficulty
        counts = [int(((steps >= lo) & (steps <= hi)).sum()) for lo, hi in ((6, 11), (12, 17), (18, 25), (26, 121))]
        assert counts == [per_band] * 4


def test_tampered_file_is_rejected(tmp_path: Path) -> None:
    if not (CALIB / "sudoku6" / "MANIFEST.json").is_file():
        pytest.skip(f"{CALIB} not built")
    copy = tmp_path / "sudoku6"
    shutil.copytree(CALIB / "sudoku6", copy)
    data = copy / "val.txt"
    data.write_text(data.read_text().replace("1", "2", 1))
    assert len(load_puzzle_set(copy / "calib.txt")) == 1024  # untouched split still loads
    with pytest.raises(PuzzleError, match=r"val\.txt: sha256 mismatch"):
        load_puzzle_set(copy, "val")


def test_unknown_split_is_rejected() -> None:
    if not (CALIB / "maze15" / "MANIFEST.json").is_file():
        pytest.skip(f"{CALIB} not built")
    with pytest.raises(PuzzleError, match=r"no split 'test'; splits: calib, val"):
        load_puzzle_set(CALIB / "maze15", "test")


def test_pool_overlap_check_sees_through_sudoku_symmetry():
    """scripts/check_pool_overlap.py, behind the demo cards' "0 of 512" claim: a val puzzle relabelled
    and permuted is recognised as the same puzzle; another val puzzle is not."""
    import importlib.util

    script = CALIB.parent / "scripts" / "check_pool_overlap.py"
    spec = importlib.util.spec_from_file_location("check_pool_overlap", script)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    perms = check.box_preserving_permutations()
    assert perms.shape == (3456, 36) and len({p.tobytes() for p in perms}) == 3456
    pset = load_puzzle_set(CALIB / "sudoku6", split="val")
    a, b = pset.inputs[0] - 1, pset.inputs[1] - 1  # digits, 0 = blank
    rng = np.random.default_rng(0)
    relabel = np.concatenate([[0], rng.permutation(6) + 1])
    disguised = relabel[a][perms[1234]]
    assert not np.array_equal(disguised, a)
    assert check.canonical(disguised, perms) == check.canonical(a, perms)
    assert check.canonical(b, perms) != check.canonical(a, perms)

"""Maze codec, BFS solver, path checks, generator and dihedral augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from hrm_edge.puzzles import (
    MazeCodec,
    PuzzleError,
    augment_maze,
    dihedral_transform,
    generate_maze,
    get_codec,
    inverse_dihedral_transform,
    path_length,
    solve_maze,
)
from hrm_edge.puzzles.maze_gen import shortest_paths_from, shortest_route_count

# Two routes from S to G: 6 steps down the left side, 10 round the right-hand side.
HAND = [
    "#######",
    "#S   ##",
    "# ## ##",
    "# ##  #",
    "#   # #",
    "###G  #",
    "#######",
]
HAND_DETOUR = [
    "#######",
    "#Sooo##",
    "# ##o##",
    "# ##oo#",
    "#   #o#",
    "###Goo#",
    "#######",
]
HAND_SHORTEST = [
    "#######",
    "#S   ##",
    "#o## ##",
    "#o##  #",
    "#ooo# #",
    "###G  #",
    "#######",
]


@pytest.fixture(scope="module")
def codec7() -> MazeCodec:
    return MazeCodec(7)


def text(rows: list[str]) -> str:
    return "\n".join(rows)


def test_official_ids_and_sizes() -> None:
    codec = get_codec("maze")
    assert isinstance(codec, MazeCodec)
    assert (codec.task, codec.seq_len, codec.vocab_size, codec.pad_id) == ("maze", 900, 6, 0)
    small = get_codec("maze:7")
    assert (small.task, small.seq_len) == ("maze:7", 49)
    tokens = small.encode(text(HAND))
    assert tokens[:9].tolist() == [1, 1, 1, 1, 1, 1, 1, 1, 3]  # '#' -> 1, 'S' -> 3
    assert tokens[9] == 2  # ' ' -> 2
    assert tokens[5 * 7 + 3] == 4  # 'G' -> 4
    label = small.encode_label(text(HAND_SHORTEST))
    assert label[2 * 7 + 1] == 5  # 'o' -> 5


def test_round_trip_text_and_single_line(codec7: MazeCodec) -> None:
    tokens = codec7.encode(text(HAND))
    assert codec7.decode(tokens) == text(HAND)
    assert np.array_equal(codec7.encode("".join(HAND)), tokens)
    assert codec7.format_grid(tokens).splitlines()[2] == "|#S   ##|"


@pytest.mark.parametrize("size", [30, 15])
def test_round_trip_generated(size: int) -> None:
    codec = MazeCodec(size)
    rng = np.random.default_rng(size)
    for _ in range(5):
        maze, label = generate_maze(rng, size, min_path_len=size)
        tokens = codec.encode(codec.decode(maze))
        assert np.array_equal(tokens, maze.reshape(-1))
        assert np.array_equal(codec.encode_label(codec.decode(label)), label.reshape(-1))


def test_split_handles_comments_blank_lines_and_label_columns(codec7: MazeCodec) -> None:
    side_by_side = "\n".join(f"{a}|{b}" for a, b in zip(HAND, HAND_SHORTEST, strict=True))
    pieces = codec7.split(f"# my mazes\n{text(HAND)}\n\n{side_by_side}\n")
    assert pieces == [text(HAND), text(HAND)]


def test_bfs_shortest_path_on_hand_made_maze(codec7: MazeCodec) -> None:
    tokens = codec7.encode(text(HAND))
    path = solve_maze(tokens)
    assert path is not None
    assert path[0] == (1, 1) and path[-1] == (5, 3)
    assert len(path) - 1 == 6 == path_length(tokens)


def test_unreachable_goal_has_no_path(codec7: MazeCodec) -> None:
    walled = text(HAND).replace("#S   ##", "#S# ###").replace("# ## ##", "### ###")
    assert solve_maze(codec7.encode(walled)) is None


def test_shortest_label_passes_check_and_is_shortest(codec7: MazeCodec) -> None:
    maze = codec7.encode(text(HAND))
    label = codec7.encode_label(text(HAND_SHORTEST))
    assert codec7.check(maze, label)
    assert codec7.is_shortest(maze, label)


def test_detour_is_valid_but_not_shortest(codec7: MazeCodec) -> None:
    maze = codec7.encode(text(HAND))
    detour = codec7.encode_label(text(HAND_DETOUR))
    assert codec7.check(maze, detour)
    assert not codec7.is_shortest(maze, detour)


def test_broken_path_fails_check(codec7: MazeCodec) -> None:
    maze = codec7.encode(text(HAND))
    label = codec7.encode_label(text(HAND_SHORTEST))
    broken = label.copy()
    broken[3 * 7 + 1] = 2  # remove one 'o' in the middle of the path
    assert not codec7.check(maze, broken)


@pytest.mark.parametrize(
    "change",
    [
        lambda lab: np.where(lab == 3, 2, lab),  # S erased
        lambda lab: np.where(lab == 1, 5, lab),  # path through walls
        lambda lab: lab[:-1],  # wrong length
        lambda lab: lab.astype(np.float32),  # not integer ids
        lambda lab: np.where(lab == 2, 5, lab),  # every open cell marked: branching blob
    ],
)
def test_check_rejects_garbage_without_raising(codec7: MazeCodec, change) -> None:
    maze = codec7.encode(text(HAND))
    label = codec7.encode_label(text(HAND_SHORTEST))
    assert codec7.check(maze, change(label)) is False


@pytest.mark.parametrize(("size", "min_len"), [(30, 110), (15, 20)])
def test_generated_mazes_are_solvable_and_labels_are_shortest(size: int, min_len: int) -> None:
    codec = MazeCodec(size)
    rng = np.random.default_rng(2024)
    for _ in range(10):
        maze, label = generate_maze(rng, size, min_path_len=min_len)
        assert (maze == 3).sum() == 1 and (maze == 4).sum() == 1 and (maze == 5).sum() == 0
        steps = path_length(maze)
        assert steps is not None and steps >= min_len
        assert codec.check(maze, label) and codec.is_shortest(maze, label)
        assert (label == 5).sum() == steps - 1


def test_shortest_paths_from_counts_equally_short_routes() -> None:
    grid = MazeCodec(5).encode(text(["#####", "#S  #", "#   #", "#  G#", "#####"])).reshape(5, 5)
    steps, routes = shortest_paths_from(grid, (1, 1))
    assert steps[3, 3] == 4 and routes[3, 3] == 2  # six routes round the open square, capped at 2
    assert steps[1, 3] == 2 and routes[1, 3] == 1  # straight along the top row
    assert steps[0, 0] == -1 and routes[0, 0] == 0  # wall


def test_generated_mazes_have_exactly_one_shortest_path() -> None:
    """Many loops (loop_frac 0.3) make ties common; the default generator never labels one."""
    rng = np.random.default_rng(11)
    unique = [shortest_route_count(generate_maze(rng, 11, 12, 40, loop_frac=0.3)[0]) for _ in range(40)]
    any_goal = [shortest_route_count(generate_maze(rng, 11, 12, 40, 0.3, unique_path=False)[0]) for _ in range(40)]
    assert unique == [1] * 40
    assert any_goal.count(2) >= 10


def test_generator_is_deterministic_under_seed() -> None:
    a = generate_maze(np.random.default_rng(3), 15, min_path_len=10)
    b = generate_maze(np.random.default_rng(3), 15, min_path_len=10)
    c = generate_maze(np.random.default_rng(4), 15, min_path_len=10)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_generator_path_length_window() -> None:
    rng = np.random.default_rng(0)
    lengths = [path_length(generate_maze(rng, 30, min_path_len=40, max_path_len=60)[0]) for _ in range(10)]
    assert all(40 <= n <= 60 for n in lengths)  # type: ignore[operator]


def test_generator_reports_unreachable_difficulty() -> None:
    with pytest.raises(PuzzleError, match=r"bad path length range \[50, 10\]"):
        generate_maze(np.random.default_rng(0), 7, min_path_len=50, max_path_len=10)
    with pytest.raises(PuzzleError, match=r"no 7x7 maze with a unique shortest path of 40\.\.49 steps in 3 tries"):
        generate_maze(np.random.default_rng(0), 7, min_path_len=40, max_tries=3)


def test_augmentation_keeps_shortest_paths() -> None:
    codec = MazeCodec(15)
    rng = np.random.default_rng(9)
    maze, label = generate_maze(rng, 15, min_path_len=20)
    seen = set()
    for tid in range(8):
        m2, l2 = augment_maze(rng, maze, label, tid=tid)
        assert codec.check(m2, l2) and codec.is_shortest(m2, l2)
        assert path_length(m2) == path_length(maze)
        seen.add(m2.tobytes())
    assert len(seen) == 8


def test_dihedral_inverse() -> None:
    grid = np.arange(12).reshape(3, 4)
    for tid in range(8):
        assert np.array_equal(inverse_dihedral_transform(dihedral_transform(grid, tid), tid), grid)
    assert np.array_equal(dihedral_transform(grid, 7), np.fliplr(np.rot90(grid)))


def test_rejects_two_starts(codec7: MazeCodec) -> None:
    rows = list(HAND)
    rows[4] = "# S # #"
    with pytest.raises(PuzzleError, match=r"^maze:7 puzzle 2: expected exactly one S, got 2 \(row 2 column 2, row 5"):
        codec7.encode(text(rows), index=2)


def test_rejects_missing_goal(codec7: MazeCodec) -> None:
    with pytest.raises(PuzzleError, match=r"expected exactly one G, got 0$"):
        codec7.encode(text(HAND).replace("G", " "))


def test_rejects_bad_character(codec7: MazeCodec) -> None:
    with pytest.raises(PuzzleError, match=r"bad character 'x' at row 2, column 3"):
        codec7.encode(text(HAND).replace("#S   ##", "#Sx  ##"))


def test_rejects_path_in_input(codec7: MazeCodec) -> None:
    with pytest.raises(PuzzleError, match=r"bad character 'o' .*only allowed in labels"):
        codec7.encode(text(HAND_SHORTEST))


def test_rejects_wrong_row_length(codec7: MazeCodec) -> None:
    rows = list(HAND)
    rows[3] = rows[3][:-1]
    with pytest.raises(PuzzleError, match=r"row 4 has 6 characters, expected 7"):
        codec7.encode(text(rows))


def test_rejects_wrong_row_count(codec7: MazeCodec) -> None:
    with pytest.raises(PuzzleError, match=r"expected 7 rows of 7 characters .* got 6 rows"):
        codec7.encode(text(HAND[:6]))


def test_rejects_bad_maze_task() -> None:
    with pytest.raises(PuzzleError, match=r"maze size must be an integer 2\.\.30"):
        get_codec("maze:31")

"""Random maze generation and dihedral augmentation (maze token ids, see :mod:`.maze`).

Mazes are carved on a lattice of cells at odd coordinates by a randomised
depth-first search (a "perfect" maze: one route between any two cells), then a
fraction ``loop_frac`` of the remaining inner walls is knocked down so that
several routes exist and the solver has to find the *shortest*. ``S`` and ``G``
are then placed on open cells whose shortest path has a length (in steps) within
``[min_path_len, max_path_len]``: that is the difficulty knob (the official
30x30-hard mazes have shortest paths longer than 110 steps). By default the goal is
also one that only ONE shortest path reaches: with loops, two equally short routes
are common (about 14% of 11x11 mazes), and then "the" label is an arbitrary pick
that no model can learn and exact accuracy cannot credit.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from hrm_edge.puzzles.base import PuzzleError
from hrm_edge.puzzles.dihedral import dihedral_transform
from hrm_edge.puzzles.maze import GOAL, OPEN, START, WALL, label_from_path, solve_maze

__all__ = [
    "augment_maze",
    "carve_maze",
    "generate_maze",
    "maze_symmetry_key",
    "shortest_paths_from",
    "shortest_route_count",
]

MIN_GENERATED_SIZE = 5


def carve_maze(rng: np.random.Generator, size: int, loop_frac: float = 0.05) -> np.ndarray:
    """Walls and open cells only: ids ``int64 [size, size]`` (1 = wall, 2 = open).

    Lattice cells sit at odd (row, col); for even ``size`` the last row and column stay wall.
    """
    if size < MIN_GENERATED_SIZE:
        raise PuzzleError(f"maze generator: size must be >= {MIN_GENERATED_SIZE}, got {size}")
    if not 0.0 <= loop_frac <= 1.0:
        raise PuzzleError(f"maze generator: loop_frac must be in [0, 1], got {loop_frac}")
    k = (size - 1) // 2  # lattice cells per side
    grid = np.full((size, size), WALL, dtype=np.int64)
    visited = np.zeros((k, k), dtype=bool)
    start = (int(rng.integers(k)), int(rng.integers(k)))
    visited[start] = True
    grid[2 * start[0] + 1, 2 * start[1] + 1] = OPEN
    stack = [start]
    while stack:
        r, c = stack[-1]
        options = [
            (r + dr, c + dc)
            for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))
            if 0 <= r + dr < k and 0 <= c + dc < k and not visited[r + dr, c + dc]
        ]
        if not options:
            stack.pop()
            continue
        nr, nc = options[int(rng.integers(len(options)))]
        visited[nr, nc] = True
        grid[2 * nr + 1, 2 * nc + 1] = OPEN
        grid[r + nr + 1, c + nc + 1] = OPEN  # the wall between the two cells
        stack.append((nr, nc))
    # Inner walls between two lattice cells: exactly one of (row, col) is even, both inside.
    inner = [(r, c) for r in range(1, 2 * k) for c in range(1, 2 * k) if (r % 2) != (c % 2) and grid[r, c] == WALL]
    if inner and loop_frac > 0:
        count = round(loop_frac * len(inner))
        for j in rng.permutation(len(inner))[:count]:
            grid[inner[j]] = OPEN
    return grid


def shortest_paths_from(grid: np.ndarray, start: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """BFS from ``start`` over non-wall cells: ``(steps, routes)``, both ``int64 [n, n]``.

    ``steps`` is the shortest-path length to each cell (-1 where unreachable); ``routes`` is how
    many distinct shortest paths reach it, capped at 2 (0 where unreachable).
    """
    n = grid.shape[0]
    steps = np.full(grid.shape, -1, dtype=np.int64)
    routes = np.zeros(grid.shape, dtype=np.int64)
    steps[start], routes[start] = 0, 1
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if not (0 <= nr < n and 0 <= nc < n) or grid[nr, nc] == WALL:
                continue
            if steps[nr, nc] < 0:
                steps[nr, nc] = steps[r, c] + 1
                queue.append((nr, nc))
            if steps[nr, nc] == steps[r, c] + 1:
                routes[nr, nc] = min(2, routes[nr, nc] + routes[r, c])
    return steps, routes


def shortest_route_count(maze: np.ndarray) -> int:
    """How many distinct shortest S -> G paths ``maze`` (ids ``[n, n]``) has: 0, 1, or 2 meaning "two or more"."""
    start = tuple(int(v) for v in np.argwhere(maze == START)[0])
    goal = tuple(int(v) for v in np.argwhere(maze == GOAL)[0])
    return int(shortest_paths_from(maze, start)[1][goal])


def generate_maze(
    rng: np.random.Generator,
    size: int = 30,
    min_path_len: int = 1,
    max_path_len: int | None = None,
    loop_frac: float = 0.05,
    max_tries: int = 50,
    unique_path: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Random maze with a start and a goal, and its solution.

    Args:
        rng: random source; the result is deterministic under its seed.
        size: grid side (>= 5).
        min_path_len, max_path_len: allowed shortest-path length in steps (difficulty).
        loop_frac: fraction of inner walls removed after carving (0 = a perfect maze).
        max_tries: how many (maze, start) draws to try before giving up.
        unique_path: only pick goals that exactly one shortest path reaches, so the label is
            the one right answer (False: any goal; ties then break as :func:`solve_maze` does).

    Returns:
        ``(maze, label)``: ids ``int64 [size, size]``; ``label`` is ``maze`` with the shortest
        path (from :func:`solve_maze`) marked ``o``.

    Raises:
        PuzzleError: if no start/goal pair in the allowed length range was found.
    """
    upper = max_path_len if max_path_len is not None else size * size
    if min_path_len < 1 or upper < min_path_len:
        raise PuzzleError(f"maze generator: bad path length range [{min_path_len}, {max_path_len}]")
    longest = 0
    for _ in range(max(1, max_tries)):
        grid = carve_maze(rng, size, loop_frac)
        open_cells = np.argwhere(grid == OPEN)
        start = tuple(int(v) for v in open_cells[rng.integers(len(open_cells))])
        dist, routes = shortest_paths_from(grid, start)
        longest = max(longest, int(dist.max()))
        in_range = (dist >= min_path_len) & (dist <= upper)
        ok = np.argwhere(in_range & (routes == 1) if unique_path else in_range)
        if len(ok) == 0:
            continue
        goal = tuple(int(v) for v in ok[rng.integers(len(ok))])
        grid[start] = START
        grid[goal] = GOAL
        path = solve_maze(grid)
        assert path is not None and len(path) - 1 == dist[goal]
        return grid, label_from_path(grid, path)
    raise PuzzleError(
        f"maze generator: no {size}x{size} maze with a{' unique' if unique_path else ''} shortest path of "
        f"{min_path_len}..{upper} steps in {max_tries} tries (longest seen: {longest})"
    )


def augment_maze(
    rng: np.random.Generator, maze: np.ndarray, label: np.ndarray, tid: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Apply one of the 8 dihedral symmetries (random unless ``tid`` is given) to maze and label.

    Args:
        maze, label: ids, ``[n, n]`` or flat ``n*n``.

    Returns:
        The transformed ``(maze, label)`` as ``int64 [n, n]``.
    """
    m = np.asarray(maze, dtype=np.int64)
    lab = np.asarray(label, dtype=np.int64)
    n = round(m.size**0.5)
    if n * n != m.size or lab.size != m.size:
        raise PuzzleError(f"maze augment: expected two square grids of the same size, got {m.size} and {lab.size}")
    t = int(rng.integers(8)) if tid is None else tid
    return dihedral_transform(m.reshape(n, n), t), dihedral_transform(lab.reshape(n, n), t)


def maze_symmetry_key(maze: np.ndarray) -> bytes:
    """Key equal for mazes related by a dihedral symmetry: the smallest of the 8 transforms' bytes."""
    m = np.asarray(maze, dtype=np.int64)
    n = round(m.size**0.5)
    grid = m.reshape(n, n)
    return min(dihedral_transform(grid, t).tobytes() for t in range(8))

"""Training puzzles: for Sudoku a pool of unique puzzles, augmented, with a givens curriculum;
for mazes (`MazeSampler`) fresh mazes generated on the fly.

The pool holds (puzzle, solution) digit grids with unique solutions. A training sample
takes a pool entry, applies a validity-preserving augmentation (digit relabelling,
band/row and stack/column permutations, transpose on square boxes), then adds back
solution cells until it has the requested number of givens. Adding givens to a
unique puzzle keeps it unique, so every label is the only right answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hrm_edge.puzzles.base import PuzzleError
from hrm_edge.puzzles.maze_gen import augment_maze, generate_maze, maze_symmetry_key
from hrm_edge.puzzles.sudoku import SudokuCodec, tokens_to_grid
from hrm_edge.puzzles.sudoku_gen import augment_sudoku, generate_sudoku, make_unique


@dataclass
class SudokuPool:
    """puzzles, solutions: int8 [M, n*n] digit grids (0 = blank); box = (box_rows, box_cols)."""

    puzzles: np.ndarray
    solutions: np.ndarray
    box: tuple[int, int]

    @property
    def n(self) -> int:
        return self.box[0] * self.box[1]

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, puzzles=self.puzzles, solutions=self.solutions, box=np.array(self.box))

    @classmethod
    def load(cls, path: str | Path) -> SudokuPool:
        with np.load(path) as f:
            return cls(f["puzzles"], f["solutions"], tuple(int(b) for b in f["box"]))


def pool_from_texts(texts: Iterable[str], box: tuple[int, int], exclude: set[str] = frozenset(),
                    progress: bool = False) -> SudokuPool:
    """Label each puzzle text with the exact solver, skipping those in `exclude` (decoded
    strings). A puzzle with several solutions is made unique by adding givens from one of them."""
    codec = SudokuCodec(*box)
    rng = np.random.default_rng(0)
    puzzles, solutions = [], []
    items = list(texts)
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="labelling pool", unit="puzzle")
    for text in items:
        tokens = codec.encode(text)
        if codec.decode(tokens) in exclude:
            continue
        grid, solution, _ = make_unique(rng, tokens_to_grid(tokens, codec.n), box)
        puzzles.append(grid.reshape(-1))
        solutions.append(solution.reshape(-1))
    if not puzzles:
        raise PuzzleError("training pool is empty: every puzzle was excluded")
    return SudokuPool(np.array(puzzles, np.int8), np.array(solutions, np.int8), box)


def generated_pool(count: int, box: tuple[int, int], seed: int, givens: int = 0, attempts: int = 3,
                   progress: bool = False) -> SudokuPool:
    """`count` unique puzzles from the seeded generator, each with `givens` givens where reachable
    (0 = as few as the removal order allows, i.e. minimal puzzles)."""
    rng = np.random.default_rng(seed)
    it = range(count)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="generating pool", unit="puzzle")
    pairs = [generate_sudoku(rng, givens=givens, box=box, attempts=attempts) for _ in it]
    return SudokuPool(np.array([p.reshape(-1) for p, _ in pairs], np.int8),
                      np.array([s.reshape(-1) for _, s in pairs], np.int8), box)


class SudokuSampler:
    """Draws training batches from a pool: tokens int64 [b, n*n] and labels int64 [b, n*n]."""

    def __init__(self, pool: SudokuPool, rng: np.random.Generator) -> None:
        self.pool, self.rng = pool, rng

    def sample(self, batch: int, min_givens: int, max_givens: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns (inputs, labels, givens [b]); givens ~ Uniform[min, max], never fewer than the pool entry's."""
        n, rng = self.pool.n, self.rng
        idx = rng.integers(0, len(self.pool.puzzles), size=batch)
        inputs = np.empty((batch, n * n), np.int64)
        labels = np.empty((batch, n * n), np.int64)
        givens = np.empty(batch, np.int64)
        for row, i in enumerate(idx):
            puzzle, solution = augment_sudoku(
                rng, self.pool.puzzles[i].reshape(n, n), self.pool.solutions[i].reshape(n, n), self.pool.box)
            puzzle, solution = puzzle.reshape(-1).copy(), solution.reshape(-1)
            target = int(rng.integers(min_givens, max_givens + 1))
            blanks = np.flatnonzero(puzzle == 0)
            add = max(0, target - (n * n - len(blanks)))
            if add:
                chosen = rng.choice(blanks, size=min(add, len(blanks)), replace=False)
                puzzle[chosen] = solution[chosen]
            inputs[row], labels[row] = puzzle + 1, solution + 1
            givens[row] = int((puzzle > 0).sum())
        return inputs, labels, givens


def read_labelled(path: str | Path, codec: SudokuCodec) -> tuple[np.ndarray, np.ndarray]:
    """A `puzzle solution` per line (`#` comments skipped) -> (inputs, labels), int64 [N, n*n] each."""
    inputs, labels = [], []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise PuzzleError(f"{path}:{number}: expected 'puzzle solution', got {len(parts)} field(s)")
        inputs.append(codec.encode(parts[0], index=number))
        labels.append(codec.encode(parts[1], index=number))
    return np.array(inputs, np.int64), np.array(labels, np.int64)


class MazeSampler:
    """Draws maze training batches generated on the fly: tokens and labels int64 [b, size*size].

    Each maze gets a shortest-path length from a band drawn uniformly from `bands` (the
    calib_data bands, so training spans the difficulties the validation set measures), then one
    of the 8 dihedral transforms. Mazes whose symmetry key is in `exclude` (the calibration and
    validation mazes) are drawn again. Mazes have no givens: `sample`'s curriculum arguments are
    accepted for the trainer's interface and ignored."""

    def __init__(self, size: int, rng: np.random.Generator, bands: list[tuple[int, int]],
                 exclude: set[bytes] = frozenset(), loop_frac: float = 0.05) -> None:
        self.size, self.rng, self.bands, self.exclude, self.loop_frac = size, rng, bands, exclude, loop_frac

    def sample(self, batch: int, min_givens: int = 0, max_givens: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns (inputs, labels, path lengths [b])."""
        n2 = self.size * self.size
        inputs, labels = np.empty((batch, n2), np.int64), np.empty((batch, n2), np.int64)
        lengths = np.empty(batch, np.int64)
        for row in range(batch):
            while True:
                lo, hi = self.bands[int(self.rng.integers(len(self.bands)))]
                maze, label = generate_maze(self.rng, self.size, lo, hi, self.loop_frac)
                if maze_symmetry_key(maze) not in self.exclude:
                    break
            maze, label = augment_maze(self.rng, maze, label)
            inputs[row], labels[row] = maze.reshape(-1), label.reshape(-1)
            lengths[row] = int((label != maze).sum()) + 1
        return inputs, labels, lengths

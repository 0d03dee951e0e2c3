"""Puzzle codecs, solvers, generators and calibration sets (numpy + standard library only).

Token ids follow the official HRM dataset builders exactly:

- ``sudoku``: 9x9, seq_len 81, vocab 11 (0 PAD, 1 blank, digit d -> d+1); ``sudoku6``: 6x6, 2x3 boxes.
- ``maze``: 30x30, seq_len 900, vocab 6 (0 PAD, ``# SGo`` -> 1..5); ``maze:<n>`` for n x n.
- ``arc``: 30x30 canvas, seq_len 900, vocab 12 (0 PAD, 1 EOS, colour c -> c+2).
"""

from hrm_edge.puzzles.arc import ArcCodec, crop_grid, iter_test_pairs, load_arc_tasks, validate_grid
from hrm_edge.puzzles.base import Codec, PuzzleError
from hrm_edge.puzzles.codecs import KNOWN_TASKS, get_codec
from hrm_edge.puzzles.datasets import PuzzleSet, load_puzzle_set
from hrm_edge.puzzles.dihedral import dihedral_transform, inverse_dihedral_transform
from hrm_edge.puzzles.maze import MazeCodec, label_from_path, path_length, solve_maze
from hrm_edge.puzzles.maze_gen import augment_maze, generate_maze, maze_symmetry_key
from hrm_edge.puzzles.sudoku import SudokuCodec, grid_to_tokens, tokens_to_grid
from hrm_edge.puzzles.sudoku_gen import augment_sudoku, generate_sudoku, make_unique, sudoku_symmetry_key
from hrm_edge.puzzles.sudoku_rater import LEVEL_NAMES, rate_difficulty
from hrm_edge.puzzles.sudoku_solver import count_solutions, solve_sudoku

__all__ = [
    "KNOWN_TASKS",
    "LEVEL_NAMES",
    "ArcCodec",
    "Codec",
    "MazeCodec",
    "PuzzleError",
    "PuzzleSet",
    "SudokuCodec",
    "augment_maze",
    "augment_sudoku",
    "count_solutions",
    "crop_grid",
    "dihedral_transform",
    "generate_maze",
    "generate_sudoku",
    "get_codec",
    "grid_to_tokens",
    "inverse_dihedral_transform",
    "iter_test_pairs",
    "label_from_path",
    "load_arc_tasks",
    "load_puzzle_set",
    "make_unique",
    "maze_symmetry_key",
    "path_length",
    "rate_difficulty",
    "solve_maze",
    "solve_sudoku",
    "sudoku_symmetry_key",
    "tokens_to_grid",
    "validate_grid",
]

"""The HRM 6x6 demo exported once per test session (fp32 segment graph + the fused CPU graph with its
embed graph; no fp16) and its mixed-difficulty validation puzzles, shared by the serving tests."""

from __future__ import annotations

from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "checkpoints" / "sudoku6-demo"


def demo_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The exported demo bundle, under the session's base temp directory (exported on first use)."""
    from hrm_edge.cli.main import main

    out = tmp_path_factory.getbasetemp() / "sudoku6-demo-bundle"
    if not (out / "manifest.json").is_file():
        with pytest.raises(SystemExit) as exc:
            main(["export", str(DEMO / "model.pt"), "-o", str(out), "--no-fp16", "--golden", "4"])
        assert exc.value.code == 0
    return out


def demo_puzzles(limit: int = 24):
    """The first `limit` puzzles of calib_data/sudoku6 val (a `PuzzleSet`)."""
    from hrm_edge.puzzles.datasets import load_puzzle_set

    pset = load_puzzle_set(Path(__file__).resolve().parents[2] / "calib_data" / "sudoku6", "val")
    pset.inputs, pset.puzzle_ids = pset.inputs[:limit], pset.puzzle_ids[:limit]
    pset.labels = None if pset.labels is None else pset.labels[:limit]
    return pset


def free_port() -> int:
    """A TCP port free on loopback now (the OS's choice)."""
    from hrm_edge.serving.tritonserver import free_port as os_free_port

    return os_free_port()

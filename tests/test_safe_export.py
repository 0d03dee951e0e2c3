"""Exports to one path are exclusive and atomic: a second exporter fails at once naming the holder,
a crash at the final swap leaves the old bundle whole, and the next export removes what a killed
one left behind. Real directories, real processes; the exports write the small embed graph only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hrm_edge.bundle import open_bundle
from hrm_edge.files import exclusive_lock, lock_path, swap_dirs
from tests.cli_helpers import one_line_error, run_cli

REPO = Path(__file__).resolve().parents[1]

# Writes a bundle of the tiny checkpoint argv[1] at argv[2]. argv[3]: "hold" waits for the file argv[4]
# while holding the lock, "crash" dies (os._exit, no cleanup) at the final swap, "plain" just exports.
EXPORTER = """
import os, sys, time
from pathlib import Path
from hrm_edge import files
from hrm_edge.export.bundle_writer import GraphSpec, write_bundle
from hrm_edge.model.checkpoint import load_checkpoint
from hrm_edge.puzzles.datasets import calib_data_dir, load_puzzle_set

ck = load_checkpoint(sys.argv[1])
golden = load_puzzle_set(calib_data_dir("sudoku"), split="val")
golden.inputs, golden.puzzle_ids, golden.labels = golden.inputs[:2], golden.puzzle_ids[:2], golden.labels[:2]
out, mode = Path(sys.argv[2]), sys.argv[3]
if mode == "crash":
    files.swap_dirs = lambda new, target: os._exit(137)
with files.exclusive_lock(out):
    if mode == "hold":
        print("locked", flush=True)
        while not Path(sys.argv[4]).exists():
            time.sleep(0.05)
    write_bundle(ck, out, [GraphSpec("embed")], golden, force=True, log=lambda m: None)
"""


def _exporter(ckpt: Path, out: Path, mode: str, go: Path | None = None) -> subprocess.Popen[str]:
    argv = [sys.executable, "-c", EXPORTER, str(ckpt), str(out), mode, *([str(go)] if go else [])]
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def old_bundle(tiny_ckpt, tmp_path_factory):
    """A finished bundle (exported by a real process) to replace in the tests."""
    out = tmp_path_factory.mktemp("old") / "b"
    proc = _exporter(tiny_ckpt, out, "plain")
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    return out


def _copy(bundle: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(bundle, dest)
    return dest


def test_a_second_exporter_fails_at_once_naming_the_first_and_the_first_bundle_is_intact(capsys, tiny_ckpt,
                                                                                          tmp_path):
    out, go = tmp_path / "b", tmp_path / "go"
    first = _exporter(tiny_ckpt, out, "hold", go)
    assert first.stdout.readline().strip() == "locked"
    t0 = time.monotonic()
    line = one_line_error(capsys, "export", str(tiny_ckpt), "-o", str(out), "--force")
    assert time.monotonic() - t0 < 5
    assert f"another export to this path is running (pid {first.pid}" in line
    go.touch()
    assert first.wait(timeout=600) == 0, first.stderr.read()
    assert open_bundle(out).graphs.keys() == {"embed.fp32"}  # opening checks every file's sha256
    assert sorted(p.name for p in out.iterdir()) == ["carry_init.npz", "embed.fp32.onnx", "manifest.json",
                                                     "reference.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "go"]  # no partial dir, no lock file left


def test_a_crash_at_the_swap_leaves_the_old_bundle_whole(tiny_ckpt, old_bundle, tmp_path):
    out = _copy(old_bundle, tmp_path / "b")
    before = (out / "manifest.json").read_text()
    proc = _exporter(tiny_ckpt, out, "crash")
    assert proc.wait(timeout=600) == 137
    assert (out / "manifest.json").read_text() == before
    open_bundle(out)  # every file's sha256 still matches
    partial = [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    assert len(partial) == 1 and (partial[0] / "manifest.json").is_file()  # the new bundle was complete


def test_the_next_export_removes_a_killed_exports_partial_dir_and_says_so(capsys, tiny_ckpt, old_bundle, tmp_path):
    out = _copy(old_bundle, tmp_path / "b")
    stale = tmp_path / ".b.x1y2z3.partial"
    stale.mkdir()
    (stale / "segment.fp32.onnx").write_bytes(b"\0" * 1000)
    code, _, err = run_cli(capsys, "export", str(tiny_ckpt), "-o", str(out), "--force", "--no-fp16",
                           "--no-cpu-fused", "--golden", "2")
    assert code == 0, err
    assert [line for line in err.splitlines() if "stale" in line] == [
        "removed 1 stale partial export(s) of a killed export: .b.x1y2z3.partial"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    assert json.loads((out / "manifest.json").read_text())["created"] != ""


def test_partial_dirs_are_left_alone_while_a_live_exporter_holds_the_lock(tiny_ckpt, tmp_path):
    out = tmp_path / "b"
    live = tmp_path / ".b.abc123.partial"
    live.mkdir()
    with exclusive_lock(out):  # this process is the live exporter; a second one starts:
        second = subprocess.run([sys.executable, "-m", "hrm_edge.cli", "export", str(tiny_ckpt), "-o", str(out)],
                                cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 1
    assert second.stderr.splitlines() == [f"error: {out}: another export to this path is running (pid "
                                          f"{os.getpid()}; lock {lock_path(out).resolve()})"]
    assert live.is_dir()


def test_the_lock_file_names_its_holder_and_goes_away_after(tmp_path):
    out = tmp_path / "b"
    with exclusive_lock(out) as path:
        assert path == lock_path(out).resolve()
        assert path.read_text().strip() == str(os.getpid())
        with exclusive_lock(out):  # nested in one process: no deadlock
            pass
    assert not lock_path(out).exists()


def test_swap_exchanges_two_directories(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "new").touch()
    (b / "old").touch()
    swap_dirs(a, b)
    assert [p.name for p in b.iterdir()] == ["new"] and [p.name for p in a.iterdir()] == ["old"]


def test_force_replaces_only_a_bundle_or_an_empty_directory(capsys, tiny_ckpt, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("keep me")
    line = one_line_error(capsys, "export", str(tiny_ckpt), "-o", str(home), "--force")
    assert "not a bundle (no manifest.json) and not empty" in line
    assert (home / "notes.txt").read_text() == "keep me"

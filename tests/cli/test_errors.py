"""Every error a user can cause is one `error:` line and exit 1, found before long work starts;
exit 2 ("internal error") is left for bugs. Real files, directories and devices."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli_helpers import run_cli

REPO = Path(__file__).resolve().parents[2]
AS_ROOT = os.geteuid() == 0  # root writes into read-only directories: those errors cannot happen


def user_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the command; it must fail with exit 1 and exactly one line on stderr, `error: ...`."""
    code, _, err = run_cli(capsys, *argv)
    assert code == 1 and len(err.splitlines()) == 1 and err.startswith("error: "), (code, err)
    assert "internal error" not in err
    return err.strip()


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "plain.txt"
    path.write_text("not a directory\n")
    return path


@pytest.fixture
def read_only_dir(tmp_path) -> Path:
    path = tmp_path / "ro"
    path.mkdir()
    path.chmod(0o555)
    yield path
    path.chmod(0o755)


def test_solve_file_that_is_a_directory(capsys, tiny_ckpt, tmp_path):
    assert user_error(capsys, "solve", str(tiny_ckpt), "--file", str(tmp_path)) == \
        f"error: --file {tmp_path}: is a directory, not a puzzle file"


def test_solve_file_that_is_missing(capsys, tiny_ckpt, tmp_path):
    assert user_error(capsys, "solve", str(tiny_ckpt), "--file", str(tmp_path / "nope.txt")) == \
        f"error: --file {tmp_path / 'nope.txt'}: No such file or directory"


def test_solve_file_that_is_binary(capsys, tiny_ckpt, tmp_path):
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01")
    assert "model.bin line 1: not UTF-8 text (byte 0x89 at column 1)" in user_error(
        capsys, "solve", str(tiny_ckpt), "--file", str(binary))


def test_solve_from_a_closed_stdin(capsys, tiny_ckpt, monkeypatch):
    monkeypatch.setattr(sys, "stdin", None)  # what Python sets when descriptor 0 is closed
    assert user_error(capsys, "solve", str(tiny_ckpt), "--file", "-") == "error: --file -: standard input is closed"


def test_solve_printing_to_a_full_device(tiny_ckpt):
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "hrm_edge.cli", "solve", str(tiny_ckpt), "--task", "sudoku",
                               "--puzzle", "." * 81, "--max-steps", "1"], cwd=REPO, stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == ["error: cannot write the output: No space left on device"]


def test_solve_on_the_meta_device(capsys, tiny_ckpt):
    assert "--device meta holds no data" in user_error(capsys, "solve", str(tiny_ckpt), "--puzzle", "." * 81,
                                                       "--device", "meta")


def test_solve_on_a_device_that_is_not_here(capsys, tiny_ckpt):
    assert "--device 'cuda:7' is not usable here" in user_error(capsys, "solve", str(tiny_ckpt), "--puzzle",
                                                                "." * 81, "--device", "cuda:7")


def test_export_with_the_task_of_another_puzzle_fails_before_exporting(capsys, tiny_ckpt, tmp_path):
    t0 = time.monotonic()
    line = user_error(capsys, "export", str(tiny_ckpt), "--task", "maze", "-o", str(tmp_path / "b"))
    assert line.startswith("error: task maze: ") and line.endswith("puzzles have 900 tokens, the checkpoint expects 81")
    assert time.monotonic() - t0 < 20 and not (tmp_path / "b").exists()


def test_export_under_a_regular_file(capsys, tiny_ckpt, a_file):
    assert user_error(capsys, "export", str(tiny_ckpt), "-o", str(a_file / "b")) == \
        f"error: bundle directory {a_file / 'b'} is under {a_file}, which is a regular file, not a directory"


@pytest.mark.skipif(AS_ROOT, reason="root writes into read-only directories")
def test_export_into_a_read_only_directory(capsys, tiny_ckpt, read_only_dir):
    assert "is not writable" in user_error(capsys, "export", str(tiny_ckpt), "-o", str(read_only_dir / "b"))


def test_parity_out_under_a_regular_file_fails_before_computing(capsys, tiny_ckpt, a_file, tmp_path):
    # the bundle does not even exist: the output location is checked first
    assert "is under" in user_error(capsys, "parity", str(tmp_path / "no-bundle"), "--checkpoint", str(tiny_ckpt),
                                    "--out", str(a_file / "parity"))


@pytest.mark.skipif(AS_ROOT, reason="root writes into read-only directories")
def test_parity_out_read_only_fails_before_computing(capsys, tiny_ckpt, read_only_dir, tmp_path):
    assert "is not writable" in user_error(capsys, "parity", str(tmp_path / "no-bundle"), "--out",
                                           str(read_only_dir / "parity"))


def test_eval_out_under_a_regular_file(capsys, tiny_ckpt, a_file):
    assert "is under" in user_error(capsys, "eval", str(tiny_ckpt), "--data", str(REPO / "calib_data" / "sudoku"),
                                    "--out", str(a_file / "eval"))


def test_eval_on_the_meta_device(capsys, tiny_ckpt, tmp_path):
    assert "--device meta" in user_error(capsys, "eval", str(tiny_ckpt), "--data", str(REPO / "calib_data" / "sudoku"),
                                         "--device", "meta", "--out", str(tmp_path / "eval"))


def test_train_run_dir_under_a_regular_file(capsys, a_file):
    assert "is under" in user_error(capsys, "train", "--run-dir", str(a_file / "run"), "--minutes", "0.01")


def test_bench_out_under_a_regular_file(capsys, tiny_ckpt, a_file):
    assert "--out directory" in user_error(capsys, "bench", str(tiny_ckpt), "--quick", "--out", str(a_file / "b"))


def test_convert_output_under_a_regular_file(capsys, tiny_ckpt, a_file):
    assert user_error(capsys, "convert", str(tiny_ckpt), "-o", str(a_file / "x.pt")) == \
        f"error: output file {a_file / 'x.pt'} is under {a_file}, which is a regular file, not a directory"


def test_init_output_that_is_a_directory(capsys, tmp_path):
    assert user_error(capsys, "init", "sudoku-tiny", "-o", str(tmp_path)) == \
        f"error: output file {tmp_path} is a directory"


def test_a_usage_error_exits_1_too(capsys, tiny_ckpt):
    assert user_error(capsys, "solve", str(tiny_ckpt), "--no-such-option") == \
        "error: No such option '--no-such-option'."


def test_an_empty_puzzle_file(capsys, tiny_ckpt, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n")
    assert user_error(capsys, "solve", str(tiny_ckpt), "--file", str(empty)) == "error: no puzzles found in the input"

"""Running `hrm-edge` in-process for tests: exit code, stdout, stderr; the one-line error rule."""

from __future__ import annotations

import pytest

from hrm_edge.cli.main import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def one_line_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The command failed with exactly one `error:` line (progress lines may precede it), no traceback."""
    code, _, err = run_cli(capsys, *argv)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code != 0 and len(errors) == 1 and err.strip().endswith(errors[0]) and "Traceback" not in err, err
    return errors[0]

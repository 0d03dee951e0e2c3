"""Running `hrm-edge` in-process for tests: exit code, stdout, stderr; the one-line error rule; a bundle
copy with one file's arrays replaced."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hrm_edge.cli.main import main
from hrm_edge.files import sha256_file


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


def with_arrays_replaced(src: Path, dst: Path, file: str, **arrays: Any) -> dict[str, np.ndarray]:
    """A copy of bundle `src` at `dst` whose .npz `file` has `arrays` replaced, its hash in the manifest
    updated (so only the content is wrong, not the file list); returns the original arrays."""
    shutil.copytree(src, dst)
    with np.load(dst / file) as f:
        data = {k: f[k] for k in f.files}
    np.savez_compressed(dst / file, **{**data, **arrays})
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["files"][file] = sha256_file(dst / file)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return data

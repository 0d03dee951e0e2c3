"""The wheel, installed with its dependencies into a fresh venv without torch, runs the bundle side.

Builds hrm-edge's wheel (the device wheel's code path: a clean copy of the tracked source), makes a
venv without torch, `pip install`s the wheel there with its dependencies from the index (numpy,
click, pyyaml, onnxruntime, onnx; pip's cache makes reruns quick), then runs that venv's `hrm-edge`
on a tiny bundle exported here, from a directory outside the checkout. About 40 s with a warm pip
cache on 2 cores (wheel build ~5 s, venv and install ~25 s, the three commands ~10 s).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hrm_edge.export.device_bundle import build_runtime_wheel, source_root
from tests.model_helpers import export_tiny_bundle

pytestmark = pytest.mark.slow

PUZZLE = "4...3.......6..8..........1....5..9..8....6...7.2........1.27..5.3....4.9........"
# The environment of the venv's commands: nothing that would put the checkout or this venv on sys.path.
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_runtime_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel) -> Path:
    """A fresh venv (no system site-packages) with the wheel and its dependencies installed."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, env=ENV)
    proc = subprocess.run([str(root / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                          capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return export_tiny_bundle(tmp_path_factory.mktemp("bundle"))


def _run(venv: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / argv[0]), *argv[1:]], capture_output=True, text=True, cwd=cwd, env=ENV)


def test_wheel_carries_the_tensorrt_op_tables(wheel):
    shipped = {f"hrm_edge/runtimes/trt/ops/{p.name}" for p in (source_root() / "hrm_edge/runtimes/trt/ops").iterdir()}
    assert shipped == {"hrm_edge/runtimes/trt/ops/rules.json", "hrm_edge/runtimes/trt/ops/trt-10.13.json",
                       "hrm_edge/runtimes/trt/ops/trt-10.3.json"}
    assert shipped <= set(zipfile.ZipFile(wheel).namelist())


def test_venv_has_no_torch_and_imports_hrm_edge_from_its_site_packages(venv, tmp_path):
    proc = _run(venv, "python", "-c", "import torch", cwd=tmp_path)
    assert proc.returncode == 1 and "No module named 'torch'" in proc.stderr
    proc = _run(venv, "python", "-c", "import hrm_edge, sysconfig; print(hrm_edge.__file__); "
                "print(sysconfig.get_path('purelib'))", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    module, site = proc.stdout.split()
    assert Path(site).is_relative_to(venv)
    assert Path(module) == Path(site) / "hrm_edge" / "__init__.py"


def test_check_trt_runs_from_the_installed_wheel(venv, bundle, tmp_path):
    proc = _run(venv, "hrm-edge", "check-trt", str(bundle / "segment.fp16.onnx"), "--trt", "10.3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "TensorRT 10.3: OK, 0 error(s)" in proc.stdout


def test_verify_runs_from_the_installed_wheel(venv, bundle, tmp_path):
    proc = _run(venv, "hrm-edge", "verify", str(bundle), "--graph", "segment.fp32", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "PASS segment.fp32" in proc.stdout


def test_solve_runs_from_the_installed_wheel(venv, bundle, tmp_path):
    proc = _run(venv, "hrm-edge", "solve", str(bundle), "--graph", "segment.fp32", "--json", "--puzzle", PUZZLE,
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert '"summary"' in proc.stdout

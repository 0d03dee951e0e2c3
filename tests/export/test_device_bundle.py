"""`hrm-edge export --target jetson`: a tarball with the torch-free runtime wheel that installs and runs."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from hrm_edge.cli.main import main
from hrm_edge.model.checkpoint import save_checkpoint
from hrm_edge.model.config import preset_config
from hrm_edge.model.hrm import HRM


@pytest.fixture(scope="module")
def device_bundle(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("device")
    ckpt = save_checkpoint(root / "tiny.pt", HRM(preset_config("sudoku-tiny", forward_dtype="float32")), "sudoku")
    with pytest.raises(SystemExit) as exc:
        main(["export", str(ckpt), "-o", str(root / "bundle"), "--target", "jetson", "--golden", "4"])
    assert exc.value.code == 0
    return root / "bundle"


def test_device_bundle_has_wheel_readme_and_tarball(device_bundle):
    names = {p.name for p in device_bundle.iterdir()}
    assert {"README-device.md", "manifest.json", "segment.fp16.onnx", "reference.npz"} <= names
    assert any(n.startswith("hrm_edge-") and n.endswith(".whl") for n in names)
    readme = (device_bundle / "README-device.md").read_text()
    assert "JetPack 6.1 | TensorRT 10.3" in readme and "hrm-edge build . --precision fp16" in readme
    with tarfile.open(device_bundle.with_name("bundle.tar.gz")) as tar:
        assert {f"bundle/{n}" for n in names} <= set(tar.getnames())


def test_runtime_wheel_installs_and_verifies_without_torch(device_bundle, tmp_path):
    wheel = next(device_bundle.glob("hrm_edge-*.whl"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True)
    script = ("import sys\n"
              "sys.modules['torch'] = None\n"
              f"sys.path.insert(0, {str(site)!r})\n"
              "import hrm_edge\n"
              f"assert hrm_edge.__file__.startswith({str(site)!r}), hrm_edge.__file__\n"
              "from hrm_edge.cli.main import main\n"
              f"main(['verify', {str(device_bundle)!r}, '--graph', 'segment.fp32'])\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "PASS segment.fp32" in proc.stdout
    solve = script.replace(f"main(['verify', {str(device_bundle)!r}, '--graph', 'segment.fp32'])",
                           f"main(['solve', {str(device_bundle)!r}, '--graph', 'segment.fp32', '--json', "
                           "'--puzzle', '4...3.......6..8..........1....5..9..8....6...7.2........1.27..5.3....4.9"
                           "........'])")
    proc = subprocess.run([sys.executable, "-c", solve], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert '"summary"' in proc.stdout

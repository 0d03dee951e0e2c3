"""`hrm-edge export --target jetson`: a tarball with the torch-free runtime wheel that installs and runs;
the wheel is built from a clean copy of the tracked source, never inside the checkout."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from hrm_edge.bundle import BundleError, open_bundle
from hrm_edge.export.device_bundle import BUILD_FILES, PUZZLES, build_runtime_wheel, golden_puzzles_text, source_root
from hrm_edge.puzzles.codecs import get_codec
from scripts.device_test_readme import device_commands
from tests.model_helpers import export_tiny_bundle


@pytest.fixture(scope="module")
def device_bundle(tmp_path_factory) -> Path:
    return export_tiny_bundle(tmp_path_factory.mktemp("device"), "--target", "jetson")


def test_device_bundle_has_wheel_readme_and_tarball(device_bundle):
    names = {p.name for p in device_bundle.iterdir()}
    assert {"README-device.md", "manifest.json", "segment.fp16.onnx", "reference.npz"} <= names
    assert any(n.startswith("hrm_edge-") and n.endswith(".whl") for n in names)
    readme = (device_bundle / "README-device.md").read_text()
    assert "JetPack 6.1 | TensorRT 10.3" in readme and "hrm-edge build . --precision fp16" in readme
    assert "No part of hrm-edge has run on real TensorRT yet" in readme
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
    parity = script.replace(f"main(['verify', {str(device_bundle)!r}, '--graph', 'segment.fp32'])",
                            f"main(['parity', {str(device_bundle)!r}])")
    proc = subprocess.run([sys.executable, "-c", parity], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1  # a device without torch: one error line, not an internal error
    assert proc.stderr.startswith("error: this command needs PyTorch, which is not installed") and \
        proc.stderr.count("\n") == 1


def test_golden_puzzles_file_holds_the_reference_inputs(device_bundle):
    ref = open_bundle(device_bundle).reference()
    codec = get_codec("sudoku")
    lines = (device_bundle / PUZZLES).read_text().splitlines()
    assert len(lines) == 4 and all(len(line) == 81 for line in lines)
    assert np.array_equal(codec.encode_many(lines), ref["inputs"])
    assert PUZZLES in open_bundle(device_bundle).manifest.files  # hashed like every bundle file


def test_readme_device_commands_are_the_install_and_cpu_sections(device_bundle):
    """What `make device-test` runs: the ```bash lines outside the TensorRT section, naming files the bundle has."""
    commands = device_commands((device_bundle / "README-device.md").read_text())
    wheel = next(device_bundle.glob("hrm_edge-*.whl")).name
    assert commands[0].startswith("sudo apt-get install -y python3-venv")
    assert commands[1].startswith("python3 -m venv --system-site-packages ~/hrm-edge-venv")
    assert commands[3].startswith(f"pip install ./{wheel} ")
    assert commands[4].startswith("hrm-edge verify . ")
    assert commands[5].startswith(f"hrm-edge solve . --file {PUZZLES} ")
    first = (device_bundle / PUZZLES).read_text().splitlines()[0]
    assert commands[6].startswith(f'hrm-edge solve . --puzzle "{first}" --json')
    assert len(commands) == 7 and not any("--runtime trt" in c or "hrm-edge build" in c for c in commands)


def test_readme_commands_skip_only_tensorrt_sections():
    readme = ("# t\n## Install\n```bash\na\n```\n## TensorRT (GPU)\n```bash\nb\n```\n"
              "## CPU\n```python\nc\n```\n```bash\nd\n```\n")
    assert device_commands(readme) == ["a", "d"]


@pytest.mark.parametrize("task", ["sudoku6", "maze:5"])
def test_golden_puzzles_text_reads_back_as_the_same_tokens(task):
    codec = get_codec(task)
    rng = np.random.default_rng(0)
    source = {"sudoku6": "2..536.35..1..26...612454.316.1..354\n..1.6..3..4....6..5.6..3......2....5\n",
              "maze:5": "#S  #\n# # #\n#   #\n### #\n#  G#\n\n#####\n#S  G\n#    \n     \n#####\n"}[task]
    inputs = codec.encode_many(codec.split(source))
    text = golden_puzzles_text(task, inputs, np.zeros(len(inputs), dtype=np.int64))
    assert text is not None and np.array_equal(codec.encode_many(codec.split(text)), inputs)
    assert golden_puzzles_text(task, inputs, rng.integers(1, 5, len(inputs))) is None  # ids need more than text


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` (.git excluded) -> (size, mtime in ns)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file() and ".git" not in p.relative_to(root).parts}


def _checkout_copy(dest: Path, git: bool) -> Path:
    """A copy of the checkout's `BUILD_FILES` at `dest` (with them added to a fresh git index when `git`),
    plus an untracked module and a stale build/lib file that must stay out of the wheel."""
    root = source_root()
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "--", *BUILD_FILES], capture_output=True, text=True,
                            check=True).stdout.split()
    for name in listed:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / name, dest / name)
    if git:
        subprocess.run(["git", "init", "-q", str(dest)], check=True)
        subprocess.run(["git", "-C", str(dest), "add", "."], check=True)
        (dest / "hrm_edge" / "untracked_stray.py").write_text("STRAY = 1\n")
    (dest / "build" / "lib" / "hrm_edge").mkdir(parents=True)
    (dest / "build" / "lib" / "hrm_edge" / "stale_leftover.py").write_text("STALE = 1\n")
    (dest / "hrm_edge" / "__pycache__").mkdir(exist_ok=True)
    (dest / "hrm_edge" / "__pycache__" / "cached.cpython-311.pyc").write_bytes(b"\0")
    return dest


def _read_only(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _writable(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


@pytest.mark.slow
@pytest.mark.parametrize("git", [True, False], ids=["git-checkout", "plain-directory"])
def test_wheel_is_built_from_the_tracked_source_of_a_read_only_checkout(tmp_path, git):
    src = _checkout_copy(tmp_path / "checkout", git)
    _read_only(src)
    before = _tree(src)
    try:
        wheel = build_runtime_wheel(tmp_path, root=src)
        after = _tree(src)
    finally:
        _writable(src)
    assert after == before  # nothing written into the checkout: no build/, no *.egg-info
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"hrm_edge/cli/main.py", "hrm_edge/runtimes/trt/ops/trt-10.3.json"} <= names
    assert not any("stale_leftover" in n or "__pycache__" in n for n in names)
    assert "hrm_edge/untracked_stray.py" not in names


def test_failed_wheel_build_is_one_error_line_with_pips_reason(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools>=68"]\n'
                                           'build-backend = "setuptools.build_meta"\n'
                                           '[project]\nname = "hrm-edge"\nversion = 1\n')
    with pytest.raises(BundleError) as exc:
        build_runtime_wheel(tmp_path, root=broken)
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"building the runtime wheel from {broken} failed: ")
    assert message.endswith("`project.version` must be string")

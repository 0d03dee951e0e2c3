"""Device bundles for NVIDIA Jetson: the bundle plus the torch-free runtime and instructions.

`add_device_files` runs inside `write_bundle` (before hashing), so the wheel, README and golden puzzles
(`puzzles.txt`) are covered by the manifest's sha256 list like every other file; `write_tarball` packs the
finished bundle directory as `<bundle>.tar.gz` for copying to the device.

The runtime wheel is built from a clean copy of the source in a temporary directory, never in
the checkout itself: only the files git tracks under `BUILD_FILES` (all of `BUILD_FILES` minus
caches when the source is not a git checkout), so nothing is written into the checkout (it may
be read-only) and no stale `build/lib` or untracked file can end up in the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from hrm_edge.bundle import REFERENCE, BundleError
from hrm_edge.manifest import DeviceFiles, Manifest
from hrm_edge.puzzles.base import PuzzleError
from hrm_edge.puzzles.codecs import get_codec

# What the wheel is built from, relative to the source root (pyproject.toml's readme included).
BUILD_FILES = ("pyproject.toml", "README.md", "hrm_edge")
_CACHE_PARTS = {"__pycache__", ".pytest_cache", ".ruff_cache"}
# pip's own framing lines around a build failure; the reason is the line of the backend's output.
_PIP_FRAMING = ("subprocess-exited-with-error", "metadata-generation-failed", "Failed building wheel",
                "Failed to build", "Could not build wheels", "See above", "originates from a subprocess",
                "not a problem with pip", "not pip")

# The golden puzzles of reference.npz as `solve --file` text (README-device.md solves them).
PUZZLES = "puzzles.txt"

# JetPack -> TensorRT shipped with it (NVIDIA release notes).
JETPACK_TENSORRT = {"6.1": "10.3", "6.2": "10.3", "7.0": "10.13", "7.1": "10.16"}


def source_root() -> Path:
    """The directory holding hrm-edge's pyproject.toml and the imported `hrm_edge` package: the
    source checkout (also under `pip install -e`). An install from a wheel has none."""
    root = Path(str(files("hrm_edge"))).parent
    if not (root / "pyproject.toml").is_file():
        raise BundleError(f"device bundles pack hrm-edge's own wheel, built from its source, but hrm_edge is "
                          f"installed without it (in {root}): export from a source checkout (pip install -e .)")
    return root


def source_files(root: Path) -> list[Path]:
    """The files the wheel is built from, relative to `root`: those git tracks under `BUILD_FILES`
    when `root` is a git checkout, else every file there except caches and compiled Python."""
    try:
        proc = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--", *BUILD_FILES],
                              capture_output=True, text=True)
        tracked = [Path(n) for n in proc.stdout.split("\0") if n] if proc.returncode == 0 else []
    except OSError:  # no git
        tracked = []
    if tracked:
        return [p for p in tracked if (root / p).is_file()]  # tracked but deleted in the work tree: left out
    found: list[Path] = []
    for name in BUILD_FILES:
        path = root / name
        candidates = [path] if path.is_file() else sorted(q for q in path.rglob("*") if q.is_file())
        found += [q.relative_to(root) for q in candidates
                  if not _CACHE_PARTS & set(q.parts) and q.suffix != ".pyc"]
    return found


def pip_failure_reason(output: str) -> str:
    """The line of pip's output that says why a build failed: the last line naming an error that is not
    pip's own framing ("subprocess-exited-with-error", "Failed to build one or more wheels", ...)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    reasons = [line for line in lines if "error" in line.lower() and not line.startswith(("File ", "×", "╰", "│"))
               and not any(frame in line for frame in _PIP_FRAMING)]
    return (reasons or lines or ["pip gave no output"])[-1]


def build_runtime_wheel(dest: Path, root: Path | None = None) -> Path:
    """Build hrm-edge's pure-Python wheel (no dependencies bundled) into `dest` from a clean copy of the
    source at `root` (default: `source_root()`) made in a temporary directory. Raises BundleError with
    pip's reason, on one line, when the build fails."""
    root = root or source_root()
    with tempfile.TemporaryDirectory(prefix="hrm-edge-wheel-") as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "out"
        for rel in source_files(root):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / rel, src / rel)
        # Build isolation (pip's default): the build-system requirements of pyproject.toml, from pip's index
        # and cache, whatever the running environment has installed.
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
                              capture_output=True, text=True, cwd=tmp)
        wheels = sorted(out.glob("hrm_edge-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise BundleError(f"building the runtime wheel from {root} failed: "
                              f"{pip_failure_reason(proc.stderr + proc.stdout)}")
        target = dest / wheels[0].name
        shutil.move(wheels[0], target)
    return target


def golden_puzzles_text(task: str, inputs: np.ndarray, puzzle_ids: np.ndarray) -> str | None:
    """The golden puzzles (`inputs` int64 [N, seq_len]) as a `solve --file` text, one puzzle per line (multi-line
    grids separated by a blank line), or None when `solve --file` would not read them back as the same tokens
    with puzzle id 0 (ARC: the puzzle id is part of the input)."""
    codec = get_codec(task)
    texts = [codec.decode(row) for row in inputs]
    text = "".join(f"{t}\n\n" if "\n" in t else f"{t}\n" for t in texts)
    if np.any(puzzle_ids != 0):
        return None
    try:
        again = codec.encode_many(codec.split(text))
    except PuzzleError:
        return None
    return text if again.shape == inputs.shape and np.array_equal(again, inputs) else None


def device_readme(manifest: Manifest, wheel: str, puzzles: str | None = None, first_puzzle: str | None = None) -> str:
    """README-device.md for a bundle with this manifest and runtime wheel file name; `puzzles` names the bundle's
    golden puzzles file and `first_puzzle` is the text of one of them (both optional).

    Its ```bash blocks outside the TensorRT section are the device's commands from a fresh OS to solved puzzles;
    `make device-test` runs them word for word in an aarch64 root (scripts/device_test.sh)."""
    graphs = ", ".join(sorted(manifest.graphs))
    jetpack = "\n".join(f"| JetPack {jp} | TensorRT {trt} |" for jp, trt in JETPACK_TENSORRT.items())
    model, halting = manifest.model, manifest.need_halting()
    solve_file = (f"hrm-edge solve . --file {puzzles}           # the golden puzzles, one per line"
                  if puzzles else "cat puzzles.txt | hrm-edge solve . --file -   # your puzzles, one per line")
    puzzle = first_puzzle if first_puzzle and "\n" not in first_puzzle else "<puzzle text>"
    return f"""# hrm-edge device bundle

Model: {(model.family or "hrm").upper()} ({model.parameters or 0:,} parameters), task `{manifest.task.name}`,
graphs: {graphs}. Halting: policy `{halting.default_policy}`, at most
{halting.max_steps} segments. Golden outputs of the PyTorch reference: `reference.npz`{
    f" (their puzzles as text: `{puzzles}`)" if puzzles else ""}.

## Supported

| JetPack | TensorRT |
| --- | --- |
{jetpack}

Any aarch64 or x86_64 Linux with Python 3.10 or newer runs the ONNX Runtime part (no GPU).
TensorRT engines are tied to the GPU and the TensorRT version that built them: build on the device.
Desktop GPUs with TensorRT 10.x work the same way (`--target desktop`).

## Install (from this directory)

```bash
sudo apt-get install -y python3-venv     # venv and pip (Debian, Ubuntu, JetPack); pip refuses the system Python
python3 -m venv --system-site-packages ~/hrm-edge-venv   # the system site holds JetPack's TensorRT bindings
. ~/hrm-edge-venv/bin/activate
pip install ./{wheel}   # numpy, click, pyyaml, onnxruntime, onnx from PyPI; no torch
```

## Check and solve on the CPU (ONNX Runtime)

```bash
hrm-edge verify .      # file hashes, then every graph on the golden puzzles against the PyTorch outputs
{solve_file}
hrm-edge solve . --puzzle "{puzzle}" --json   # one JSON line per puzzle
```

`verify` is the parity check on the device: closed-loop, every graph ONNX Runtime runs against the golden
outputs. An fp32 graph must be within 1e-5 (relative) of the golden logits after the first segment, then
solve the same puzzles and halt at the same segment on every one. The fp16 and INT8 graphs must pass the
export's parity gate again on its puzzles (gate_set.npz: solved agreement, halting agreement, accuracy
drop against the fp32 reference); the golden puzzles are too few for those rates, so there their agreement
is reported, and an INT8 graph must solve the golden puzzles the export host solved. It exits non-zero on
a failure.
`hrm-edge parity` re-runs the PyTorch reference (torch) and so belongs on the machine that exported the
bundle. `--policy fixed|q|threshold:<p>` chooses the halting rule and `--max-steps` the segment cap.

## TensorRT (on the device's GPU)

```bash
hrm-edge build . --precision fp16 --target orin-nano   # or orin-agx / thor; --precision int8 if present
hrm-edge verify . --runtime trt --engine engines/<gpu>-trt<version>/segment.fp16.engine
hrm-edge solve . --runtime trt --engine engines/<gpu>-trt<version>/segment.fp16.engine --file {puzzles or "puzzles.txt"}
```

The TensorRT Python bindings come with JetPack (`python3 -c "import tensorrt"`; the venv above sees them);
`cuda-python` is `pip install cuda-python`. No part of hrm-edge has run on real TensorRT yet. On aarch64
(Debian arm64 under qemu user emulation, `make device-test` in the source tree) the Install and CPU
sections above ran word for word: wheel and dependencies from PyPI, `verify` and `solve` on ONNX Runtime.
"""


def add_device_files(tmp: Path, manifest: Manifest, ck: Any = None) -> None:
    """`write_bundle` hook: add the runtime wheel, the golden puzzles as text (`PUZZLES`, when the task's text
    reads them back) and README-device.md to the bundle directory and record them in `manifest.device`
    (`ck` unused)."""
    wheel = build_runtime_wheel(tmp)
    with np.load(tmp / REFERENCE) as ref:
        text = golden_puzzles_text(manifest.task.name, ref["inputs"], ref["puzzle_ids"])
    first = None
    if text is not None:
        (tmp / PUZZLES).write_text(text)
        first = text.split("\n", 1)[0] if "\n\n" not in text else None
    (tmp / "README-device.md").write_text(device_readme(manifest, wheel.name, PUZZLES if text else None, first))
    manifest.device = DeviceFiles(runtime_wheel=wheel.name, readme="README-device.md",
                                  jetpack_tensorrt=dict(JETPACK_TENSORRT))


def write_tarball(bundle: Path) -> Path:
    """`<bundle>.tar.gz` holding the bundle directory, written atomically."""
    out = bundle.with_name(bundle.name + ".tar.gz")
    fd, tmp = tempfile.mkstemp(dir=bundle.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(bundle, arcname=bundle.name)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out

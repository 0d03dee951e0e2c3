"""Device bundles for NVIDIA Jetson: the bundle plus the torch-free runtime and instructions.

`add_device_files` runs inside `write_bundle` (before hashing), so the wheel and README are
covered by the manifest's sha256 list like every other file; `write_tarball` packs the
finished bundle directory as `<bundle>.tar.gz` for copying to the device.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from hrm_edge.bundle import BundleError

SOURCE_ROOT = Path(__file__).resolve().parents[2]

# JetPack -> TensorRT shipped with it (NVIDIA release notes).
JETPACK_TENSORRT = {"6.1": "10.3", "6.2": "10.3", "7.0": "10.13", "7.1": "10.16"}


def build_runtime_wheel(dest: Path) -> Path:
    """Build hrm-edge's pure-Python wheel (no dependencies bundled) into `dest`."""
    if not (SOURCE_ROOT / "pyproject.toml").is_file():
        raise BundleError("device bundles pack hrm-edge's own wheel and need a source checkout of hrm-edge")
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                               "-w", tmp, str(SOURCE_ROOT)], capture_output=True, text=True)
        wheels = list(Path(tmp).glob("hrm_edge-*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel produced"])[-1]
            raise BundleError(f"building the runtime wheel failed: {last}")
        target = dest / wheels[0].name
        os.replace(wheels[0], target)
    return target


def device_readme(manifest: dict[str, Any], wheel: str) -> str:
    graphs = ", ".join(sorted(manifest["graphs"]))
    jetpack = "\n".join(f"| JetPack {jp} | TensorRT {trt} |" for jp, trt in JETPACK_TENSORRT.items())
    task = manifest["task"]["name"]
    return f"""# hrm-edge device bundle

Model: {manifest['model']['family'].upper()} ({manifest['model']['parameters']:,} parameters), task `{task}`,
graphs: {graphs}. Halting: policy `{manifest['halting']['default_policy']}`, at most
{manifest['halting']['max_steps']} segments. Golden outputs of the PyTorch reference: `reference.npz`.

## Supported

| JetPack | TensorRT |
| --- | --- |
{jetpack}

TensorRT engines are tied to the GPU and the TensorRT version that built them: build on the device.
Desktop GPUs with TensorRT 10.x work the same way (`--target desktop`).

## Three commands on the device (from this directory)

```bash
pip install {wheel}          # numpy, click, pyyaml, onnxruntime; no torch
hrm-edge build . --precision fp16 --target orin-nano   # or orin-agx / thor; --precision int8 if present
hrm-edge verify . --runtime trt --engine engines/<gpu>-trt<version>/segment.fp16.engine
```

`hrm-edge verify .` (no `--runtime`) checks the file hashes and the golden puzzles on ONNX Runtime,
which needs no GPU. The TensorRT Python bindings come with JetPack (`python3 -c "import tensorrt"`);
`cuda-python` is `pip install cuda-python`.

## Solving puzzles

```bash
hrm-edge solve . --runtime trt --engine engines/.../segment.fp16.engine --file puzzles.txt
cat puzzles.txt | hrm-edge solve . --file -          # ONNX Runtime on the CPU
hrm-edge solve . --puzzle "<puzzle text>" --json     # one JSON line per puzzle
```

One puzzle per line (Sudoku: 81 characters, `.` or `0` for blanks); `--policy fixed|q|threshold:<p>`
chooses the halting rule and `--max-steps` the segment cap.
"""


def add_device_files(tmp: Path, manifest: dict[str, Any], ck: Any = None) -> None:
    """`write_bundle` hook: add the runtime wheel and README-device.md to the bundle directory (`ck` unused)."""
    wheel = build_runtime_wheel(tmp)
    (tmp / "README-device.md").write_text(device_readme(manifest, wheel.name))
    manifest["device"] = {"runtime_wheel": wheel.name, "readme": "README-device.md",
                          "jetpack_tensorrt": JETPACK_TENSORRT}


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

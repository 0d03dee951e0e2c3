# scripts/device_test.sh appends this to README-device.md's commands: it runs in the same bash, in the bundle
# directory, with the README's venv active. Each check fails the device test.

# The instruction set and the environment the README built: aarch64, no torch anywhere on the path.
python3 - <<'PY'
import importlib.metadata as md
import importlib.util
import platform
import sys

assert platform.machine() == "aarch64", f"platform.machine() is {platform.machine()!r}, not aarch64"
assert importlib.util.find_spec("torch") is None, "torch is installed: the device side must not need it"
assert sys.prefix != sys.base_prefix, "not in the README's venv"
with open("/etc/os-release") as f:
    os_release = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
print(f"device-test versions: {os_release.get('PRETTY_NAME', '?').strip(chr(34))}, {platform.machine()}, "
      f"Python {platform.python_version()}, onnxruntime {md.version('onnxruntime')}, numpy {md.version('numpy')}, "
      f"onnx {md.version('onnx')}, pip {md.version('pip')}")
PY

# `solve` on ONNX Runtime gives the golden outputs: the same solution and segment count for every golden puzzle.
hrm-edge solve . --file puzzles.txt --json > solve.jsonl
python3 - <<'PY'
import json

import numpy as np

from hrm_edge.bundle import open_bundle
from hrm_edge.puzzles.codecs import get_codec

bundle = open_bundle(".")
ref = bundle.reference()
codec = get_codec(bundle.task)
rows = [json.loads(line) for line in open("solve.jsonl") if line.strip()]
results, summary = rows[:-1], rows[-1]["summary"]
assert len(results) == len(ref["inputs"]), (len(results), len(ref["inputs"]))
golden = [codec.decode(p) for p in ref["predictions"]]
same = sum(r["solution"] == g for r, g in zip(results, golden))
same_steps = sum(r["segments"] == int(s) for r, s in zip(results, ref["steps"]))
print(f"device-test solve: {summary['runtime']}: {same}/{len(golden)} solutions and {same_steps}/{len(golden)} "
      f"segment counts identical to the golden outputs; {summary['valid']}/{summary['puzzles']} valid")
assert same == same_steps == len(golden)
assert np.array_equal(codec.encode_many(r["puzzle"] for r in results), ref["inputs"])
PY

# `parity` re-runs the PyTorch reference: without torch it must refuse with one error line, exit 1.
set +e
hrm-edge parity . > parity.out 2>&1
code=$?
set -e
cat parity.out
[ "$code" = 1 ] && [ "$(wc -l < parity.out)" = 1 ] && grep -q '^error: .*torch' parity.out
echo "device-test checks: PASS"

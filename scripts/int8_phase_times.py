"""Phase-by-phase wall times of one `hrm-edge export --int8` run, from its stderr with a seconds-since-start
prefix on every line (tqdm bars included: each refresh is a line), as JSON.

    hrm-edge export CKPT -o OUT --int8 2>&1 | python -u scripts/ts.py > log.txt
    python scripts/int8_phase_times.py log.txt -o phases.json [--uptime-before F --uptime-after F]

A bar's phase lasts from its first to its last refresh; a marker line's phase lasts until the next marker.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

BARS = {
    "calibration rollout": "calibration rollout (PyTorch)",
    "channel statistics": "channel statistics (ONNX Runtime)",
    "calibrating": "activation ranges (ONNX Runtime)",
    "GPTQ statistics": "GPTQ statistics (ONNX Runtime)",
    "sensitivity (leave one out)": "sensitivity",
    "mixed-precision search": "closed-loop search",
    "search (ONNX Runtime continuation)": "ONNX Runtime continuation",
}
MARKERS = [
    ("exporting segment.fp32 ...", "fp32 graphs and golden reference"),
    ("estimate: int8 export", "int8 pipeline start"),
    ("SmoothQuant statistics", "int8 pipeline start"),
    ("PyTorch fp32 reference", "closed-loop fp32 reference (PyTorch)"),
    ("INT8 cpu", "int8 cpu"),
    ("INT8 tensorrt", "int8 tensorrt"),
    ("  segment.int8-cpu.onnx:", "int8 cpu fused graph (fusion; own calib closed loop only without a validation gate)"),
    ("INT8 parity gate on the validation set", "validation gate (PyTorch reference + ONNX Runtime)"),
    ("parity gate of the", "validation gate: start"),
    ("reference: torch cpu fp32", "validation gate: PyTorch fp32 reference"),
    ("running segment.fp16 on", "validation gate: segment.fp16 (ONNX Runtime)"),
    ("running segment.int8-cpu on", "validation gate: segment.int8-cpu (ONNX Runtime)"),
    ("running segment.int8-cpufused on", "validation gate: segment.int8-cpufused (ONNX Runtime)"),
    ("running segment.int8-tensorrt on", "validation gate: segment.int8-tensorrt (ONNX Runtime)"),
    ("wrote ", "end"),
]
LINE = re.compile(r"^\s*(?P<t>\d+\.\d)\s(?P<text>.*)$")


def phases(lines: list[str]) -> dict:
    bars: dict[str, list[float]] = {}
    marks: list[tuple[float, str, str]] = []
    last = 0.0
    for raw in lines:
        m = LINE.match(raw)
        if not m:
            continue
        t, text = float(m["t"]), m["text"]
        last = t
        for prefix, name in BARS.items():
            if text.startswith(prefix) and "|" in text:
                key = name if not text.startswith("sensitivity") or "fake quant" not in text else "sensitivity"
                bars.setdefault(key, [t, t])[1] = t
        for prefix, name in MARKERS:
            if text.startswith(prefix) and (not marks or marks[-1][2] != name):
                marks.append((t, text[:120], name))
    segments = []
    for (t0, text, name), nxt in zip(marks, [*marks[1:], (last, "", "end")], strict=True):
        if name != "end":
            segments.append({"phase": name, "first_line": text, "start_s": t0, "seconds": round(nxt[0] - t0, 1)})
    return {"total_s": last, "by_marker": segments,
            "bars": {k: {"start_s": v[0], "seconds": round(v[1] - v[0], 1)} for k, v in bars.items()},
            "estimate_line": next((text for _, text, n in marks if n == "int8 pipeline start"
                                   and text.startswith("estimate")), None)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--uptime-before")
    ap.add_argument("--uptime-after")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    lines = Path(args.log).read_text(errors="replace").splitlines()
    out = phases(lines)
    for key in ("uptime_before", "uptime_after"):
        path = getattr(args, key)
        if path:
            out[key] = Path(path).read_text().strip()
    out["estimate_line"] = next((re.sub(r"^\s*\d+\.\d\s", "", ln) for ln in lines if "estimate: int8 export" in ln),
                                None)
    out["note"] = args.note
    Path(args.output).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

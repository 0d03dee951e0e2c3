"""Does OpenVINO accelerate hrm-edge's static Q/DQ INT8 graphs? One segment, side by side, 1 thread.

Builds, from a prepared fp32 segment graph (weight transposes folded, `fold_weight_transposes`), the two
static flavours hrm-edge's quantizer writes (`hrm_edge.quant.quantize.settings_for`): "tensorrt"
(symmetric s8 activations, zero point 0, per-channel s8 weights) and "cpu" static (u8 activations,
per-channel s8 weights), calibrated by MinMax on a few real segment inputs; then times one segment on
OpenVINO for each INT8 graph given (plus fp32 f32 and fp32 bf16 as the baselines) in interleaved rounds.
Speed only: the ranges come from `--calib` feeds, so accuracy is gated elsewhere (`hrm-edge parity`).

    python scripts/openvino_static_int8.py SEGMENT_FP32.onnx --extra dynamic=GRAPH --extra nncf=GRAPH \
        --batch 1 --batch 16 --out bench/latest/session9-openvino/static-int8.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from hrm_edge.quant.quantize import fold_weight_transposes, settings_for
from hrm_edge.runtimes.openvino.loader import compile_graph


def graph_feeds(path: str, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of a segment graph for `batch` rows: tokens zero, carries and x standard normal."""
    model = onnx.load(path, load_external_data=False)
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in model.graph.input:
        dims = [d.dim_value if d.dim_value else batch for d in i.type.tensor_type.shape.dim]
        if i.type.tensor_type.elem_type == onnx.TensorProto.INT64:
            feeds[i.name] = np.zeros(dims, np.int64)
        else:
            feeds[i.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


class _Reader(CalibrationDataReader):
    def __init__(self, items: list[dict[str, np.ndarray]]) -> None:
        self._items = iter(items)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def static_graph(fp32: str, target: str, out: Path, calib: int) -> str:
    """The static Q/DQ graph of `target` ("tensorrt" | "cpu"), MinMax over `calib` feeds of batch 1."""
    settings = settings_for(target, "static")
    prepared = out.with_suffix(".prepared.onnx")
    proto = onnx.load(fp32)
    fold_weight_transposes(proto)
    onnx.save(proto, str(prepared))
    quantize_static(str(prepared), str(out), _Reader([graph_feeds(fp32, 1, seed) for seed in range(calib)]),
                    quant_format=QuantFormat.QDQ, op_types_to_quantize=list(settings.op_types),
                    per_channel=settings.per_channel, activation_type=getattr(QuantType, settings.activation_type),
                    weight_type=getattr(QuantType, settings.weight_type), extra_options=dict(settings.extra_options))
    prepared.unlink()
    return str(out)


def time_rows(rows: dict[str, tuple[str, str]], batch: int, rounds: int, seconds: float) -> dict[str, float]:
    """Median seconds per segment of each row (graph, hint), measured in interleaved rounds."""
    requests, feeds = {}, {}
    for name, (graph, hint) in rows.items():
        requests[name] = compile_graph(graph, hint, threads=1).create_infer_request()
        feeds[name] = graph_feeds(graph, batch)
        requests[name].infer(feeds[name])
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(rounds):
        for name, request in requests.items():
            t0, n = time.perf_counter(), 0
            while n < 1 or time.perf_counter() - t0 < seconds:
                request.infer(feeds[name])
                n += 1
            times[name].append((time.perf_counter() - t0) / n)
    return {name: float(np.median(v)) for name, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fp32", help="fp32 segment graph (.onnx)")
    ap.add_argument("--extra", action="append", default=[], help="NAME=GRAPH: another INT8 graph to time")
    ap.add_argument("--batch", type=int, action="append")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--calib", type=int, default=4)
    ap.add_argument("--work", default="/tmp/ov-static-int8")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    int8 = {f"static-{t}": static_graph(args.fp32, t, work / f"segment.int8-static-{t}.onnx", args.calib)
            for t in ("tensorrt", "cpu")}
    int8.update(dict(e.split("=", 1) for e in args.extra))
    rows = {"fp32 (f32)": (args.fp32, "f32"), "fp32 (bf16)": (args.fp32, "bf16")}
    for name, graph in int8.items():
        rows[f"{name} (float bf16)"] = (graph, "bf16")
        rows[f"{name} (float f32)"] = (graph, "f32")
    report: dict[str, object] = {"fp32": args.fp32, "int8_graphs": int8, "rounds": args.rounds, "threads": 1,
                                 "batches": {}}
    for batch in args.batch or [1]:
        secs = time_rows(rows, batch, args.rounds, args.seconds)
        base = secs["fp32 (f32)"]
        report["batches"][str(batch)] = {name: {"ms": round(s * 1e3, 2), "x_fp32_f32": round(s / base, 3)}
                                         for name, s in secs.items()}
        for name, s in secs.items():
            print(f"batch {batch:3d}  {name:40s} {s * 1e3:10.2f} ms  x fp32 {s / base:.3f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

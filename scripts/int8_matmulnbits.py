"""Issue 21, session 18: ONNX Runtime's `MatMulNBits` (com.microsoft) with 8-bit weights and
`accuracy_level=4` (int8 activations quantized per block of K inside the kernel) as the cpu INT8
form: speed of the fused segment against the fused fp32 segment (batch 16, 1 thread, alternating
calls, medians) and the closed loop against the ORIGINAL checkpoint's PyTorch fp32 (policy q, INT8
gates) on the validation puzzles.

    python -m scripts.int8_matmulnbits DEMO [--block 32] [--val 256] [--reps 40] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

from hrm_edge.export import graphs
from hrm_edge.export.fuse import fuse_model
from hrm_edge.runtimes.ort.loader import make_session
from scripts.int8_val_curve import closed_loop_on, demo_pipeline, open_demo, summary


def nbits(proto: onnx.ModelProto, block: int, level: int = 4) -> onnx.ModelProto:
    q = MatMulNBitsQuantizer(proto, bits=8, block_size=block, is_symmetric=True, accuracy_level=level)
    q.process()
    return q.model.model


def count(proto: onnx.ModelProto, op: str) -> int:
    return sum(n.op_type == op for n in proto.graph.node)


def seg_times(paths: dict[str, Path], feeds: dict[str, np.ndarray], reps: int) -> dict[str, float]:
    sessions = {k: make_session(p, threads=1) for k, p in paths.items()}
    times: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(3):
        for s in sessions.values():
            s.run(None, feeds)
    for _ in range(reps):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feeds)
            times[k].append(time.perf_counter() - t)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo")
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--val", type=int, default=256)
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path("/tmp/hrm-edge-nbits"))
    args = ap.parse_args()
    ck, root = open_demo(args.demo, args.out)
    model = ck.model.set_compute_dtype("float32").eval()
    fused, _ = fuse_model(graphs.segment_proto(model, embed_inside=False))
    paths = {"fused-fp32": root / "fused.fp32.onnx", "fused-nbits8": root / f"fused.nbits8-b{args.block}.onnx"}
    onnx.save(fused, str(paths["fused-fp32"]))
    qf = nbits(fused, args.block)
    onnx.save(qf, str(paths["fused-nbits8"]))
    cfg = model.config
    rng = np.random.default_rng(0)
    z = model.initial_carry(16)
    feeds = {"x": rng.standard_normal((16, cfg.total_len, cfg.hidden_size)).astype(np.float32),
             "z_H": z[0].float().numpy(), "z_L": z[1].float().numpy()}
    ms = seg_times(paths, feeds, args.reps)
    result = {"demo": args.demo, "block": args.block, "matmul_fp32": count(fused, "MatMul"),
              "matmulnbits": count(qf, "MatMulNBits"), "segment_ms_b16_1t": ms,
              "ratio": ms["fused-nbits8"] / ms["fused-fp32"]}
    print(json.dumps(result), flush=True)
    # accuracy: the unfused segment graph (tokens inside) with the same rewrite, closed loop
    pipe, val = demo_pipeline(ck, root, "cpu")
    plain = nbits(onnx.load(str(root / "segment.fp32.onnx")), args.block)
    plain_path = root / f"segment.nbits8-b{args.block}.onnx"
    onnx.save(plain, str(plain_path))
    loop = closed_loop_on(val, pipe, args.val)
    ev = loop.evaluate(plain_path)
    result["val"] = {**summary(ev, loop.gates), "puzzles": min(args.val, len(val.inputs)),
                     "matmulnbits": count(plain, "MatMulNBits"), "matmul_left": count(plain, "MatMul")}
    print(json.dumps(result["val"]), flush=True)
    (root / f"nbits8-b{args.block}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

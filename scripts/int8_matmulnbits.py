"""Issue 21, session 18: ONNX Runtime's `MatMulNBits` (com.microsoft; 8 or 4-bit block-quantized
weights, `accuracy_level=4`: int8 activations quantized per block of K inside the kernel) as a cpu INT8
form. Times the fused segment with every constant-weight MatMul rewritten by ORT's
`MatMulNBitsQuantizer` against the fused fp32 segment (batch 16, one thread, alternating calls,
medians). Speed only: it decides whether the form is worth a closed-loop accuracy check.

    python -m scripts.int8_matmulnbits DEMO [--reps 20] [--out DIR]

Session 18, TRM maze demo (ORT 1.32, this 2-core VM, two runs): 8-bit block 32 0.95-0.98x, block 128 0.86-0.87x,
4-bit block 32 1.02-1.03x the fused fp32 segment; the MatMulNBits kernels took as long as the fp32 matmuls
(260 of 302 ms against 265 of 300). The shipped per-row MatMulInteger form ran 0.49x in the same
setting, so this form was not pursued.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

from hrm_edge.export import graphs
from hrm_edge.export.fuse import fuse_model
from hrm_edge.model.checkpoint import load_checkpoint
from hrm_edge.runtimes.ort.loader import make_session

FORMS = ((8, 32), (8, 128), (4, 32))  # (weight bits, block size along K)


def nbits(proto: onnx.ModelProto, bits: int, block: int) -> onnx.ModelProto:
    """A copy of `proto` with every constant-weight MatMul as symmetric MatMulNBits, accuracy level 4."""
    q = MatMulNBitsQuantizer(onnx.ModelProto.FromString(proto.SerializeToString()), bits=bits, block_size=block,
                             is_symmetric=True, accuracy_level=4)
    q.process()
    return q.model.model


def medians_ms(paths: dict[str, Path], feeds: dict[str, np.ndarray], reps: int) -> dict[str, float]:
    """Median wall time of one call per graph, the graphs called in turn (one thread each)."""
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
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("/tmp/hrm-edge-nbits"))
    args = ap.parse_args()
    logging.disable(logging.INFO)  # the quantizer logs every node
    root = args.out / args.demo
    root.mkdir(parents=True, exist_ok=True)
    model = load_checkpoint(f"checkpoints/{args.demo}/model.pt").model.set_compute_dtype("float32").eval()
    fused, _ = fuse_model(graphs.segment_proto(model, embed_inside=False))
    paths = {"fp32": root / "fused.fp32.onnx"}
    onnx.save(fused, str(paths["fp32"]))
    for bits, block in FORMS:
        paths[f"nbits{bits}-b{block}"] = root / f"fused.nbits{bits}-b{block}.onnx"
        onnx.save(nbits(fused, bits, block), str(paths[f"nbits{bits}-b{block}"]))
    cfg, rng = model.config, np.random.default_rng(0)
    z_H, z_L = model.initial_carry(16)
    feeds = {"x": rng.standard_normal((16, cfg.total_len, cfg.hidden_size)).astype(np.float32),
             "z_H": z_H.float().numpy(), "z_L": z_L.float().numpy()}
    ms = medians_ms(paths, feeds, args.reps)
    result = {"demo": args.demo, "batch": 16, "threads": 1, "segment_ms": ms,
              "ratio_to_fp32": {k: v / ms["fp32"] for k, v in ms.items()}}
    print(json.dumps(result, indent=2))
    (root / "nbits.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Which K of the K-unrolled graph is fastest on ONNX Runtime CPU: ms per segment for K = 1, 2, 4, 8.

    python scripts/unroll_scan.py BENCH_CACHE_DIR [--threads 1]

BENCH_CACHE_DIR is a model's directory under `<bench out>/cache/` (written by `hrm-edge bench`): it
holds the standard-op segment graph that takes x, its fused version, the embed graph and the
initial carry. K = 1 is the fused segment graph; K > 1 are composed from the standard graph and
then fused, as the bench does. The configurations are measured in interleaved rounds in one process
(ORT only), at batch 1 and 16, on calib_data/sudoku6-shaped inputs from the model's embed graph.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnx

from hrm_edge.export import graphs
from hrm_edge.export.fuse import fuse_model
from hrm_edge.runtimes.ort.loader import make_session


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    carry = np.load(args.cache / "carry_init.npz")
    standard = onnx.load(str(args.cache / "segment-x.fp32.onnx"))
    sessions = {1: make_session(args.cache / "segment-x.fp32-cpufused.onnx", threads=args.threads)}
    for k in (2, 4, 8):
        path = args.cache / f"unrolled{k}-x.scan-cpufused.onnx"
        onnx.save(fuse_model(graphs.compose_unrolled(standard, k))[0], str(path))
        sessions[k] = make_session(path, threads=args.threads)
    embed = make_session(args.cache / "embed.fp32.onnx", threads=args.threads)
    seq_len = next(i for i in embed.get_inputs() if i.name == "tokens").shape[1]
    rng = np.random.default_rng(0)
    for batch in (1, 16):
        tokens = rng.integers(1, 4, (batch, seq_len)).astype(np.int64)
        x = embed.run(["x"], {"tokens": tokens, "puzzle_ids": np.zeros(batch, np.int64)})[0]
        z = np.ascontiguousarray(np.broadcast_to(carry["H_init"].reshape(1, 1, -1), x.shape), np.float32)
        times: dict[int, list[float]] = {k: [] for k in sessions}
        for _ in range(args.rounds):
            for k, sess in sessions.items():
                feeds = {"x": x, "z_H": z, "z_L": z.copy(), **({"halted": np.zeros(batch, bool)} if k > 1 else {})}
                sess.run(None, feeds)
                t0, n = time.perf_counter(), 0
                while time.perf_counter() - t0 < 0.5:
                    sess.run(None, feeds)
                    n += 1
                times[k].append((time.perf_counter() - t0) / n / k * 1e3)
        cells = "  ".join(f"K={k}: {np.median(t):7.3f}" for k, t in times.items())
        print(f"batch {batch:2d}, ms per segment  {cells}")


if __name__ == "__main__":
    main()

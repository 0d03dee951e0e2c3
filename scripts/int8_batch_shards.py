"""Issue 21, session 21: is a batch-16 segment faster as two one-thread sessions on 8 puzzles each than as one
session with 2 threads? (The maze demo's INT8 segment gains little from a second ORT thread.)

For the bundle's `segment.fp32-cpufused` and `segment.int8-cpufused`: one session with 2 intra-op threads on
the whole batch, two one-thread sessions each on half of it (run from two Python threads; ONNX Runtime releases
the GIL), and one one-thread session on the whole batch. Random carries; the sharded outputs are checked
against the whole-batch ones; all rows timed in interleaved rounds. Ratios are to fp32 with 2 threads.

    python -m scripts.int8_batch_shards BUNDLE [--rounds 30]
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort

BATCH = 16


def _session(path: str, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def _feeds(session: ort.InferenceSession, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for inp in session.get_inputs():
        shape = [BATCH if isinstance(d, str) else d for d in inp.shape]
        feeds[inp.name] = (np.zeros(shape, np.int64) if "int64" in inp.type
                           else rng.standard_normal(shape).astype(np.float32))
    return feeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    pool = ThreadPoolExecutor(2)
    rng = np.random.default_rng(0)
    runs: dict[str, Callable[[], object]] = {}
    for graph in ("fp32-cpufused", "int8-cpufused"):
        path = f"{args.bundle}/segment.{graph}.onnx"
        whole, one, halves = _session(path, 2), _session(path, 1), (_session(path, 1), _session(path, 1))
        feeds = _feeds(whole, rng)
        parts = [{k: v[:BATCH // 2] for k, v in feeds.items()}, {k: v[BATCH // 2:] for k, v in feeds.items()}]

        def sharded(halves: tuple = halves, parts: list = parts) -> list[np.ndarray]:
            futures = [pool.submit(s.run, None, p) for s, p in zip(halves, parts, strict=True)]
            a, b = (f.result() for f in futures)
            return [np.concatenate([x, y]) for x, y in zip(a, b, strict=True)]

        diff = max(float(np.abs(x - y).max()) for x, y in zip(sharded(), whole.run(None, feeds), strict=True))
        print(f"{graph}: max |sharded - whole batch| = {diff:.3g}")
        runs[f"{graph} 2 threads"] = lambda s=whole, f=feeds: s.run(None, f)
        runs[f"{graph} 2 x 1 thread"] = sharded
        runs[f"{graph} 1 thread"] = lambda s=one, f=feeds: s.run(None, f)
    for fn in runs.values():
        fn()
    keys, times = list(runs), {k: [] for k in runs}
    for r in range(args.rounds):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            t0 = time.perf_counter()
            runs[k]()
            times[k].append(1e3 * (time.perf_counter() - t0))
    base = float(np.median(times["fp32-cpufused 2 threads"]))
    for k in keys:
        p50 = float(np.median(times[k]))
        print(f"{k:28s} p50 {p50:8.1f} ms  x fp32 2 threads {p50 / base:.3f}")


if __name__ == "__main__":
    main()

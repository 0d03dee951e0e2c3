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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from scripts.segment_timing import cpu_session, interleaved, random_feeds

BATCH = 16


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
        whole, one, halves = cpu_session(path, 2), cpu_session(path, 1), (cpu_session(path, 1), cpu_session(path, 1))
        feeds = random_feeds(whole, BATCH, rng)
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
    times = interleaved(runs, args.rounds)
    base = float(np.median(times["fp32-cpufused 2 threads"]))
    for k in times:
        p50 = float(np.median(times[k]))
        print(f"{k:28s} p50 {p50:8.1f} ms  x fp32 2 threads {p50 / base:.3f}")


if __name__ == "__main__":
    main()

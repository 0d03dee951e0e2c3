"""Helpers the segment-timing scripts share: one ONNX Runtime CPU session per graph and thread count, random
feeds for a segment graph, and interleaved timing rounds (these machines are shared; only ratios measured side
by side in one run mean anything)."""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort


def cpu_session(model: str | bytes, threads: int) -> ort.InferenceSession:
    """A CPU-EP session with `threads` intra-op threads and one inter-op thread, warnings off."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def random_feeds(session: ort.InferenceSession, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Feeds for every input of `session`: symbolic dimensions set to `batch`, int64 inputs zeros, float inputs
    standard normal."""
    feeds = {}
    for inp in session.get_inputs():
        shape = [batch if isinstance(d, str) else d for d in inp.shape]
        feeds[inp.name] = (np.zeros(shape, np.int64) if "int64" in inp.type
                           else rng.standard_normal(shape).astype(np.float32))
    return feeds


def interleaved(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Milliseconds of each zero-argument callable over `rounds` rounds, called in rotating order (two warm-up
    calls each first)."""
    for fn in runs.values():
        fn()
        fn()
    keys, times = list(runs), {k: [] for k in runs}
    for r in range(rounds):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            t0 = time.perf_counter()
            runs[k]()
            times[k].append(1e3 * (time.perf_counter() - t0))
    return times

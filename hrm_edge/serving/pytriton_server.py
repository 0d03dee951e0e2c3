"""`hrm-edge serve`: the solver model on this machine through PyTriton (NVIDIA's Python front end to
a real Triton Inference Server binary: HTTP and gRPC, KServe v2 protocol).

PyTriton's bundled server has only the Python backend, so the segment runs in this process (see
`hrm_edge.serving.local`); the model's name, inputs and outputs are those of the repository's solver
model (`hrm_edge.serving.protocol`). Requests run on `instances` threads that share one continuous
ACT loop (`SolverService`).
"""

from __future__ import annotations

import os
import signal
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from hrm_edge.errors import HrmEdgeError
from hrm_edge.serving.protocol import SOLVER_INPUTS, SOLVER_MODEL, SOLVER_OUTPUTS, dims
from hrm_edge.serving.service import SolverService

SERVE_EXTRA_HINT = "install the serving extra: pip install 'hrm-edge[serve]'"
# PyTriton's Python-backend stubs give the model's first instance 1 s (fixed in PyTriton) to publish
# its configuration on a socket; on a loaded machine they miss it (timeout, or connection refused)
# and the model fails to load: start again. The failure's traceback names this function.
HANDSHAKE_FAILED = "get_config_from_handshake_server"
START_ATTEMPTS = 3


class ServeError(HrmEdgeError):
    """The server cannot start (extra missing, port taken, server binary failed)."""


def python_lib_path() -> None:
    """Put this Python's lib directory on LD_LIBRARY_PATH (inherited by the Triton server process):
    its Python-backend stub links libpython, which a pyenv or venv Python does not put on the
    loader's path."""
    libdir = sysconfig.get_config_var("LIBDIR")
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if libdir and libdir not in paths:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *paths])


def _infer_function(service: SolverService) -> Callable[[list[Any]], list[dict[str, np.ndarray]]]:
    def infer(requests: list[Any]) -> list[dict[str, np.ndarray]]:
        return [service.solve({name: np.asarray(r[name]) for name in r}) for r in requests]

    return infer


def start_server(service: SolverService, host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001,
                 instances: int = 4, log_verbose: int = 0, exit_timeout_s: int = 10) -> Any:
    """Start a PyTriton server (returns the running `pytriton.triton.Triton`; call `.stop()`).

    exit_timeout_s: how long `.stop()` lets requests in flight finish; the server waits that long
    even when none is (its proxy models unload slowly), so tests pass a small one."""
    python_lib_path()
    try:
        from pytriton.model_config import ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig
    except ImportError as exc:
        raise ServeError(f"PyTriton is not installed ({exc}): {SERVE_EXTRA_HINT}") from None
    seq = service.seq_len
    config = TritonConfig(http_address=host, http_port=http_port, grpc_address=host, grpc_port=grpc_port,
                          metrics_port=0, allow_metrics=False, log_verbose=log_verbose,
                          exit_timeout_secs=exit_timeout_s)
    for attempt in range(1, START_ATTEMPTS + 1):
        triton = Triton(config=config)
        try:
            triton.bind(model_name=SOLVER_MODEL, infer_func=[_infer_function(service)] * max(1, instances),
                        inputs=[Tensor(name=n, dtype=np.dtype(d), shape=dims(s, seq))
                                for n, (d, s) in SOLVER_INPUTS.items()],
                        outputs=[Tensor(name=n, dtype=np.dtype(d), shape=dims(s, seq))
                                 for n, (d, s) in SOLVER_OUTPUTS.items()],
                        config=ModelConfig(batching=False))
            triton.run()
            return triton
        except Exception as exc:
            triton.stop()
            text = str(exc)
            if HANDSHAKE_FAILED in text and attempt < START_ATTEMPTS:
                print(f"the model's instances did not start in time (attempt {attempt} of {START_ATTEMPTS}): "
                      "starting again", file=sys.stderr)
                continue
            raise ServeError(f"the Triton server did not start: {text.splitlines()[0] if text else exc!r}") from None
    raise AssertionError("unreachable")


def serve_until_stopped(triton: Any, max_seconds: float | None = None, ready: Callable[[], None] | None = None) -> str:
    """Block until SIGINT/SIGTERM or `max_seconds`, then stop the server; returns why it stopped."""
    stop = threading.Event()
    reason = ["max-seconds"]

    def on_signal(signum: int, _frame: Any) -> None:
        reason[0] = signal.Signals(signum).name
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if ready is not None:
            ready()
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        while not stop.is_set():
            if not triton.is_alive():
                reason[0] = "server died"
                break
            left = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if left <= 0:
                break
            stop.wait(left)
    finally:
        triton.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
        sys.stdout.flush()
    return reason[0]

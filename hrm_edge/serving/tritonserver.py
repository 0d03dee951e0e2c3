"""The Triton Inference Server binary that the nvidia-pytriton wheel ships, run on a model repository
(`hrm_edge.serving.triton_repo`) on this machine: what `hrm-edge serve` (the in-solver repository of
its bundle), the serving tests and the load test start.

The wheel ships `tritonserver`, its Python backend and one backend stub per Python version, no
onnxruntime or tensorrt backend: so the repository's segment model runs on the Python backend here
(`--segment-backend python`) or inside the solver model (`in_process`). What the stub needs:

- the stub built for this interpreter's version, copied beside `libtriton_python.so` (a backend
  directory is prepared under a private work directory; the wheel's stays untouched);
- this interpreter's lib directory and the wheel's `nvidia_pytriton.libs` on LD_LIBRARY_PATH (the stub
  links libpython; a pyenv or venv Python is not on the loader's path);
- this environment's bin directory first on PATH: the stub's embedded interpreter finds its prefix,
  hence this environment's site-packages and hrm_edge, from the `python3` it finds there.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hrm_edge.errors import HrmEdgeError
from hrm_edge.serving.protocol import DEFAULT_SCHEDULER, SCHEDULERS, SOLVER_MODEL
from hrm_edge.serving.triton_repo import REQUEST_THREADS, SOLVER_FILE, write_repository

SERVE_EXTRA_HINT = "install the serving extra: pip install 'hrm-edge[serve]'"

READY_TIMEOUT_S = 120.0  # the server and every model must be ready within this
SHM_BYTES = 64 << 20  # the Python backend's initial shared memory per model instance (grows as needed)


class TritonServerError(HrmEdgeError):
    """The bundled server is missing or did not start (one line; the log's last lines say why)."""


@dataclass(frozen=True)
class TritonDist:
    """Where the wheel keeps the server: bin/tritonserver, backends/python, the stub, its libraries."""

    binary: Path
    python_backend: Path
    stub: Path
    libs: Path


def find_dist() -> TritonDist:
    """The server of the installed nvidia-pytriton wheel, with the stub for this Python; TritonServerError else."""
    try:
        import pytriton
    except ImportError as exc:
        raise TritonServerError(f"nvidia-pytriton is not installed ({exc}): {SERVE_EXTRA_HINT}") from None
    root = Path(pytriton.__file__).resolve().parent
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    dist = TritonDist(binary=root / "tritonserver" / "bin" / "tritonserver",
                      python_backend=root / "tritonserver" / "backends" / "python",
                      stub=root / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub",
                      libs=root.parent / "nvidia_pytriton.libs")
    for what, path in (("server binary", dist.binary), ("Python backend", dist.python_backend),
                       (f"Python {version} backend stub", dist.stub)):
        if not path.exists():
            raise TritonServerError(f"the nvidia-pytriton wheel has no {what} ({path})")
    return dist


def prepare_backends(dist: TritonDist, workdir: Path) -> Path:
    """WORKDIR/backends/python: the wheel's Python backend with this Python's stub; returns WORKDIR/backends."""
    backends = workdir / "backends"
    python = backends / "python"
    python.mkdir(parents=True)
    for f in dist.python_backend.iterdir():
        if f.is_file():
            os.symlink(f, python / f.name)
    shutil.copy(dist.stub, python / "triton_python_backend_stub")
    return backends


def server_env(dist: TritonDist) -> dict[str, str]:
    """This process's environment with what the stub needs (see the module docstring)."""
    env = dict(os.environ)
    libs = [p for p in (sysconfig.get_config_var("LIBDIR"), str(dist.libs)) if p]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, *(p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep)
                                                      if p and p not in libs)])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (the OS's choice)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class TritonServer:
    """`tritonserver` on `repository`, listening on `host` (HTTP and gRPC; metrics off), in its own
    process group; `stop()` always ends it. `start()` returns once every model is ready."""

    def __init__(self, repository: str | Path, host: str = "127.0.0.1", http_port: int = 0, grpc_port: int = 0,
                 exit_timeout_s: int = 10, log_verbose: int = 0, log_path: str | Path | None = None,
                 owned: Path | None = None) -> None:
        """owned: a directory `stop()` removes too (the repository `serve_bundle` wrote)."""
        self.owned = owned
        self.dist = find_dist()
        self.repository, self.host = Path(repository), host
        self.http_port, self.grpc_port = http_port or free_port(host), grpc_port or free_port(host)
        self.exit_timeout_s, self.log_verbose = exit_timeout_s, log_verbose
        self._work = Path(tempfile.mkdtemp(prefix="hrm-edge-tritonserver-"))
        self.log_path = Path(log_path) if log_path else self._work / "tritonserver.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self._client_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self._client_host}:{self.grpc_port}"

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    def command(self) -> list[str]:
        backends = prepare_backends(self.dist, self._work)
        shm_prefix = f"hrm-edge-{os.getpid()}-{self.http_port}"
        return [str(self.dist.binary), f"--model-repository={self.repository}", f"--backend-directory={backends}",
                f"--cache-directory={self.dist.binary.parents[1] / 'caches'}",
                f"--http-address={self.host}", f"--http-port={self.http_port}",
                f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}", "--allow-metrics=false",
                f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
                f"--backend-config=python,shm-default-byte-size={SHM_BYTES}",
                f"--exit-timeout-secs={self.exit_timeout_s}", f"--log-verbose={self.log_verbose}"]

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> TritonServer:
        """Launch the server and wait until it is ready; TritonServerError (the server stopped) otherwise."""
        cmd = self.command()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=server_env(self.dist), start_new_session=True)
        deadline = time.monotonic() + timeout_s
        try:
            while not self._ready():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    why = (f"exited with code {self.proc.returncode}" if self.proc.poll() is not None
                           else f"was not ready in {timeout_s:.0f} s")
                    raise TritonServerError(f"tritonserver {why}: {self.log_tail()}")
                time.sleep(0.1)
        except BaseException:  # not ready, or interrupted while waiting: never leave the server behind
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2.0) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self) -> str:
        """The log's last error-looking line (or its last line), for a one-line error."""
        try:
            lines = [ln.strip() for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return "no log"
        errors = [ln for ln in lines if ln.startswith("E") or "error" in ln.lower()]
        return (errors or lines or ["empty log"])[-1][:300]

    def stop(self) -> int | None:
        """SIGTERM (requests in flight get exit_timeout_s), then SIGKILL to its process group; returns
        the exit code. Removes the private work directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.exit_timeout_s + 30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self._work, ignore_errors=True)
        if self.owned is not None:
            shutil.rmtree(self.owned, ignore_errors=True)
        return None if self.proc is None else self.proc.returncode

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def serve_bundle(bundle: str | Path, host: str = "127.0.0.1", http_port: int = 0, grpc_port: int = 0, *,
                 slots: int = 16, graph: str | None = None, runtime: str = "ort", engine: str | None = None,
                 threads: int | None = None, request_threads: int = REQUEST_THREADS,
                 exit_timeout_s: int = 10, scheduler: str = DEFAULT_SCHEDULER) -> TritonServer:
    """`hrm-edge serve`: the server on BUNDLE's repository written into a private directory that `stop()`
    removes, with the segment running on the bundle where it is; returns the started server. scheduler
    (`SCHEDULERS`): "iterative" -- Triton's iterative sequence batcher puts the puzzles of all requests in
    flight into each segment's batch (`hrm_edge.serving.triton_iterative`); "in-solver" -- the solver
    model runs each request's puzzles in its own continuous loop, one request at a time. Bundle errors
    (BundleError) come before anything starts."""
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}")
    work = Path(tempfile.mkdtemp(prefix="hrm-edge-serve-"))
    try:
        repo = write_repository(bundle, work / "models", graph=graph, plan=engine, slots=slots,
                                segment_backend=scheduler, threads=threads, runtime=runtime,
                                request_threads=request_threads, copy_bundle=False)
        server = TritonServer(repo, host, http_port, grpc_port, exit_timeout_s=exit_timeout_s, owned=work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return server.start()  # stops (and removes `work`) when it fails


def served_graph(server: TritonServer) -> dict[str, Any]:
    """The solver model's solver.json in the server's repository: task, graph, slots, segment."""
    return json.loads((server.repository / SOLVER_MODEL / "1" / SOLVER_FILE).read_text())


def serve_until_stopped(server: TritonServer, max_seconds: float | None = None,
                        ready: Callable[[], None] | None = None) -> str:
    """Block until SIGINT/SIGTERM, `max_seconds` or the server's death, then stop the server; returns why
    it stopped ("SIGINT", "SIGTERM", "max-seconds" or "server died")."""
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
            if not server.is_alive():
                reason[0] = "server died"
                break
            left = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if left <= 0:
                break
            stop.wait(left)
    finally:
        server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
        sys.stdout.flush()
    return reason[0]


def main(argv: list[str] | None = None) -> None:
    """`python -m hrm_edge.serving.tritonserver REPOSITORY`: serve a repository on this machine with the
    wheel's tritonserver until SIGINT/SIGTERM or --max-seconds (one `error:` line if it cannot start)."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__.splitlines()[0] if main.__doc__ else None)
    p.add_argument("repository")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--max-seconds", type=float)
    args = p.parse_args(argv)
    try:
        server = TritonServer(args.repository, args.host, args.http_port, args.grpc_port).start()
    except TritonServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)

    def ready() -> None:
        print(f"serving {args.repository} on {server.http_url} and {server.grpc_url} (log: {server.log_path})",
              file=sys.stderr)

    print(f"stopped ({serve_until_stopped(server, args.max_seconds, ready)})", file=sys.stderr)


if __name__ == "__main__":
    main()

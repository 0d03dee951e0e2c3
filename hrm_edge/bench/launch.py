"""The orchestrator's side of the measurement processes (`hrm_edge.bench.worker`): a one-shot job
(`run_worker`) or a persistent `--serve` worker driven request by request (`Worker`)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from typing import Any

from hrm_edge.bench import REPO
from hrm_edge.bench.pausing import Pauser, wait_quiet


def run_worker(job: dict[str, Any], pauser: Pauser, timeout: float, quiet_wait: float) -> dict[str, Any]:
    """Run one worker job (see `hrm_edge.bench.worker`); returns its result or {"error": ...}."""
    from hrm_edge.bench.worker import RESULT_MARK

    quiet = wait_quiet(quiet_wait) if quiet_wait > 0 else None
    cmd = [sys.executable, "-m", "hrm_edge.bench.worker"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    t0 = time.monotonic()
    with pauser.paused() as pids:
        try:
            proc = subprocess.run(cmd, input=json.dumps(job), capture_output=True, text=True, timeout=timeout,
                                  env=env, cwd=str(REPO))
        except subprocess.TimeoutExpired:
            return {"error": f"worker timed out after {timeout:.0f} s"}
    wall = time.monotonic() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"worker exit {proc.returncode}: {tail[:300]}"}
    result = json.loads(lines[-1][len(RESULT_MARK):])
    result["worker_wall_s"] = round(wall, 2)
    result["paused_pids"] = len(pids)
    result["paused_throughout"] = bool(pids) and wall < pauser.max_seconds
    result["foreign_before"] = quiet
    return result


class Worker:
    """A persistent `hrm_edge.bench.worker --serve` process holding one loaded runtime configuration."""

    def __init__(self, job: dict[str, Any], timeout: float) -> None:
        import tempfile

        self.timeout = timeout
        self._err = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen([sys.executable, "-m", "hrm_edge.bench.worker", "--serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True,
                                     bufsize=1, cwd=str(REPO), env={**os.environ, "PYTHONWARNINGS": "ignore"})
        self.error: str | None = None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        self.loaded: dict[str, Any] | None = None  # the load reply: `wait_loaded()`

    def wait_loaded(self) -> dict[str, Any]:
        if self.loaded is None:
            self.loaded = self._read()
        return self.loaded

    def _read(self) -> dict[str, Any]:
        import selectors

        from hrm_edge.bench.worker import RESULT_MARK

        if self.error:
            return {"error": self.error}
        deadline = time.monotonic() + self.timeout
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            while time.monotonic() < deadline:
                if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    break
                line = self.proc.stdout.readline()
                if not line:  # the worker died
                    self._err.seek(0)
                    tail = (self._err.read().strip().splitlines() or ["no output"])[-1]
                    self.error = f"worker exit {self.proc.wait()}: {tail[:300]}"
                    return {"error": self.error}
                if line.startswith(RESULT_MARK):
                    out = json.loads(line[len(RESULT_MARK):])
                    if "error" in out:
                        self.error = out["error"]
                    return out
            self.error = f"worker timed out after {self.timeout:.0f} s"
            self.proc.kill()
            return {"error": self.error}
        finally:
            sel.close()

    def request(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.wait_loaded()
        if self.error:
            return {"error": self.error}
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self.proc.poll() is None:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:  # busy (interrupted mid-request): kill it
            self.proc.kill()
            self.proc.wait()
        self._err.close()

"""Keeping other processes off the cores while `hrm-edge bench` measures: SIGSTOP/SIGCONT of
processes matching a command-line pattern (`Pauser`), and waiting for the machine to go quiet."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

PAUSE_PATTERN = "hrm-edge train"


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def find_processes(pattern: str) -> list[int]:
    """PIDs whose command line contains `pattern` (never this process or its ancestors)."""
    mine = _ancestors()
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        line = " ".join(a.decode(errors="replace") for a in argv if a)
        # a shell whose script mentions the pattern is not the process itself
        exe = Path(argv[0].decode(errors="replace")).name if argv and argv[0] else ""
        if pattern in line and exe not in ("sh", "bash", "dash", "zsh", "timeout", "pgrep", "grep"):
            found.append(int(entry.name))
    return sorted(found)


class Pauser:
    """SIGSTOP processes matching `patterns` while a measurement runs, for at most `max_seconds`
    (a detached watchdog sends SIGCONT even if this process dies); SIGCONT in a `finally`."""

    def __init__(self, patterns: tuple[str, ...], max_seconds: float) -> None:
        self.patterns, self.max_seconds = patterns, max_seconds
        self.paused_seconds = 0.0

    @contextlib.contextmanager
    def paused(self) -> Iterator[list[int]]:
        pids = sorted({p for pat in self.patterns for p in find_processes(pat)}) if self.patterns else []
        if not pids:
            yield []
            return
        ids = " ".join(map(str, pids))
        watchdog = subprocess.Popen(["sh", "-c", f"sleep {int(self.max_seconds)}; kill -CONT {ids} 2>/dev/null"],
                                    start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        try:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGSTOP)
            yield pids
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGCONT)
            watchdog.kill()
            watchdog.wait()
            self.paused_seconds += time.monotonic() - t0


def wait_quiet(max_wait: float, threshold: float = 0.15) -> float | None:
    """Wait (up to `max_wait` s) until other processes use < `threshold` of the cores; last share."""
    from hrm_edge.bench.worker import foreign_load

    deadline = time.monotonic() + max_wait
    share = foreign_load(0.3)
    while share is not None and share >= threshold and time.monotonic() < deadline:
        share = foreign_load(0.5)
    return share

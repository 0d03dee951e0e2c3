"""Progress of a long closed-loop run (the parity gate, `verify`'s re-run gate, the INT8 closed loop) on
stderr: `hrm_edge.act.Progress` made visible. Torch-free; tqdm is imported lazily and optional."""

from __future__ import annotations

import sys
import time


class ClosedLoopProgress:
    """Progress of one closed-loop run (`hrm_edge.act.Progress`) on stderr: `what` over `puzzles` puzzles
    in chunks of `batch`, each chunk at most `max_steps` segment calls. On a terminal, a tqdm bar of
    segment calls out of the most the run can take (a chunk that halts early skips its remaining ones, so
    the time left it shows is an upper bound); elsewhere (CI logs, pipes) one line every `every_s`
    seconds, the first after `every_s`, so a short run prints nothing. Disabled: silent. A context
    manager."""

    def __init__(self, what: str, puzzles: int, batch: int, max_steps: int, enabled: bool = True,
                 every_s: float = 30.0) -> None:
        self.what, self.puzzles, self.max_steps, self.every_s = what, puzzles, max_steps, every_s
        self.enabled = enabled
        self.total = -(-puzzles // max(batch, 1)) * max_steps
        self.done_puzzles = self.done_segments = self._chunks = 0
        self._start = self._last = time.monotonic()
        self._bar = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self._bar = tqdm(desc=what, total=self.total, unit=" seg", file=sys.stderr, dynamic_ncols=True,
                             leave=False)

    def __enter__(self) -> ClosedLoopProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()

    def segment(self) -> None:
        self._advance(1)

    def chunk_done(self, puzzles: int) -> None:
        self.done_puzzles += puzzles
        self._chunks += 1
        self._advance(self._chunks * self.max_steps - self.done_segments)  # to the chunk's boundary
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self.done_puzzles}/{self.puzzles} puzzles", refresh=True)

    def _advance(self, n: int) -> None:
        self.done_segments += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if self.enabled and now - self._last >= self.every_s:
            self._last = now
            print(f"{self.what}: {self.done_puzzles}/{self.puzzles} puzzles done, {self.done_segments} of at most "
                  f"{self.total} segment calls, {now - self._start:.0f} s", file=sys.stderr, flush=True)

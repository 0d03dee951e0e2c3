"""How long `export --int8` will take, from one segment timed on this machine, printed before the
long phases (issue 21: at 27M parameters the export runs for most of an hour on two cores).

Every long phase is a number of puzzle-segments (one puzzle through one ACT segment) times the
measured cost of one fp32 PyTorch puzzle-segment `c` (`time_segment`):
- calibration: the fp32 rollout, N puzzles x T segments (it also yields SmoothQuant's statistics and
  the closed-loop reference); static flavours add one ONNX Runtime range pass over at most N x T samples;
- sensitivity: only when the all-int8 graph fails the gate: one open-loop pass per weight site over
  `sensitivity_per_step` samples of each step (the fake-quant model costs about one fp32 segment);
- search: at most `max_evals` closed-loop runs of N puzzles x T segments;
- gate: one ONNX Runtime closed loop on the calibration puzzles per INT8 graph that gets one
  (`calib_loops`: one per flavour; cpu's fused graph too when no validation gate follows), and the
  export's validation gate on `gate_puzzles` (0: none follows): the PyTorch reference, then every gated
  graph (`int8_graphs`: one per flavour plus cpu's fused graph; `gate_graphs`: those and the FP16 one; on
  ONNX Runtime's CPU EP an FP16 segment costs about an FP32 one: 1.04x on the seeded 27M, 1 thread,
  batch 16).
The closed-loop runs count every puzzle for all T segments, so search and gate are upper bounds (halting
puzzles stop early). The search's bound and `gate_bound` count every segment at the fp32 PyTorch cost;
`gate`, the likely figure the headline uses, counts an ONNX Runtime INT8 segment at `INT8_COST` of it. Measured on the
HRM 6x6 demo (bench/latest/session9-scale, 1024 puzzles, 100 ms per puzzle-segment under load):
calibration estimated 13.9 min, ran 14.3 min; gate bound 20 min, ran 1.5 min; search bound 218 min,
ran 8.4 min (16 closed-loop runs). Seeded 27M, quiet: 89 ms per puzzle-segment, calibration 13 min
estimated, 12.5 ran; gate bound 37 min, 21.6 ran; whole export 39.8 min. Seeded 27M, session 16 (two
INT8 cpu graphs, the fused one with its own calibration loop, and the FP16 graph in the validation gate;
114 ms per puzzle-segment timed): calibration 16 min estimated, 17.7 ran (a test run shared the cores);
gate ~56 min (<= 93) with this formula, 42.3 ran; whole export 65.3 min. Session 17, the fused graph left to
the validation gate (`calib_loops` 1; 97.7 ms timed): calibration 14 min estimated, 13.0 ran; gate ~43
(<= 67) min estimated, 32.5 ran for the validation gate and 5.8 for the INT8 cpu phase (quantize and its
calibration closed loop); whole export ~56 min estimated, 54.2 ran (bench/latest/session17-scale).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch


@torch.inference_mode()
def time_segment(model: Any, tokens: np.ndarray, puzzle_ids: np.ndarray, batch: int = 32, repeats: int = 3) -> float:
    """Seconds of one fp32 PyTorch puzzle-segment: one segment of the first `batch` calibration
    puzzles (after a warm-up segment of the same shape), divided by the batch; the fastest of `repeats`
    timed segments. Measured on the seeded 27M (quiet machine): 211 ms per puzzle timed at batch 16
    after a one-puzzle warm-up, against 88 ms in the export's rollout (batch 64); the first call of a
    shape pays for its allocations. One timed segment is also at the mercy of a moment's load: on the
    TRM sudoku6 demo at load 4-6 one segment gave 200.8 ms per puzzle, the rollout then ran at ~50 ms
    and the export took 9 min against an estimate of 124."""
    b = max(1, min(batch, len(tokens)))
    t = torch.from_numpy(np.ascontiguousarray(tokens[:b], np.int64))
    p = torch.from_numpy(np.ascontiguousarray(puzzle_ids[:b], np.int64))
    device = next(model.parameters()).device
    t, p = t.to(device), p.to(device)
    z_H, z_L = model.initial_carry(b, device)
    model.segment(z_H, z_L, t, p)
    best = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        model.segment(z_H, z_L, t, p)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best / b


# An ONNX Runtime INT8 closed-loop segment against one fp32 PyTorch segment, both on the CPU. Seeded 27M,
# 512 puzzles x 16 segments, 2 threads, session 16: torch fp32 reference 761 s, fp16 graph on ORT 722 s,
# int8-cpu 283 s (0.37x), int8-cpufused 240 s (0.32x).
INT8_COST = 0.4


@dataclass
class Estimate:
    """Seconds per phase (see the module docstring); `segment_seconds`: the measured unit; `gate`: likely,
    `gate_bound`: at most."""

    segment_seconds: float
    calibration: float
    sensitivity: float
    search: float
    gate: float
    gate_bound: float

    @property
    def total(self) -> float:
        """At most: every phase at its bound."""
        return self.calibration + self.sensitivity + self.search + self.gate_bound

    def line(self) -> str:
        """The one line `export --int8` prints before the long phases."""
        def m(seconds: float) -> str:
            return f"{seconds / 60:.1f}" if seconds < 600 else f"{seconds / 60:.0f}"

        return (f"estimate: int8 export ~{m(self.calibration + self.gate)} min, at most {m(self.total)} min "
                f"(calibration {m(self.calibration)}, sensitivity {m(self.sensitivity)}, search <= {m(self.search)}, "
                f"gate ~{m(self.gate)} (<= {m(self.gate_bound)}) min; sensitivity and search run only if the "
                "all-int8 graph fails its gate; "
                f"one segment measured here: {1e3 * self.segment_seconds:.1f} ms per puzzle)")

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in asdict(self).items()} | {"total": round(self.total, 3)}


def estimate_export(segment_seconds: float, *, puzzles: int, max_steps: int, sites: int, targets: int = 1,
                    static_targets: int = 0, sensitivity_per_step: int = 8, gptq_per_step: int = 16,
                    max_evals: int = 16, gate_puzzles: int = 0, int8_graphs: int | None = None,
                    gate_graphs: int | None = None, calib_loops: int | None = None) -> Estimate:
    """The phases' seconds from the cost of one puzzle-segment (see the module docstring);
    `int8_graphs` defaults to `targets`, `gate_graphs` and `calib_loops` to `int8_graphs`."""
    c, n, T, g = segment_seconds, puzzles, max_steps, gate_puzzles
    int8_graphs = targets if int8_graphs is None else int8_graphs
    gate_graphs = int8_graphs if gate_graphs is None else gate_graphs
    calib_loops = int8_graphs if calib_loops is None else calib_loops
    calibration = c * (n * T + (n * T if static_targets else 0) + gptq_per_step * T)
    sensitivity = c * targets * (sites + 1) * sensitivity_per_step * T
    search = c * targets * max_evals * n * T
    others = gate_graphs - int8_graphs  # FP16: about an fp32 segment on ONNX Runtime's CPU EP
    gate = c * (INT8_COST * (calib_loops * n + int8_graphs * g) * T + (1 + others) * g * T)
    gate_bound = c * (calib_loops * n * T + (1 + gate_graphs) * g * T)
    return Estimate(c, calibration, sensitivity, search, gate, gate_bound)


__all__ = ["INT8_COST", "Estimate", "estimate_export", "time_segment"]

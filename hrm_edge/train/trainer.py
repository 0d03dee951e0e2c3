"""HRM training recipe scaled to a CPU (or one GPU): deep supervision over ACT segments.

What matches the official recipe (github sapientinc/HRM, `pretrain.py` + `losses.py`):
- a persistent batch of carries; each optimizer step runs ONE segment for every slot, and
  slots whose puzzle halted are refilled with new puzzles (deep supervision, carry detached);
- one-step gradient inside a segment (only the last L and H updates build a graph);
- loss = mean-per-puzzle token cross-entropy (stablemax or softmax) + 0.5 * (BCE(q_halt,
  "prediction exactly right") + BCE(q_continue, bootstrapped target from an extra no-grad
  forward of the next segment));
- training halting: q_halt > q_continue, with exploration (a random minimum of 2..max steps
  with probability halt_exploration_prob), always at halt_max_steps;
- AdamW (betas 0.9/0.95) with linear warm-up; the puzzle embedding is a buffer with its own group.

Departures (recorded on the checkpoint card): on-the-fly augmented puzzles with a givens
curriculum instead of a fixed augmented dataset; constant LR after warm-up (optionally a linear
cool-down before max_steps, `cooldown_steps`); plain AdamW on
the puzzle embedding instead of sign-SGD.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hrm_edge.act import parse_policy, solve_in_batches
from hrm_edge.model import create_model
from hrm_edge.model.checkpoint import save_checkpoint, write_official_layout
from hrm_edge.model.config import HRMConfig, TRMConfig
from hrm_edge.model.runner import TorchSegmentRunner
from hrm_edge.train.data import SudokuSampler


@dataclass
class TrainConfig:
    """Optimisation and curriculum settings of one run (stored in the run directory)."""

    task: str = "sudoku"
    batch_size: int = 64
    lr: float = 1e-3
    puzzle_emb_lr: float = 1e-2
    weight_decay: float = 0.1
    warmup_steps: int = 200
    # Linear LR cool-down to `cooldown_min` x lr over the last `cooldown_steps` before max_steps
    # (0 = constant LR after warm-up, as the official recipe).
    cooldown_steps: int = 0
    cooldown_min: float = 0.05
    loss: str = "stablemax"
    max_steps: int = 10_000_000
    max_minutes: float = 60.0
    eval_every: int = 500
    checkpoint_every: int = 500
    seed: int = 0
    compile: bool = False
    threads: int = 0
    # Curriculum: givens ~ Uniform[lo, lo + span]; lo drops by 1 when the running exact
    # accuracy of halted training puzzles exceeds `curriculum_acc`, down to `min_givens`.
    start_givens: int = 60
    min_givens: int = 17
    givens_span: int = 20
    curriculum_acc: float = 0.8
    # Share of each refill drawn from the whole range [min_givens, lo + span], so hard puzzles
    # are seen from the start.
    hard_fraction: float = 0.25
    extra: dict[str, Any] = field(default_factory=dict)


def lr_scale(step: int, cfg: TrainConfig) -> float:
    """LR multiplier at optimizer step `step` (0-based): linear warm-up, constant, optional linear cool-down."""
    scale = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    if cfg.cooldown_steps:
        left = cfg.max_steps - step
        scale *= max(cfg.cooldown_min, min(1.0, left / cfg.cooldown_steps))
    return scale


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log of the stablemax s(x)/sum s(x), s(x) = 1/(1-x) for x < 0 else x + 1 (fp64)."""
    s = torch.where(x < 0, 1 / (1 - x + 1e-30), x + 1)
    return torch.log(s / s.sum(dim=dim, keepdim=True))


def token_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token loss [B, S] for logits [B, S, V] and labels [B, S] (label 0 = PAD is ignored)."""
    mask = labels != 0
    if kind == "stablemax":
        logp = log_stablemax(logits.double())
        loss = -logp.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        return torch.where(mask, loss, 0.0).float()
    loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none")
    return torch.where(mask, loss.view(labels.shape), 0.0)


@dataclass(frozen=True)
class SegmentStep:
    """One training segment as a loss callback (`Trainer(loss_fn=...)`) sees it. B ACT slots, S tokens,
    H hidden, V vocabulary. The carry entering the segment is detached; the outputs carry the
    one-step gradient. `task_loss` is the trainer's own loss of this step (scalar, mean over slots)."""

    tokens: torch.Tensor  # [B, S] int64 inputs
    labels: torch.Tensor  # [B, S] int64, 0 = PAD
    carry_h_in: torch.Tensor  # z_H entering the segment [B, P, H]
    carry_l_in: torch.Tensor  # z_L entering the segment
    carry_h: torch.Tensor  # z_H leaving the segment
    logits: torch.Tensor  # [B, S, V]
    q_halt: torch.Tensor  # [B]
    q_cont: torch.Tensor  # [B]
    task_loss: torch.Tensor


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


class Trainer:
    """Owns the model, optimizer, the persistent ACT batch and the run directory."""

    def __init__(self, model_config: HRMConfig | TRMConfig, cfg: TrainConfig, sampler: SudokuSampler, run_dir: Path,
                 val: tuple[np.ndarray, np.ndarray] | None = None, device: str = "cpu",
                 loss_fn: Callable[[SegmentStep], torch.Tensor] | None = None) -> None:
        """loss_fn: replaces the loss of each step (e.g. distillation, `hrm_edge.quant.distill`); None: the
        recipe's loss. Halting, refills and the reported statistics stay the trainer's either way."""
        self.loss_fn = loss_fn
        self.cfg, self.sampler, self.run_dir, self.val, self.device = cfg, sampler, Path(run_dir), val, device
        self.run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        self.model = create_model(model_config, compute_dtype=model_config.forward_dtype).to(device).train()
        self.step = 0
        self.puzzles_seen = 0
        self.elapsed = 0.0
        self.lo = cfg.start_givens
        self.acc_ema = 0.0
        params = [p for p in self.model.parameters()]
        groups = [{"params": params, "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
        if model_config.puzzle_emb_ndim > 0:
            emb = self.model.inner.puzzle_emb.weights
            emb.requires_grad_(True)
            groups.append({"params": [emb], "lr": cfg.puzzle_emb_lr, "weight_decay": cfg.weight_decay})
        self.opt = torch.optim.AdamW(groups, betas=(0.9, 0.95))
        self.base_lrs = [g["lr"] for g in groups]
        self.history: list[dict[str, Any]] = []
        self._segment = self._make_segment_fn()
        self._reset_batch()

    # ------------------------------------------------------------------ state
    def _make_segment_fn(self):
        def seg(z_H, z_L, x):
            z_H, z_L = self.model.reason(z_H, z_L, x, one_step_grad=True)
            return (z_H, z_L, *self.model.heads(z_H))

        return torch.compile(seg, dynamic=False) if self.cfg.compile else seg

    def _reset_batch(self) -> None:
        b, cfg = self.cfg.batch_size, self.model.config
        self.tokens = torch.zeros(b, cfg.seq_len, dtype=torch.long, device=self.device)
        self.labels = torch.zeros_like(self.tokens)
        self.steps = torch.zeros(b, dtype=torch.long, device=self.device)
        self.halted = torch.ones(b, dtype=torch.bool, device=self.device)
        self.z_H, self.z_L = self.model.initial_carry(b, self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                "puzzles_seen": self.puzzles_seen, "elapsed": self.elapsed, "lo": self.lo,
                "acc_ema": self.acc_ema, "torch_rng": torch.get_rng_state(),
                "np_rng": json.dumps(self.sampler.rng.bit_generator.state), "history": json.dumps(self.history),
                "batch": {"tokens": self.tokens, "labels": self.labels, "steps": self.steps, "halted": self.halted,
                          "z_H": self.z_H, "z_L": self.z_L}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.step, self.puzzles_seen, self.elapsed = state["step"], state["puzzles_seen"], state["elapsed"]
        self.lo, self.acc_ema = state["lo"], state["acc_ema"]
        torch.set_rng_state(state["torch_rng"])
        self.sampler.rng.bit_generator.state = json.loads(state["np_rng"])
        self.history = json.loads(state["history"])
        batch = state.get("batch")
        # same batch size: continue the in-flight puzzles exactly
        if batch is not None and batch["tokens"].shape == self.tokens.shape:
            self.tokens, self.labels, self.steps = batch["tokens"], batch["labels"], batch["steps"]
            self.halted, self.z_H, self.z_L = batch["halted"], batch["z_H"], batch["z_L"]

    # ------------------------------------------------------------------ one step
    def _refill(self) -> None:
        """Give halted slots a new puzzle and the initial carry (official `reset_carry`)."""
        idx = torch.nonzero(self.halted).flatten()
        if len(idx) == 0:
            return
        n2 = self.model.config.seq_len
        lo = self.lo
        hi = min(lo + self.cfg.givens_span, n2 - 4)
        hard = self.sampler.rng.random(len(idx)) < self.cfg.hard_fraction
        inputs, labels = np.empty((len(idx), n2), np.int64), np.empty((len(idx), n2), np.int64)
        for mask, low in ((hard, self.cfg.min_givens), (~hard, lo)):
            if mask.any():
                inputs[mask], labels[mask], _ = self.sampler.sample(int(mask.sum()), low, hi)
        self.tokens[idx] = torch.from_numpy(inputs).to(self.device)
        self.labels[idx] = torch.from_numpy(labels).to(self.device)
        self.steps[idx] = 0
        h0, l0 = self.model.initial_carry(len(idx), self.device)
        self.z_H[idx], self.z_L[idx] = h0, l0
        self.puzzles_seen += len(idx)

    def train_step(self) -> dict[str, float]:
        cfg, mcfg = self.cfg, self.model.config
        self._refill()
        ids = torch.zeros(len(self.tokens), dtype=torch.long, device=self.device)
        for g, base in zip(self.opt.param_groups, self.base_lrs, strict=True):
            g["lr"] = base * lr_scale(self.step, cfg)
        x = self.model.embed(self.tokens, ids)
        z_H_in, z_L_in = self.z_H, self.z_L
        z_H, z_L, logits, q_halt, q_cont = self._segment(z_H_in, z_L_in, x)
        self.z_H, self.z_L = z_H.detach(), z_L.detach()
        self.steps += 1
        with torch.no_grad():
            correct = (logits.argmax(-1) == self.labels).all(-1)
            last = self.steps >= mcfg.halt_max_steps
            halted = last | (q_halt > q_cont)
            explore = torch.rand(len(halted), device=self.device) < mcfg.halt_exploration_prob
            min_steps = explore * torch.randint(2, mcfg.halt_max_steps + 1, halted.shape, device=self.device)
            halted = halted & (self.steps >= min_steps)
            target_cont = None
            if not getattr(mcfg, "no_ACT_continue", False):  # TRM's default halts on q_halt alone
                nz_H, _ = self.model.reason(self.z_H, self.z_L, x.detach())
                _, nq_halt, nq_cont = self.model.heads(nz_H)
                target_cont = torch.sigmoid(torch.where(last, nq_halt, torch.maximum(nq_halt, nq_cont)))
        lm = (token_loss(logits, self.labels, cfg.loss).sum(-1) / (self.labels != 0).sum(-1).clamp_min(1)).sum()
        q_halt_loss = F.binary_cross_entropy_with_logits(q_halt, correct.float(), reduction="sum")
        q_cont_loss = (F.binary_cross_entropy_with_logits(q_cont, target_cont, reduction="sum")
                       if target_cont is not None else torch.zeros((), device=self.device))
        loss = (lm + 0.5 * (q_halt_loss + q_cont_loss)) / len(self.tokens)
        if self.loss_fn is not None:
            loss = self.loss_fn(SegmentStep(self.tokens, self.labels, z_H_in, z_L_in, z_H, logits,
                                            q_halt, q_cont, loss))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1
        self.halted = halted
        done = halted.sum().item()
        if done:
            acc = correct[halted].float().mean().item()
            self.acc_ema = 0.98 * self.acc_ema + 0.02 * acc
        if self.acc_ema > cfg.curriculum_acc and self.lo > cfg.min_givens:
            self.lo -= 1
            self.acc_ema = 0.5 * cfg.curriculum_acc
        return {"loss": loss.item(), "lm": lm.item() / len(self.tokens), "acc_ema": self.acc_ema,
                "halted": done, "mean_steps": self.steps.float().mean().item()}

    # ------------------------------------------------------------------ eval / save
    def evaluate(self, max_puzzles: int = 512) -> dict[str, float]:
        if self.val is None:
            return {}
        inputs, labels = self.val[0][:max_puzzles], self.val[1][:max_puzzles]
        self.model.eval()
        runner = TorchSegmentRunner(self.model, self.device)
        out = {}
        for policy in ("fixed", "q"):
            res = solve_in_batches(runner, inputs, np.zeros(len(inputs), np.int64), parse_policy(policy),
                                   self.model.config.halt_max_steps, batch_size=256)
            out[f"exact_{policy}"] = float((res.predictions == labels).all(-1).mean())
            out[f"token_{policy}"] = float((res.predictions == labels).mean())
            out[f"segments_{policy}"] = float(res.steps.mean())
        self.model.train()
        return out

    def save(self, card: dict[str, Any]) -> None:
        """Resume state, single-file checkpoint and official-layout checkpoint, atomically each."""
        tmp = self.run_dir / "train_state.pt.tmp"
        torch.save(self.state_dict(), tmp)
        tmp.replace(self.run_dir / "train_state.pt")
        was_grad = None
        if self.model.config.puzzle_emb_ndim > 0:
            was_grad = self.model.inner.puzzle_emb.weights.requires_grad
            self.model.inner.puzzle_emb.weights.requires_grad_(False)
        save_checkpoint(self.run_dir / "model.pt", self.model, self.cfg.task,
                        provenance={"trained_by": "hrm-edge train", "step": self.step}, card=card)
        official = self.run_dir / "official"
        for old in official.glob("step_*"):
            old.unlink()
        write_official_layout(official, self.model, self.step, data_path=f"data/{self.cfg.task}",
                              extra_config={"lr": self.cfg.lr, "seed": self.cfg.seed})
        if was_grad:
            self.model.inner.puzzle_emb.weights.requires_grad_(True)

    def _lr_departure(self) -> str:
        cfg = self.cfg
        if not cfg.cooldown_steps:
            return "constant LR after warm-up"
        return (f"LR cooled down linearly to {cfg.cooldown_min:g}x over steps "
                f"{cfg.max_steps - cfg.cooldown_steps}..{cfg.max_steps} (the official recipe keeps it constant)")

    def _halting_departure(self) -> list[str]:
        """A TRM trained with HRM's q_continue head departs from the TRM recipe (which halts on q_halt alone)."""
        mcfg = self.model.config
        if mcfg.family != "trm" or getattr(mcfg, "no_ACT_continue", True):
            return []
        return ["HRM's halting for a TRM (no_ACT_continue false): halt when q_halt > q_continue, q_continue "
                "trained on the bootstrapped target from one extra no-grad segment"]

    def _uses_givens(self) -> bool:
        """Sudoku has a givens curriculum; generated mazes have none."""
        return not self.cfg.task.startswith("maze")

    def card(self) -> dict[str, Any]:
        data = ("on-the-fly augmented puzzles with a givens curriculum" if self._uses_givens() else
                "mazes generated on the fly in the validation set's path-length bands, dihedral augmentation")
        card = {"train_config": asdict(self.cfg), "step": self.step, "puzzles_seen": self.puzzles_seen,
                "wall_minutes": round(self.elapsed / 60, 1), "torch": str(torch.__version__),
                "threads": torch.get_num_threads(), "last_eval": self.history[-1] if self.history else None,
                "recipe_departures": [data, self._lr_departure(), "AdamW on the puzzle embedding",
                                      *self._halting_departure()]}
        if self._uses_givens():
            card["curriculum_min_givens"] = self.lo
        return card

    def fit(self, progress: bool = True) -> None:
        cfg = self.cfg
        deadline = time.monotonic() + cfg.max_minutes * 60
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(initial=self.step, total=cfg.max_steps if cfg.max_steps < 10_000_000 else None,
                       unit="step", dynamic_ncols=True)
        t_last = time.monotonic()
        previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill` saves like Ctrl-C does
        try:
            with open(self.run_dir / "log.jsonl", "a") as log:
                self._loop(cfg, deadline, bar, log, t_last)
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _loop(self, cfg: TrainConfig, deadline: float, bar: Any, log: Any, t_last: float) -> None:
        try:
            while self.step < cfg.max_steps and time.monotonic() < deadline:
                stats = self.train_step()
                now = time.monotonic()
                self.elapsed += now - t_last
                t_last = now
                givens = {"min_givens": self.lo} if self._uses_givens() else {}
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['acc_ema']:.2f}", **givens,
                                    seen=self.puzzles_seen)
                if self.step % cfg.eval_every == 0:
                    record = {"step": self.step, "minutes": round(self.elapsed / 60, 2),
                              "puzzles_seen": self.puzzles_seen, **givens, **stats, **self.evaluate()}
                    self.history.append(record)
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    t_last = time.monotonic()
                if self.step % cfg.checkpoint_every == 0:
                    self.save(self.card())
                    t_last = time.monotonic()
        finally:
            self.save(self.card())
            if bar is not None:
                bar.close()


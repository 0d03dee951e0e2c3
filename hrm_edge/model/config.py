"""HRM configuration: the official `arch:` fields of `all_config.yaml`, plus dataset shapes.

Field names match the public training code (github sapientinc/HRM) so a config
read from `all_config.yaml` + `dataset.json` maps onto this dataclass one to one.
This module imports no torch: bundles and device runtimes read configs too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from hrm_edge.errors import CheckpointError

HRM_ARCH_NAME = "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1"
POS_ENCODINGS = ("rope", "learned")
FORWARD_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class HRMConfig:
    """Shapes and hyper-parameters of one HRM ACT v1 model.

    `seq_len`, `vocab_size` and `num_puzzle_identifiers` come from the dataset
    (`dataset.json`) in the official layout, the rest from `all_config.yaml`'s `arch:`.
    """

    seq_len: int
    vocab_size: int
    num_puzzle_identifiers: int
    hidden_size: int = 512
    num_heads: int = 8
    expansion: float = 4.0
    H_layers: int = 4
    L_layers: int = 4
    H_cycles: int = 2
    L_cycles: int = 2
    puzzle_emb_ndim: int = 0
    pos_encodings: str = "rope"
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    halt_max_steps: int = 16
    halt_exploration_prob: float = 0.1
    forward_dtype: str = "bfloat16"
    batch_size: int = 1  # training batch; meaningless at inference, kept for round trips

    def __post_init__(self) -> None:
        for name in ("seq_len", "vocab_size", "num_puzzle_identifiers", "hidden_size", "num_heads",
                     "H_layers", "L_layers", "H_cycles", "L_cycles", "halt_max_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CheckpointError(f"config field {name!r} must be a positive integer, got {value!r}")
        if self.puzzle_emb_ndim < 0:
            raise CheckpointError(f"config field 'puzzle_emb_ndim' must be >= 0, got {self.puzzle_emb_ndim}")
        if self.hidden_size % self.num_heads:
            raise CheckpointError(
                f"config: hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.pos_encodings not in POS_ENCODINGS:
            raise CheckpointError(
                f"config field 'pos_encodings' must be one of {POS_ENCODINGS}, got {self.pos_encodings!r}")
        if self.forward_dtype not in FORWARD_DTYPES:
            raise CheckpointError(
                f"config field 'forward_dtype' must be one of {FORWARD_DTYPES}, got {self.forward_dtype!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def puzzle_emb_len(self) -> int:
        """Extra positions prepended for the puzzle embedding: ceil(puzzle_emb_ndim / hidden_size)."""
        return -(-self.puzzle_emb_ndim // self.hidden_size)

    @property
    def total_len(self) -> int:
        """Positions the reasoning modules see: seq_len + puzzle_emb_len."""
        return self.seq_len + self.puzzle_emb_len

    @property
    def mlp_inter(self) -> int:
        """SwiGLU inner width: round(expansion * hidden * 2/3) rounded up to a multiple of 256."""
        return -(-round(self.expansion * self.hidden_size * 2 / 3) // 256) * 256

    def parameter_count(self) -> int:
        """Trainable parameters (puzzle embedding, H_init and L_init are buffers, not counted)."""
        h, inter = self.hidden_size, self.mlp_inter
        block = h * 3 * h + h * h + h * 2 * inter + inter * h
        count = (self.H_layers + self.L_layers) * block
        count += 2 * self.vocab_size * h  # embed_tokens + lm_head
        count += 2 * h + 2  # q_head weight + bias
        if self.pos_encodings == "learned":
            count += self.total_len * h
        return count

    def segment_flops(self, batch: int = 1) -> int:
        """Multiply-adds x 2 of one ACT segment at `batch` (GEMMs and attention; norms ignored)."""
        h, inter, p = self.hidden_size, self.mlp_inter, self.total_len
        per_block = 2 * p * (h * 3 * h + h * h + h * 2 * inter + inter * h) + 2 * 2 * p * p * h
        passes_l = self.H_cycles * self.L_cycles * self.L_layers
        passes_h = self.H_cycles * self.H_layers
        heads = 2 * p * h * (self.vocab_size) + 2 * h * 2
        return batch * ((passes_l + passes_h) * per_block + heads)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HRMConfig:
        """Build from a dict; unknown keys raise, so a typo never silently becomes a default."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise CheckpointError(f"config has unknown field(s): {', '.join(unknown)}")
        missing = sorted(n for n in ("seq_len", "vocab_size", "num_puzzle_identifiers") if n not in data)
        if missing:
            raise CheckpointError(f"config is missing field(s): {', '.join(missing)}")
        return cls(**data)


# Named configs for `hrm-edge init` (seeded weights) and `hrm-edge train`.
PRESETS: dict[str, dict[str, Any]] = {
    # The published Sudoku-Extreme config: 27,275,266 parameters.
    "sudoku-27m": dict(seq_len=81, vocab_size=11, num_puzzle_identifiers=1, puzzle_emb_ndim=512),
    # The CPU-trainable demo: hidden 128, 2+2 layers, 8 segments (about 1.05M parameters).
    "sudoku-demo": dict(seq_len=81, vocab_size=11, num_puzzle_identifiers=1, hidden_size=128, num_heads=4,
                        H_layers=2, L_layers=2, puzzle_emb_ndim=128, halt_max_steps=8),
    # 6x6 Sudoku (2x3 boxes) demo: same network as sudoku-demo on 36 cells.
    "sudoku6-demo": dict(seq_len=36, vocab_size=8, num_puzzle_identifiers=1, hidden_size=128, num_heads=4,
                         H_layers=2, L_layers=2, puzzle_emb_ndim=128, halt_max_steps=8),
    # A few-kilobyte model for tests and smoke runs.
    "sudoku-tiny": dict(seq_len=81, vocab_size=11, num_puzzle_identifiers=1, hidden_size=32, num_heads=2,
                        H_layers=1, L_layers=1, H_cycles=2, L_cycles=2, puzzle_emb_ndim=32, halt_max_steps=4),
}


def preset_config(name: str, **overrides: Any) -> HRMConfig:
    """An `HRMConfig` from a named preset, with field overrides."""
    if name not in PRESETS:
        raise CheckpointError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return HRMConfig.from_dict({**PRESETS[name], **overrides})

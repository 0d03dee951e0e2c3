"""Model configurations: the official `arch:` fields of `all_config.yaml`, plus dataset shapes.

Two families share one driving interface (see `hrm_edge.model.create_model`):
- `HRMConfig`: the Hierarchical Reasoning Model (github sapientinc/HRM);
- `TRMConfig`: the Tiny Recursive Model (arXiv 2510.04871, github SamsungSAILMontreal/TinyRecursiveModels).

Field names match the public training code, so a config read from `all_config.yaml` +
`dataset.json` maps onto the dataclass one to one. Each config knows its `family`
("hrm" / "trm", a class constant); `to_dict` records it and `config_from_dict` picks the
class from it (no key: "hrm", the format before TRM existed).
Building a config checks every field's type and range (`INT_RANGES`, `FLOAT_RANGES`) and the
size of the model it implies (`MAX_MODEL_ELEMENTS`), so a hostile or mistyped file is one
`CheckpointError` line before anything is allocated.
This module imports no torch: bundles and device runtimes read configs too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from hrm_edge.errors import CheckpointError

HRM_ARCH_NAME = "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1"
TRM_ARCH_NAME = "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1"
POS_ENCODINGS = ("rope", "learned")
TRM_POS_ENCODINGS = ("rope", "learned", "none")
FORWARD_DTYPES = ("float32", "bfloat16", "float16")
FAMILIES = ("hrm", "trm")


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _swiglu_inter(expansion: float, width: int) -> int:
    """SwiGLU inner width of the official layers: round(expansion * width * 2/3) rounded up to 256."""
    return _round_up(round(expansion * width * 2 / 3), 256)


# Inclusive range of each integer field. Wide enough for every published HRM/TRM config with room to
# spare: the 27M Sudoku HRM (hidden 512, 8 heads, 4+4 layers, 2x2 cycles, 16 steps), the TRM papers'
# models (2 layers, 3x6 cycles, 16 prefix positions), ARC (seq_len 900; one puzzle identifier per
# augmented puzzle in the official builder, about 1M for ARC-1 with 1000 augmentations). A value
# outside is a typo or a hostile file and is refused before anything is allocated.
MAX_HALT_STEPS = 10_000  # ACT segments; also the sane bound for the CLI's --max-steps
INT_RANGES: dict[str, tuple[int, int]] = {
    "seq_len": (1, 16_384),
    "vocab_size": (1, 262_144),
    "num_puzzle_identifiers": (1, 1 << 22),
    "hidden_size": (1, 8_192),
    "num_heads": (1, 512),
    "H_layers": (1, 128),
    "L_layers": (1, 128),
    "H_cycles": (1, 128),
    "L_cycles": (1, 128),
    "puzzle_emb_ndim": (0, 16_384),
    "halt_max_steps": (1, MAX_HALT_STEPS),
    "batch_size": (1, 1 << 24),
}
# TRM: H_layers is ignored by the model (0 in the official config); puzzle_emb_len 0 means "derive".
TRM_INT_RANGES: dict[str, tuple[int, int]] = {**INT_RANGES, "H_layers": (0, 128), "puzzle_emb_len": (0, 1_024)}
# Range of each real-valued field: (low, high, whether low itself is allowed); high is always allowed.
FLOAT_RANGES: dict[str, tuple[float, float, bool]] = {
    "expansion": (0.0, 64.0, False),
    "rms_norm_eps": (0.0, 1.0, False),
    "rope_theta": (0.0, 1e12, False),
    "halt_exploration_prob": (0.0, 1.0, True),
}
# Elements of every weight and buffer a config implies (`model_elements`), at most 2**30: 4 GiB in
# fp32. The largest real config, an ARC HRM (27M parameters plus a puzzle-embedding table of ~1M
# identifiers x 512 = 0.5G elements), fits with 2x headroom. The cap is checked when the config is
# built, so a config that would need tens of GB fails in microseconds instead of at allocation.
MAX_MODEL_ELEMENTS = 1 << 30


def _show(value: Any) -> str:
    """repr of a config value for a one-line message, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_ints(config: Any, ranges: dict[str, tuple[int, int]]) -> None:
    for name, (low, high) in ranges.items():
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise CheckpointError(f"config field {name!r} must be an integer, got {_show(value)} "
                                  f"({type(value).__name__})")
        if not low <= value <= high:
            raise CheckpointError(f"config field {name!r} is {_show(value)}, allowed {low}..{high}")


def _check_floats(config: Any) -> None:
    """Each real-valued field is an int or float in its range; stored as a float."""
    for name, (low, high, low_ok) in FLOAT_RANGES.items():
        value = getattr(config, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise CheckpointError(f"config field {name!r} must be a number, got {_show(value)} "
                                  f"({type(value).__name__})")
        if not (low <= value if low_ok else low < value) or not value <= high:  # also refuses NaN
            bracket = "[" if low_ok else "("
            raise CheckpointError(f"config field {name!r} is {_show(value)}, allowed {bracket}{low:g}, {high:g}]")
        object.__setattr__(config, name, float(value))


def _check_bools(config: Any, names: tuple[str, ...]) -> None:
    for name in names:
        if not isinstance(getattr(config, name), bool):
            raise CheckpointError(f"config field {name!r} must be true or false, got {_show(getattr(config, name))}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise CheckpointError(f"config field {name!r} must be one of {choices}, got {_show(value)}")


def _check_heads(config: Any) -> None:
    """Attention heads split hidden_size evenly, and RoPE rotates pairs of channels: an even head_dim."""
    if config.hidden_size % config.num_heads:
        raise CheckpointError(
            f"config: hidden_size {config.hidden_size} is not divisible by num_heads {config.num_heads}")
    if config.pos_encodings == "rope" and config.head_dim % 2:
        raise CheckpointError(
            f"config: head_dim {config.head_dim} (hidden_size {config.hidden_size} / num_heads {config.num_heads}) "
            "must be even for rope position encodings")


def _check_size(config: HRMConfig | TRMConfig) -> None:
    elements = model_elements(config)
    if elements > MAX_MODEL_ELEMENTS:
        raise CheckpointError(
            f"config implies {elements:,} weight elements ({elements * 4 / 2**30:.1f} GiB in fp32), more than the "
            f"{MAX_MODEL_ELEMENTS:,} (4 GiB) hrm-edge loads; check hidden_size, layers, vocab_size, seq_len "
            "and num_puzzle_identifiers x puzzle_emb_ndim")


def model_elements(config: HRMConfig | TRMConfig) -> int:
    """Elements of every tensor a model of `config` holds: trainable parameters plus the buffers
    (puzzle-embedding table [num_puzzle_identifiers, puzzle_emb_ndim], H_init and L_init [hidden],
    RoPE cos/sin tables [total_len, head_dim]). Pure arithmetic: nothing is allocated."""
    count = config.parameter_count() + 2 * config.hidden_size
    if config.puzzle_emb_ndim > 0:
        count += config.num_puzzle_identifiers * config.puzzle_emb_ndim
    if config.pos_encodings == "rope":
        count += 2 * config.total_len * config.head_dim
    return count


def _from_dict(cls: Any, data: Any) -> Any:
    """Build `cls` from a dict; unknown keys raise, so a typo never silently becomes a default.

    A "family" key is accepted when it names `cls`'s family."""
    if not isinstance(data, dict):
        raise CheckpointError(f"config must be a mapping of field names to values, got {type(data).__name__}")
    data = dict(data)
    family = data.pop("family", cls.family)
    if family != cls.family:
        raise CheckpointError(f"config is for model family {_show(family)}, not {cls.family!r}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(_show(k) for k in data if k not in fields)
    if unknown:
        raise CheckpointError(f"config has unknown field(s): {', '.join(unknown)}")
    missing = sorted(n for n in ("seq_len", "vocab_size", "num_puzzle_identifiers") if n not in data)
    if missing:
        raise CheckpointError(f"config is missing field(s): {', '.join(missing)}")
    return cls(**data)


@dataclass(frozen=True)
class HRMConfig:
    """Shapes and hyper-parameters of one HRM ACT v1 model.

    `seq_len`, `vocab_size` and `num_puzzle_identifiers` come from the dataset
    (`dataset.json`) in the official layout, the rest from `all_config.yaml`'s `arch:`.
    """

    family: ClassVar[str] = "hrm"

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
        _check_ints(self, INT_RANGES)
        _check_floats(self)
        _check_choice("pos_encodings", self.pos_encodings, POS_ENCODINGS)
        _check_choice("forward_dtype", self.forward_dtype, FORWARD_DTYPES)
        _check_heads(self)
        _check_size(self)

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
        return _swiglu_inter(self.expansion, self.hidden_size)

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
        """The fields plus "family": "hrm"."""
        return {"family": self.family, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HRMConfig:
        """Build from a dict; unknown keys raise, so a typo never silently becomes a default."""
        return _from_dict(cls, data)


@dataclass(frozen=True)
class TRMConfig:
    """Shapes and hyper-parameters of one TRM (TinyRecursiveReasoningModel_ACTV1).

    Defaults are those of the official `config/arch/trm.yaml` (the attention variant, 7M
    parameters on Sudoku), except the dataset fields. TRM differences from HRM:
    - one network, `L_level` (L_layers blocks), updates both z_L and z_H; `H_layers` is kept
      for round trips of `all_config.yaml` but ignored, as in the official code;
    - `puzzle_emb_len` positions are prepended explicitly (16 by default). The official code
      derives ceil(puzzle_emb_ndim / hidden_size) when it is 0; this config stores that derived
      value instead of the 0 (same model), so `puzzle_emb_len` is always the true prefix length;
    - `mlp_t`: each block mixes positions with a SwiGLU over the sequence axis (width
      `total_len`, inner `mlp_t_inter`) instead of self-attention; used with `pos_encodings`
      "none" on fixed-size puzzles;
    - `no_ACT_continue`: halting is "q_halt > 0" and the q_continue logit is unused (the
      model's `heads` then returns q_continue = 0 so "q_halt > q_continue" keeps that meaning).
    """

    family: ClassVar[str] = "trm"

    seq_len: int
    vocab_size: int
    num_puzzle_identifiers: int
    hidden_size: int = 512
    num_heads: int = 8
    expansion: float = 4.0
    H_layers: int = 0  # ignored by the model (official field, kept for round trips)
    L_layers: int = 2
    H_cycles: int = 3
    L_cycles: int = 6
    puzzle_emb_ndim: int = 512
    puzzle_emb_len: int = 16
    pos_encodings: str = "rope"
    mlp_t: bool = False
    no_ACT_continue: bool = True  # noqa: N815 (the official field name)
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    halt_max_steps: int = 16
    halt_exploration_prob: float = 0.1
    forward_dtype: str = "bfloat16"
    batch_size: int = 1  # training batch; meaningless at inference, kept for round trips

    def __post_init__(self) -> None:
        _check_ints(self, TRM_INT_RANGES)
        _check_floats(self)
        _check_bools(self, ("mlp_t", "no_ACT_continue"))
        _check_choice("pos_encodings", self.pos_encodings, TRM_POS_ENCODINGS)
        _check_choice("forward_dtype", self.forward_dtype, FORWARD_DTYPES)
        if not self.mlp_t or self.pos_encodings == "rope":
            _check_heads(self)
        if self.puzzle_emb_len == 0:  # the official rule for 0: ceil(puzzle_emb_ndim / hidden_size)
            object.__setattr__(self, "puzzle_emb_len", -(-self.puzzle_emb_ndim // self.hidden_size))
        if self.puzzle_emb_ndim == 0 and self.puzzle_emb_len > 0:
            raise CheckpointError(
                f"config: puzzle_emb_len {self.puzzle_emb_len} needs puzzle_emb_ndim > 0 (the prefix positions "
                "are filled by the puzzle embedding); set puzzle_emb_len 0 for no prefix")
        if self.puzzle_emb_ndim > self.puzzle_emb_len * self.hidden_size:
            raise CheckpointError(
                f"config: puzzle_emb_ndim {self.puzzle_emb_ndim} does not fit in puzzle_emb_len "
                f"{self.puzzle_emb_len} x hidden_size {self.hidden_size}")
        _check_size(self)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def total_len(self) -> int:
        """Positions the network sees: seq_len + puzzle_emb_len."""
        return self.seq_len + self.puzzle_emb_len

    @property
    def mlp_inter(self) -> int:
        """Channel SwiGLU inner width: round(expansion * hidden * 2/3) rounded up to a multiple of 256."""
        return _swiglu_inter(self.expansion, self.hidden_size)

    @property
    def mlp_t_inter(self) -> int:
        """Token-mixing SwiGLU inner width (mlp_t): the same rule applied to total_len."""
        return _swiglu_inter(self.expansion, self.total_len)

    def parameter_count(self) -> int:
        """Trainable parameters (puzzle embedding, H_init and L_init are buffers, not counted)."""
        h, inter, p = self.hidden_size, self.mlp_inter, self.total_len
        block = h * 2 * inter + inter * h  # channel SwiGLU
        if self.mlp_t:
            block += p * 2 * self.mlp_t_inter + self.mlp_t_inter * p
        else:
            block += h * 3 * h + h * h
        count = self.L_layers * block
        count += 2 * self.vocab_size * h  # embed_tokens + lm_head
        count += 2 * h + 2  # q_head weight + bias
        if self.pos_encodings == "learned":
            count += p * h
        return count

    def segment_flops(self, batch: int = 1) -> int:
        """Multiply-adds x 2 of one ACT segment at `batch` (GEMMs and attention; norms ignored)."""
        h, inter, p = self.hidden_size, self.mlp_inter, self.total_len
        per_block = 2 * p * (h * 2 * inter + inter * h)
        if self.mlp_t:
            per_block += 2 * h * (p * 2 * self.mlp_t_inter + self.mlp_t_inter * p)
        else:
            per_block += 2 * p * (h * 3 * h + h * h) + 2 * 2 * p * p * h
        passes = self.H_cycles * (self.L_cycles + 1) * self.L_layers
        heads = 2 * p * h * self.vocab_size + 2 * h * 2
        return batch * (passes * per_block + heads)

    def to_dict(self) -> dict[str, Any]:
        """The fields plus "family": "trm"."""
        return {"family": self.family, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TRMConfig:
        """Build from a dict; unknown keys raise, so a typo never silently becomes a default."""
        return _from_dict(cls, data)


ModelConfig = HRMConfig | TRMConfig
CONFIG_CLASSES: dict[str, type[HRMConfig] | type[TRMConfig]] = {"hrm": HRMConfig, "trm": TRMConfig}


def config_from_dict(data: Any) -> HRMConfig | TRMConfig:
    """An `HRMConfig` or `TRMConfig` chosen by the dict's "family" key ("hrm" when absent).

    Every field is checked for its type and range (`INT_RANGES`, `FLOAT_RANGES`) and the whole
    model for its size (`MAX_MODEL_ELEMENTS`); any problem is one `CheckpointError` line."""
    if not isinstance(data, dict):
        raise CheckpointError(f"config must be a mapping of field names to values, got {type(data).__name__}")
    family = data.get("family", "hrm")
    if not isinstance(family, str) or family not in CONFIG_CLASSES:
        raise CheckpointError(f"unknown model family {_show(family)}; known: {', '.join(FAMILIES)}")
    return CONFIG_CLASSES[family].from_dict(data)


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
    # 15x15 maze demo (calib_data/maze15): the same network on 225 cells.
    "maze15-demo": dict(seq_len=225, vocab_size=6, num_puzzle_identifiers=1, hidden_size=128, num_heads=4,
                        H_layers=2, L_layers=2, puzzle_emb_ndim=128, halt_max_steps=8),
    # A few-kilobyte model for tests and smoke runs.
    "sudoku-tiny": dict(seq_len=81, vocab_size=11, num_puzzle_identifiers=1, hidden_size=32, num_heads=2,
                        H_layers=1, L_layers=1, H_cycles=2, L_cycles=2, puzzle_emb_ndim=32, halt_max_steps=4),
    # TRM presets carry "family": "trm".
    # The paper's Sudoku-Extreme TRM-MLP (README `pretrain_mlp_t_sudoku`: mlp_t, no positions,
    # L_layers 2, H_cycles 3, L_cycles 6): 5,028,866 parameters.
    "trm-sudoku-5m": dict(family="trm", seq_len=81, vocab_size=11, num_puzzle_identifiers=1, mlp_t=True,
                          pos_encodings="none"),
    # Its attention twin (README `pretrain_att_sudoku`, RoPE): 6,828,034 parameters.
    "trm-sudoku-att-7m": dict(family="trm", seq_len=81, vocab_size=11, num_puzzle_identifiers=1),
    # The CPU-trainable demo: hidden 128, 2 mlp_t layers, 3 x (4 + 1) network passes per segment,
    # 8 segments (694,274 parameters; 2.3 GFLOP per segment, about 3x sudoku-demo per CPU training step).
    "trm-sudoku-demo": dict(family="trm", seq_len=81, vocab_size=11, num_puzzle_identifiers=1, hidden_size=128,
                            num_heads=4, L_layers=2, H_cycles=3, L_cycles=4, puzzle_emb_ndim=128, mlp_t=True,
                            pos_encodings="none", halt_max_steps=8),
    # The 6x6 twin of trm-sudoku-demo, trained beside sudoku6-demo on the same data. Cheaper cycles
    # (2 x (3 + 1) passes) and one puzzle-embedding position instead of the official 16, since
    # Sudoku has a single puzzle identifier.
    "trm-sudoku6-demo": dict(family="trm", seq_len=36, vocab_size=8, num_puzzle_identifiers=1, hidden_size=128,
                             num_heads=4, L_layers=2, H_cycles=2, L_cycles=3, puzzle_emb_ndim=128,
                             puzzle_emb_len=1, mlp_t=True, pos_encodings="none", halt_max_steps=8),
    # Its attention twin (RoPE instead of the token MLP), for the two-variant comparison.
    "trm-sudoku6-att-demo": dict(family="trm", seq_len=36, vocab_size=8, num_puzzle_identifiers=1, hidden_size=128,
                                 num_heads=4, L_layers=2, H_cycles=2, L_cycles=3, puzzle_emb_ndim=128,
                                 puzzle_emb_len=1, halt_max_steps=8),
    # 15x15 maze TRM (attention, as the paper uses for mazes), the TRM twin of maze15-demo: the TRM
    # learned 6x6 Sudoku 5-10x faster in CPU wall time than the HRM did.
    "trm-maze15-demo": dict(family="trm", seq_len=225, vocab_size=6, num_puzzle_identifiers=1, hidden_size=128,
                            num_heads=4, L_layers=2, H_cycles=2, L_cycles=3, puzzle_emb_ndim=128,
                            puzzle_emb_len=1, halt_max_steps=8),
    # 11x11 maze TRM with the token MLP: the maze demo. 15x15 did not learn within the CPU budget (both
    # maze15 runs: 0% exact after 200+ steps); 121 cells cost about half as much per step, and the token
    # MLP quantizes to full INT8 where the attention TRM needed weight-only INT8. The shipped demo's last
    # phase ran with `--set no_ACT_continue=false` (HRM's q_continue halting; see its card).
    "trm-maze11-demo": dict(family="trm", seq_len=121, vocab_size=6, num_puzzle_identifiers=1, hidden_size=128,
                            num_heads=4, L_layers=2, H_cycles=2, L_cycles=3, puzzle_emb_ndim=128,
                            puzzle_emb_len=1, mlp_t=True, pos_encodings="none", halt_max_steps=8),
    # An 89k-parameter TRM for tests and smoke runs (the 32-wide puzzle row is zero-padded to 2 positions).
    "trm-sudoku-tiny": dict(family="trm", seq_len=81, vocab_size=11, num_puzzle_identifiers=1, hidden_size=32,
                            num_heads=2, L_layers=1, H_cycles=2, L_cycles=2, puzzle_emb_ndim=32, puzzle_emb_len=2,
                            mlp_t=True, pos_encodings="none", halt_max_steps=4),
}


def preset_config(name: str, **overrides: Any) -> HRMConfig | TRMConfig:
    """The config of a named preset (an `HRMConfig` or, for "trm-*", a `TRMConfig`), with field overrides."""
    if name not in PRESETS:
        raise CheckpointError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return config_from_dict({**PRESETS[name], **overrides})

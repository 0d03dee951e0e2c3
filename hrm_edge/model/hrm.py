"""The Hierarchical Reasoning Model (HRM ACT v1), as one file a reader can hold in their head.

Numerics follow the public training code (github sapientinc/HRM) and
`shared/spec/hrm-reference.md`; parameter and buffer names are the official ones, so
an official state_dict loads with `strict=True` once `_orig_mod.` / `model.` are stripped.

Shapes: B = batch, S = seq_len, P = S + puzzle_emb_len positions, D = hidden_size,
Hd = num_heads, Dh = head_dim, V = vocab_size.

One ACT segment maps a carry (z_H, z_L), each [B, P, D], plus the input embedding
x [B, P, D] to a new carry, logits [B, S, V] and the two Q-head logits [B] each:

    for i in range(H_cycles):
        for j in range(L_cycles):  z_L = L_level(z_L, z_H + x)
        z_H = H_level(z_H, z_L)

Linear and embedding weights are cast to the activation dtype at use (as the official
`CastedLinear`), RMSNorm and the RoPE product run in fp32, so the same weights give an
fp32, bf16 or fp16 reference by choosing `compute_dtype`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hrm_edge.model.config import HRMConfig

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def trunc_normal_(tensor: torch.Tensor, std: float) -> torch.Tensor:
    """Truncated normal in [-2 std, 2 std] whose actual std is `std` (JAX/Flax convention)."""
    with torch.no_grad():
        if std == 0:
            return tensor.zero_()
        lower, upper = -2.0, 2.0
        a, b = math.erf(lower / math.sqrt(2)), math.erf(upper / math.sqrt(2))
        z = (b - a) / 2
        c = (2 * math.pi) ** -0.5
        pdf_l, pdf_u = c * math.exp(-0.5 * lower**2), c * math.exp(-0.5 * upper**2)
        comp_std = std / math.sqrt(1 - (upper * pdf_u - lower * pdf_l) / z - ((pdf_u - pdf_l) / z) ** 2)
        tensor.uniform_(a, b).erfinv_().mul_(math.sqrt(2) * comp_std)
        return tensor.clip_(lower * comp_std, upper * comp_std)


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Weightless RMSNorm over the last dim, computed in fp32, returned in x's dtype."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """cat(-x2, x1) over the halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_cos_sin(positions: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables, each [positions, head_dim] fp32, with the frequencies repeated twice."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(positions, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, P, Hd, Dh] by cos/sin [P, Dh]; the product runs in fp32."""
    x32 = x.float()
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    return (x32 * cos + rotate_half(x32) * sin).to(x.dtype)


class CastedLinear(nn.Module):
    """Linear layer whose weight (and bias) is cast to the input's dtype at use."""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_(torch.empty(out_features, in_features), 1.0 / in_features**0.5))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), bias)


class CastedEmbedding(nn.Module):
    """Embedding table [num, dim] looked up and cast to `dtype`."""

    def __init__(self, num: int, dim: int, init_std: float) -> None:
        super().__init__()
        self.embedding_weight = nn.Parameter(trunc_normal_(torch.empty(num, dim), init_std))

    def forward(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return F.embedding(ids, self.embedding_weight.to(dtype))


class PuzzleEmbedding(nn.Module):
    """Per-puzzle rows [num_puzzle_identifiers, puzzle_emb_ndim], a buffer as in the official code.

    Training makes `weights` require grad and steps it with its own optimizer group.
    """

    def __init__(self, num: int, dim: int) -> None:
        super().__init__()
        self.weights = nn.Buffer(torch.zeros(num, dim), persistent=True)

    def forward(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.weights[ids].to(dtype)


class Attention(nn.Module):
    """Non-causal multi-head self-attention with a fused qkv projection and RoPE."""

    def __init__(self, config: HRMConfig) -> None:
        super().__init__()
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.qkv_proj = CastedLinear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.o_proj = CastedLinear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        B, P, D = x.shape
        qkv = self.qkv_proj(x).view(B, P, 3 * self.num_heads, self.head_dim)
        q, k, v = qkv.split(self.num_heads, dim=2)  # each [B, P, Hd, Dh]
        if cos_sin is not None:
            q, k = apply_rope(q, *cos_sin), apply_rope(k, *cos_sin)
        # SDPA wants [B, Hd, P, Dh]; default scale is 1/sqrt(Dh).
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.o_proj(out.transpose(1, 2).reshape(B, P, D))


class SwiGLU(nn.Module):
    """down(silu(gate) * up) with gate|up from one fused projection of width 2 * mlp_inter."""

    def __init__(self, config: HRMConfig) -> None:
        super().__init__()
        self.gate_up_proj = CastedLinear(config.hidden_size, 2 * config.mlp_inter, bias=False)
        self.down_proj = CastedLinear(config.mlp_inter, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    """Post-norm transformer block: h = norm(h + attn(h)); h = norm(h + mlp(h))."""

    def __init__(self, config: HRMConfig) -> None:
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = SwiGLU(config)
        self.eps = config.rms_norm_eps

    def forward(self, h: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        h = rms_norm(h + self.self_attn(h, cos_sin), self.eps)
        return rms_norm(h + self.mlp(h), self.eps)


class ReasoningModule(nn.Module):
    """A stack of blocks whose input is `hidden + injection`."""

    def __init__(self, config: HRMConfig, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block(config) for _ in range(num_layers))

    def forward(self, hidden: torch.Tensor, injection: torch.Tensor,
                cos_sin: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        hidden = hidden + injection
        for layer in self.layers:
            hidden = layer(hidden, cos_sin)
        return hidden


class ModelIO(nn.Module):
    """What every recurrent-reasoning family shares (official names): token, puzzle and position
    embeddings, the LM and Q heads, and the learned initial carry H_init / L_init. Subclasses
    create their reasoning modules, then call `init_carry_and_q_head()`: the official order of
    creation, so a seed gives the same weights as the official code."""

    def __init__(self, config: HRMConfig) -> None:
        super().__init__()
        self.config = config
        D = config.hidden_size
        self.embed_scale = math.sqrt(D)
        self.embed_tokens = CastedEmbedding(config.vocab_size, D, init_std=1.0 / self.embed_scale)
        self.lm_head = CastedLinear(D, config.vocab_size, bias=False)
        self.q_head = CastedLinear(D, 2, bias=True)
        if config.puzzle_emb_ndim > 0:
            self.puzzle_emb = PuzzleEmbedding(config.num_puzzle_identifiers, config.puzzle_emb_ndim)
        if config.pos_encodings == "rope":
            cos, sin = rope_cos_sin(config.total_len, config.head_dim, config.rope_theta)
            self.rope_cos = nn.Buffer(cos, persistent=False)
            self.rope_sin = nn.Buffer(sin, persistent=False)
        elif config.pos_encodings == "learned":
            self.embed_pos = CastedEmbedding(config.total_len, D, init_std=1.0 / self.embed_scale)

    def init_carry_and_q_head(self) -> None:
        D = self.config.hidden_size
        # The official code creates these in forward_dtype (bf16 on disk); kept fp32 here.
        self.H_init = nn.Buffer(trunc_normal_(torch.empty(D), std=1.0), persistent=True)
        self.L_init = nn.Buffer(trunc_normal_(torch.empty(D), std=1.0), persistent=True)
        with torch.no_grad():  # Q-head starts near "never halt" for stable bootstrapping
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5.0)


class HRMInner(ModelIO):
    """The official `inner`: shared I/O plus the slow H and fast L reasoning modules."""

    def __init__(self, config: HRMConfig) -> None:
        super().__init__(config)
        self.H_level = ReasoningModule(config, config.H_layers)
        self.L_level = ReasoningModule(config, config.L_layers)
        self.init_carry_and_q_head()


class RecurrentModel(nn.Module):
    """The driving interface every runtime and exported graph reproduces: `embed`,
    `initial_carry`, `reason` (family specific), `heads`, and `segment`, the pure function
    (carry, inputs) -> (carry, logits, q). The ACT loop lives in `hrm_edge.act`."""

    inner: ModelIO

    def __init__(self, config: HRMConfig, compute_dtype: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.compute_dtype = _DTYPES[compute_dtype or "float32"]

    def set_compute_dtype(self, dtype: str | torch.dtype) -> RecurrentModel:
        """Activation dtype of the forward pass ("float32", "bfloat16", "float16")."""
        self.compute_dtype = _DTYPES[dtype] if isinstance(dtype, str) else dtype
        return self

    def _cos_sin(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        inner = self.inner
        return (inner.rope_cos, inner.rope_sin) if self.config.pos_encodings == "rope" else None

    def embed(self, tokens: torch.Tensor, puzzle_ids: torch.Tensor) -> torch.Tensor:
        """Input embedding x [B, P, D] from tokens [B, S] int and puzzle_ids [B] int: the puzzle
        row, zero-padded to puzzle_emb_len * D, fills the first puzzle_emb_len positions."""
        cfg, inner, dtype = self.config, self.inner, self.compute_dtype
        x = inner.embed_tokens(tokens, dtype)
        if cfg.puzzle_emb_ndim > 0:
            pe = inner.puzzle_emb(puzzle_ids, dtype)
            pad = cfg.puzzle_emb_len * cfg.hidden_size - cfg.puzzle_emb_ndim
            if pad > 0:
                pe = F.pad(pe, (0, pad))
            x = torch.cat((pe.view(-1, cfg.puzzle_emb_len, cfg.hidden_size), x), dim=-2)
        if cfg.pos_encodings == "learned":
            x = 0.707106781 * (x + inner.embed_pos.embedding_weight.to(dtype))
        return inner.embed_scale * x

    def initial_carry(self, batch: int, device: torch.device | str | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_H, z_L), each [batch, P, D] in the compute dtype, broadcast from H_init / L_init."""
        shape = (batch, self.config.total_len, self.config.hidden_size)
        z_H = self.inner.H_init.to(device=device, dtype=self.compute_dtype).expand(shape).contiguous()
        z_L = self.inner.L_init.to(device=device, dtype=self.compute_dtype).expand(shape).contiguous()
        return z_H, z_L

    def reason(self, z_H: torch.Tensor, z_L: torch.Tensor, x: torch.Tensor,
               one_step_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def heads(self, z_H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """logits [B, S, V] (compute dtype), q_halt [B] fp32, q_continue [B] fp32."""
        logits = self.inner.lm_head(z_H)[:, self.config.puzzle_emb_len:]
        q = self.inner.q_head(z_H[:, 0]).float()
        return logits, q[..., 0], q[..., 1]

    def segment(self, z_H: torch.Tensor, z_L: torch.Tensor, tokens: torch.Tensor, puzzle_ids: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One ACT segment: (z_H, z_L, tokens, puzzle_ids) -> (z_H', z_L', logits, q_halt, q_continue)."""
        z_H, z_L = self.reason(z_H, z_L, self.embed(tokens, puzzle_ids))
        return (z_H, z_L, *self.heads(z_H))

    def forward(self, z_H: torch.Tensor, z_L: torch.Tensor, tokens: torch.Tensor, puzzle_ids: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.segment(z_H, z_L, tokens, puzzle_ids)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


class HRM(RecurrentModel):
    """HRM ACT v1: a fast L module nested in a slow H module (see the module docstring)."""

    def __init__(self, config: HRMConfig, compute_dtype: str | None = None) -> None:
        super().__init__(config, compute_dtype)
        self.inner = HRMInner(config)

    def reason(self, z_H: torch.Tensor, z_L: torch.Tensor, x: torch.Tensor,
               one_step_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The H/L recurrence of one segment. With `one_step_grad`, only the last L and H
        updates build a graph (the training recipe); the numbers are the same either way."""
        cfg, inner, cos_sin = self.config, self.inner, self._cos_sin()
        last = cfg.H_cycles * cfg.L_cycles - 1
        n = 0
        for i in range(cfg.H_cycles):
            for _ in range(cfg.L_cycles):
                with torch.set_grad_enabled(torch.is_grad_enabled() and (not one_step_grad or n == last)):
                    z_L = inner.L_level(z_L, z_H + x, cos_sin)
                n += 1
            with torch.set_grad_enabled(
                    torch.is_grad_enabled() and (not one_step_grad or i == cfg.H_cycles - 1)):
                z_H = inner.H_level(z_H, z_L, cos_sin)
        return z_H, z_L

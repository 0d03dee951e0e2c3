"""The Tiny Recursive Model (TRM ACT v1, arXiv 2510.04871), driven exactly like `HRM`.

Numerics follow the public training code (github SamsungSAILMontreal/TinyRecursiveModels,
`recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1`); parameter and buffer names
are the official ones, so an official state_dict loads with `strict=True` once
`_orig_mod.` / `model.` are stripped. The blocks shared with HRM (casted linear and
embedding, attention with RoPE, SwiGLU, weightless RMSNorm) are imported from `hrm.py`.

Shapes: B = batch, S = seq_len, P = S + puzzle_emb_len positions, D = hidden_size, V = vocab_size.

TRM has ONE network, `L_level` (L_layers blocks), that updates both halves of the carry.
One ACT segment, x [B, P, D] the input embedding:

    for i in range(H_cycles):
        for j in range(L_cycles):  z_L = L_level(z_L, z_H + x)     # latent reasoning
        z_H = L_level(z_H, z_L)                                     # answer update
    logits = lm_head(z_H)[:, puzzle_emb_len:];  q = q_head(z_H[:, 0])

so (L_cycles + 1) * H_cycles network passes per segment. Training (`one_step_grad=True`)
runs the first H_cycles - 1 cycles without gradient and the last cycle, all its
L_cycles + 1 passes, with gradient; the numbers are the same either way.

A block is post-norm. With `mlp_t` its mixing sub-layer is a SwiGLU over POSITIONS,
applied to the transposed activations and normalised over positions:

    h = rms_norm(h^T + mlp_t(h^T))^T     (h^T: [B, D, P]; mlp_t: P -> 2*mlp_t_inter -> P)
    h = rms_norm(h + mlp(h))             (mlp: D -> 2*mlp_inter -> D, as in HRM)

otherwise the HRM block (self-attention, then SwiGLU).

Halting: with `no_ACT_continue` (the default) the official code halts when q_halt > 0 and
never uses the q_continue logit; `heads` then returns q_continue = 0, so every ACT policy
of `hrm_edge.act` ("q": q_halt > q_continue, "threshold:p", "fixed") keeps its meaning.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hrm_edge.model.config import TRMConfig
from hrm_edge.model.hrm import (
    _DTYPES,
    Attention,
    CastedEmbedding,
    CastedLinear,
    PuzzleEmbedding,
    SwiGLU,
    rms_norm,
    rope_cos_sin,
    trunc_normal_,
)


class TokenSwiGLU(SwiGLU):
    """SwiGLU over the position axis: gate_up_proj [2 * inter, P], down_proj [P, inter].

    Same maths as the channel SwiGLU (it acts on the last dim), built from widths instead of
    a config; the caller transposes [B, P, D] to [B, D, P]."""

    def __init__(self, positions: int, inter: int) -> None:
        nn.Module.__init__(self)
        self.gate_up_proj = CastedLinear(positions, 2 * inter, bias=False)
        self.down_proj = CastedLinear(inter, positions, bias=False)


class TRMBlock(nn.Module):
    """Post-norm block: a mixing sub-layer (token SwiGLU `mlp_t` or `self_attn`), then `mlp`."""

    def __init__(self, config: TRMConfig) -> None:
        super().__init__()
        self.use_mlp_t = config.mlp_t
        if config.mlp_t:
            self.mlp_t = TokenSwiGLU(config.total_len, config.mlp_t_inter)
        else:
            self.self_attn = Attention(config)
        self.mlp = SwiGLU(config)
        self.eps = config.rms_norm_eps

    def forward(self, h: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        if self.use_mlp_t:
            t = h.transpose(1, 2)  # [B, D, P]: mix and normalise over positions
            h = rms_norm(t + self.mlp_t(t), self.eps).transpose(1, 2)
        else:
            h = rms_norm(h + self.self_attn(h, cos_sin), self.eps)
        return rms_norm(h + self.mlp(h), self.eps)


class TRMReasoningModule(nn.Module):
    """The one network: blocks whose input is `hidden + injection` (no final norm)."""

    def __init__(self, config: TRMConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TRMBlock(config) for _ in range(config.L_layers))

    def forward(self, hidden: torch.Tensor, injection: torch.Tensor,
                cos_sin: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        hidden = hidden + injection
        for layer in self.layers:
            hidden = layer(hidden, cos_sin)
        return hidden


class TRMInner(nn.Module):
    """Embeddings, the network `L_level`, the heads and the initial carry (official `inner`)."""

    def __init__(self, config: TRMConfig) -> None:
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
        self.L_level = TRMReasoningModule(config)
        # Official: created in forward_dtype (so stored as bf16 by default); kept fp32 here.
        self.H_init = nn.Buffer(trunc_normal_(torch.empty(D), std=1.0), persistent=True)
        self.L_init = nn.Buffer(trunc_normal_(torch.empty(D), std=1.0), persistent=True)
        with torch.no_grad():  # Q-head starts near "never halt" (sigmoid(-5)) for stable bootstrapping
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5.0)


class TRM(nn.Module):
    """TRM ACT v1 with HRM's driving interface: `embed`, `initial_carry`, `reason`, `heads`,
    `segment` (= `forward`), `set_compute_dtype`, `parameter_count`. Tell the families apart by
    `model.config.family` ("hrm" / "trm")."""

    def __init__(self, config: TRMConfig, compute_dtype: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.inner = TRMInner(config)
        self.compute_dtype = _DTYPES[compute_dtype or "float32"]

    def set_compute_dtype(self, dtype: str | torch.dtype) -> TRM:
        """Activation dtype of the forward pass ("float32", "bfloat16", "float16")."""
        self.compute_dtype = _DTYPES[dtype] if isinstance(dtype, str) else dtype
        return self

    def _cos_sin(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        inner = self.inner
        return (inner.rope_cos, inner.rope_sin) if self.config.pos_encodings == "rope" else None

    def embed(self, tokens: torch.Tensor, puzzle_ids: torch.Tensor) -> torch.Tensor:
        """Input embedding x [B, P, D] from tokens [B, S] int and puzzle_ids [B] int.

        The puzzle row (puzzle_emb_ndim wide) is zero-padded to puzzle_emb_len * D and laid
        out as the first puzzle_emb_len positions."""
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

    def initial_carry(self, batch: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_H, z_L), each [batch, P, D] in the compute dtype, broadcast from H_init / L_init."""
        shape = (batch, self.config.total_len, self.config.hidden_size)
        z_H = self.inner.H_init.to(device=device, dtype=self.compute_dtype).expand(shape).contiguous()
        z_L = self.inner.L_init.to(device=device, dtype=self.compute_dtype).expand(shape).contiguous()
        return z_H, z_L

    def reason(self, z_H: torch.Tensor, z_L: torch.Tensor, x: torch.Tensor,
               one_step_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The recursion of one segment. With `one_step_grad` (the training recipe) only the last
        of the H_cycles cycles builds a graph, all of its L_cycles + 1 passes (TRM's "deep
        recursion" gradient; HRM's name for the flag is kept so trainers drive both alike)."""
        cfg, net, cos_sin = self.config, self.inner.L_level, self._cos_sin()
        grad = torch.is_grad_enabled()
        for i in range(cfg.H_cycles):
            with torch.set_grad_enabled(grad and (not one_step_grad or i == cfg.H_cycles - 1)):
                for _ in range(cfg.L_cycles):
                    z_L = net(z_L, z_H + x, cos_sin)
                z_H = net(z_H, z_L, cos_sin)
        return z_H, z_L

    def heads(self, z_H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """logits [B, S, V] (compute dtype), q_halt [B] fp32, q_continue [B] fp32.

        With `no_ACT_continue` q_continue is 0 (the official code ignores that logit and halts
        on q_halt > 0), so "q_halt > q_continue" is the official rule."""
        logits = self.inner.lm_head(z_H)[:, self.config.puzzle_emb_len:]
        q = self.inner.q_head(z_H[:, 0]).float()
        q_halt = q[..., 0]
        q_continue = torch.zeros_like(q_halt) if self.config.no_ACT_continue else q[..., 1]
        return logits, q_halt, q_continue

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

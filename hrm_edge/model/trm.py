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

import torch
from torch import nn

from hrm_edge.model.config import TRMConfig
from hrm_edge.model.hrm import Attention, CastedLinear, ModelIO, RecurrentModel, SwiGLU, rms_norm


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


class TRMInner(ModelIO):
    """The official `inner`: shared I/O plus the one network `L_level`."""

    def __init__(self, config: TRMConfig) -> None:
        super().__init__(config)
        self.L_level = TRMReasoningModule(config)
        self.init_carry_and_q_head()


class TRM(RecurrentModel):
    """TRM ACT v1 with HRM's driving interface (`hrm_edge.model.hrm.RecurrentModel`). Tell the
    families apart by `model.config.family` ("hrm" / "trm")."""

    def __init__(self, config: TRMConfig, compute_dtype: str | None = None) -> None:
        super().__init__(config, compute_dtype)
        self.inner = TRMInner(config)

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
        logits, q_halt, q_continue = super().heads(z_H)
        if self.config.no_ACT_continue:
            q_continue = torch.zeros_like(q_halt)
        return logits, q_halt, q_continue

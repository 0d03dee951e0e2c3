"""The HRM building blocks against their direct formulas (shared/spec/hrm-reference.md)."""

from __future__ import annotations

import math

import pytest
import torch

from hrm_edge.model.config import HRMConfig, preset_config
from hrm_edge.model.hrm import HRM, Block, apply_rope, rms_norm, rope_cos_sin


def tiny_config(**kw) -> HRMConfig:
    base = dict(seq_len=6, vocab_size=11, num_puzzle_identifiers=3, hidden_size=16, num_heads=2, expansion=4.0,
                H_layers=1, L_layers=1, H_cycles=2, L_cycles=3, puzzle_emb_ndim=16, halt_max_steps=4,
                forward_dtype="float32")
    base.update(kw)
    return HRMConfig(**base)


def test_rope_rotates_each_frequency_pair_by_position_times_inverse_frequency():
    head_dim, theta, pos = 8, 10000.0, 5
    cos, sin = rope_cos_sin(pos + 1, head_dim, theta)
    x = torch.randn(1, pos + 1, 1, head_dim)
    out = apply_rope(x, cos, sin)[0, pos, 0]
    half = head_dim // 2
    for i in range(half):
        angle = pos / theta ** (2 * i / head_dim)
        a, b = x[0, pos, 0, i], x[0, pos, 0, i + half]
        assert out[i].item() == pytest.approx((a * math.cos(angle) - b * math.sin(angle)).item(), abs=1e-5)
        assert out[i + half].item() == pytest.approx((b * math.cos(angle) + a * math.sin(angle)).item(), abs=1e-5)


def test_rope_keeps_position_zero_unchanged():
    cos, sin = rope_cos_sin(4, 8, 10000.0)
    x = torch.randn(2, 4, 3, 8)
    assert torch.equal(apply_rope(x, cos, sin)[:, 0], x[:, 0])


def test_rms_norm_has_no_weight_and_unit_root_mean_square():
    x = torch.randn(3, 5, 64) * 7 + 2
    y = rms_norm(x, 1e-5)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(3, 5), rtol=1e-4, atol=1e-4)


def test_rms_norm_of_bf16_input_is_computed_in_fp32_and_returned_in_bf16():
    x = torch.randn(4, 32).to(torch.bfloat16)
    y = rms_norm(x, 1e-5)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, rms_norm(x.float(), 1e-5).to(torch.bfloat16), rtol=0, atol=0)


@pytest.mark.parametrize(("hidden", "expansion", "inter"), [(512, 4.0, 1536), (128, 4.0, 512), (64, 2.0, 256),
                                                            (384, 4.0, 1024), (1000, 4.0, 2816)])
def test_swiglu_width_is_two_thirds_expansion_rounded_up_to_256(hidden, expansion, inter):
    cfg = tiny_config(hidden_size=hidden, num_heads=1, expansion=expansion)
    assert cfg.mlp_inter == inter


def test_block_is_post_norm_attention_then_mlp():
    torch.manual_seed(0)
    cfg = tiny_config()
    block = Block(cfg)
    h = torch.randn(2, 7, 16)
    cos_sin = rope_cos_sin(7, cfg.head_dim, cfg.rope_theta)
    h1 = rms_norm(h + block.self_attn(h, cos_sin), cfg.rms_norm_eps)
    expected = rms_norm(h1 + block.mlp(h1), cfg.rms_norm_eps)
    torch.testing.assert_close(block(h, cos_sin), expected)


def test_attention_is_non_causal_softmax_over_all_positions():
    torch.manual_seed(1)
    cfg = tiny_config()
    block = Block(cfg)
    attn = block.self_attn
    h = torch.randn(1, 5, 16)
    q, k, v = attn.qkv_proj(h).view(1, 5, 3 * cfg.num_heads, cfg.head_dim).split(cfg.num_heads, dim=2)
    out = []
    for head in range(cfg.num_heads):
        scores = q[0, :, head] @ k[0, :, head].T / math.sqrt(cfg.head_dim)
        out.append(torch.softmax(scores, -1) @ v[0, :, head])
    expected = attn.o_proj(torch.cat(out, -1)[None])
    torch.testing.assert_close(attn(h, None), expected, rtol=1e-5, atol=1e-5)


def test_one_segment_runs_L_cycles_L_passes_then_one_H_pass_per_H_cycle():
    torch.manual_seed(0)
    cfg = tiny_config(H_cycles=2, L_cycles=3)
    model = HRM(cfg).eval()
    calls: list[str] = []
    model.inner.L_level.register_forward_hook(lambda *_: calls.append("L"))
    model.inner.H_level.register_forward_hook(lambda *_: calls.append("H"))
    z_H, z_L = model.initial_carry(2)
    with torch.no_grad():
        model.segment(z_H, z_L, torch.ones(2, 6, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    assert calls == ["L", "L", "L", "H", "L", "L", "L", "H"]


def test_L_level_gets_z_H_plus_input_and_H_level_gets_z_L():
    torch.manual_seed(0)
    cfg = tiny_config(H_cycles=1, L_cycles=1)
    model = HRM(cfg).eval()
    tokens, ids = torch.randint(1, 11, (2, 6)), torch.tensor([0, 2])
    z_H, z_L = model.initial_carry(2)
    with torch.no_grad():
        x = model.embed(tokens, ids)
        cs = (model.inner.rope_cos, model.inner.rope_sin)
        zl = model.inner.L_level(z_L, z_H + x, cs)
        zh = model.inner.H_level(z_H, zl, cs)
        got_h, got_l, logits, _, _ = model.segment(z_H, z_L, tokens, ids)
    torch.testing.assert_close(got_l, zl)
    torch.testing.assert_close(got_h, zh)
    torch.testing.assert_close(logits, model.inner.lm_head(zh)[:, cfg.puzzle_emb_len:])


def test_input_embedding_prepends_puzzle_rows_and_scales_by_sqrt_hidden():
    torch.manual_seed(0)
    cfg = tiny_config(puzzle_emb_ndim=20)  # 20 > hidden 16: two prefix positions, zero padded
    model = HRM(cfg)
    model.inner.puzzle_emb.weights.normal_()
    tokens, ids = torch.randint(0, 11, (2, 6)), torch.tensor([2, 1])
    x = model.embed(tokens, ids)
    assert cfg.puzzle_emb_len == 2 and x.shape == (2, 8, 16)
    row = model.inner.puzzle_emb.weights[2]
    torch.testing.assert_close(x[0, 0], 4.0 * row[:16])
    torch.testing.assert_close(x[0, 1, :4], 4.0 * row[16:])
    assert torch.all(x[0, 1, 4:] == 0)
    torch.testing.assert_close(x[0, 2:], 4.0 * model.inner.embed_tokens.embedding_weight[tokens[0]])


def test_learned_positions_average_token_and_position_embeddings():
    torch.manual_seed(0)
    cfg = tiny_config(pos_encodings="learned", puzzle_emb_ndim=0)
    model = HRM(cfg)
    tokens = torch.randint(0, 11, (1, 6))
    expected = 4.0 * 0.707106781 * (model.inner.embed_tokens.embedding_weight[tokens[0]]
                                     + model.inner.embed_pos.embedding_weight)
    torch.testing.assert_close(model.embed(tokens, torch.zeros(1, dtype=torch.long))[0], expected)


def test_q_head_reads_the_first_position_of_z_H():
    torch.manual_seed(0)
    model = HRM(tiny_config())
    model.inner.q_head.weight.data.normal_()
    z_H = torch.randn(3, 7, 16)
    _, q_halt, q_cont = model.heads(z_H)
    q = z_H[:, 0] @ model.inner.q_head.weight.T + model.inner.q_head.bias
    torch.testing.assert_close(q_halt, q[:, 0])
    torch.testing.assert_close(q_cont, q[:, 1])


def test_fresh_q_head_predicts_continue_with_bias_minus_five():
    model = HRM(tiny_config())
    assert torch.all(model.inner.q_head.weight == 0)
    assert torch.all(model.inner.q_head.bias == -5)


def test_published_27m_config_has_27_275_266_parameters():
    cfg = preset_config("sudoku-27m")
    assert cfg.parameter_count() == 27_275_266
    assert cfg.mlp_inter == 1536 and cfg.puzzle_emb_len == 1
    assert HRM(cfg).parameter_count() == 27_275_266


def test_bf16_and_fp32_segments_agree_to_bf16_precision():
    torch.manual_seed(0)
    model = HRM(tiny_config()).eval()
    tokens, ids = torch.randint(1, 11, (2, 6)), torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        ref = model.segment(*model.initial_carry(2), tokens, ids)[2]
        model.set_compute_dtype("bfloat16")
        low = model.segment(*model.initial_carry(2), tokens, ids)[2]
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max().item() < 0.1

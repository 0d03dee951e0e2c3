"""The Tiny Recursive Model (TRM): official layout, recurrence, mlp_t, halting, family detection, ACT loop."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from hrm_edge.act import parse_policy, run_act
from hrm_edge.errors import CheckpointError
from hrm_edge.model import HRMConfig, TRMConfig, config_from_dict, create_model, preset_config
from hrm_edge.model.checkpoint import load_checkpoint, save_checkpoint, write_official_layout
from hrm_edge.model.hrm import HRM
from hrm_edge.model.runner import TorchSegmentRunner
from hrm_edge.model.trm import TRM

TRM_ARCH = "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1"
HRM_ARCH = "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1"
ATTENTION = {"mlp_t": False, "pos_encodings": "rope"}
VARIANTS = {"mlp_t": {}, "attention": ATTENTION}


def tiny(seed: int = 0, **overrides) -> TRM:
    """trm-sudoku-tiny (mlp_t, no positions, 2-position puzzle prefix) with a non-trivial puzzle row and Q-head."""
    torch.manual_seed(seed)
    model = create_model(preset_config("trm-sudoku-tiny", **overrides))
    with torch.no_grad():
        model.inner.puzzle_emb.weights.normal_()
        model.inner.q_head.weight.normal_(0.0, 0.2)
    return model.eval()


def batch(b: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randint(1, 11, (b, 81), generator=g), torch.zeros(b, dtype=torch.long)


def logits_of(model, steps: int = 2) -> torch.Tensor:
    tokens, ids = batch()
    z_H, z_L = model.initial_carry(len(tokens))
    with torch.no_grad():
        for _ in range(steps):
            z_H, z_L, logits, _, _ = model.segment(z_H, z_L, tokens, ids)
    return logits


def round_init_to_bf16(model) -> None:
    """H_init/L_init go through bf16 on disk, exactly as the TRM trainer stores them."""
    with torch.no_grad():
        model.inner.H_init.copy_(model.inner.H_init.bfloat16().float())
        model.inner.L_init.copy_(model.inner.L_init.bfloat16().float())


def edit_yaml(path, edit) -> None:
    cfg = yaml.safe_load(path.read_text())
    edit(cfg)
    path.write_text(yaml.safe_dump(cfg))


# ---------------------------------------------------------------------------- official layout

def test_official_layout_is_written_as_the_trm_trainer_writes_it(tmp_path):
    ckpt = write_official_layout(tmp_path / "run", tiny(), step=500)
    raw = torch.load(ckpt, weights_only=True)
    assert "_orig_mod.model.inner.L_level.layers.0.mlp_t.gate_up_proj.weight" in raw
    assert not any(".H_level." in k for k in raw)
    assert raw["_orig_mod.model.inner.H_init"].dtype == torch.bfloat16  # created in forward_dtype
    assert raw["_orig_mod.model.inner.q_head.bias"].dtype == torch.float32
    cfg = yaml.safe_load((tmp_path / "run" / "all_config.yaml").read_text())
    assert cfg["data_paths"] == ["data"] and "data_path" not in cfg
    arch = cfg["arch"]
    assert arch["name"] == TRM_ARCH
    assert arch["mlp_t"] is True and arch["pos_encodings"] == "none" and arch["no_ACT_continue"] is True
    assert arch["puzzle_emb_len"] == 2 and arch["H_layers"] == 0
    assert not {"seq_len", "vocab_size", "family"} & set(arch)
    # forward_dtype float32 -> H_init/L_init stored in float32, as the official code would.
    raw32 = torch.load(write_official_layout(tmp_path / "f32", tiny(forward_dtype="float32"), step=1),
                       weights_only=True)
    assert raw32["_orig_mod.model.inner.L_init"].dtype == torch.float32


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_official_layout_loads_strictly_and_reproduces_logits(tmp_path, variant):
    model = tiny(**VARIANTS[variant])
    write_official_layout(tmp_path / "run", model, step=1234)
    round_init_to_bf16(model)
    ck = load_checkpoint(tmp_path / "run")
    assert isinstance(ck.model, TRM) and ck.config == model.config
    assert ck.task == "sudoku" and ck.provenance["step"] == 1234
    assert ck.provenance["family"] == "trm" and ck.provenance["family_from"] == "arch.name"
    assert torch.equal(logits_of(ck.model), logits_of(model))


def test_uncompiled_trm_file_loads_too(tmp_path):
    ckpt = write_official_layout(tmp_path / "run", tiny(), step=5, compiled=False)
    assert isinstance(load_checkpoint(ckpt).model, TRM)


def test_mlp_t_checkpoint_without_dataset_json_takes_seq_len_from_the_token_mlp(tmp_path):
    write_official_layout(tmp_path / "run", tiny(), step=1)
    (tmp_path / "run" / "dataset.json").unlink()
    ck = load_checkpoint(tmp_path / "run")
    assert ck.config.seq_len == 81
    assert ck.provenance["seq_len_from"] == "weight 'inner.L_level.layers.0.mlp_t.down_proj.weight'"


def test_attention_checkpoint_without_dataset_json_still_asks_for_seq_len(tmp_path):
    write_official_layout(tmp_path / "run", tiny(**ATTENTION), step=1)
    (tmp_path / "run" / "dataset.json").unlink()
    with pytest.raises(CheckpointError, match=r"cannot tell seq_len.*--seq-len or --task"):
        load_checkpoint(tmp_path / "run")
    assert load_checkpoint(tmp_path / "run", task="sudoku").config.seq_len == 81


# ---------------------------------------------------------------------------- the model

@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_both_variants_run_a_segment(variant):
    model = tiny(**VARIANTS[variant])
    tokens, ids = batch(2)
    with torch.no_grad():
        z_H, z_L, logits, q_halt, q_cont = model.segment(*model.initial_carry(2), tokens, ids)
    assert z_H.shape == z_L.shape == (2, 83, 32)
    assert logits.shape == (2, 81, 11) and q_halt.shape == q_cont.shape == (2,)
    assert q_halt.dtype == q_cont.dtype == torch.float32
    assert torch.isfinite(logits).all() and torch.isfinite(q_halt).all()
    model.set_compute_dtype("bfloat16")
    with torch.no_grad():
        low = model.segment(*model.initial_carry(2), tokens, ids)[2]
    assert low.dtype == torch.bfloat16 and torch.isfinite(low.float()).all()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_one_network_updates_z_L_L_cycles_times_then_z_H_each_H_cycle(variant):
    model = tiny(H_cycles=3, L_cycles=2, **VARIANTS[variant])
    assert not hasattr(model.inner, "H_level")
    calls = []
    model.inner.L_level.register_forward_hook(
        lambda mod, args, out: calls.append((args[0], args[1], out, torch.is_grad_enabled())))
    tokens, ids = batch(2)
    x = model.embed(tokens, ids).detach()
    z_H0, z_L0 = model.initial_carry(2)
    with torch.no_grad():
        z_H_out, z_L_out = model.reason(z_H0, z_L0, x)
    assert len(calls) == (2 + 1) * 3  # (L_cycles + 1) * H_cycles passes per segment
    z_H, z_L, n = z_H0, z_L0, 0
    for _ in range(3):
        for _ in range(2):  # z_L <- net(z_L, z_H + x)
            hidden, injection, out, _ = calls[n]
            assert torch.equal(hidden, z_L) and torch.equal(injection, z_H + x)
            z_L, n = out, n + 1
        hidden, injection, out, _ = calls[n]  # z_H <- net(z_H, z_L)
        assert torch.equal(hidden, z_H) and torch.equal(injection, z_L)
        z_H, n = out, n + 1
    assert torch.equal(z_H_out, z_H) and torch.equal(z_L_out, z_L)


def test_training_recursion_builds_a_graph_only_for_the_last_cycle():
    model = tiny(H_cycles=3, L_cycles=2).train()
    grads = []
    model.inner.L_level.register_forward_hook(lambda mod, args, out: grads.append(torch.is_grad_enabled()))
    tokens, ids = batch(2)
    z_H, _ = model.reason(*model.initial_carry(2), model.embed(tokens, ids), one_step_grad=True)
    assert grads == [False] * 3 + [False] * 3 + [True] * 3  # H_cycles - 1 cycles without grad, one with
    model.heads(z_H)[0].float().square().mean().backward()
    assert model.inner.L_level.layers[0].mlp_t.down_proj.weight.grad is not None
    grads.clear()
    model.reason(*model.initial_carry(2), model.embed(tokens, ids), one_step_grad=False)
    assert grads == [True] * 9


def test_mlp_t_has_the_official_names_and_shapes():
    model = tiny()
    P, inter_t, D, inter = 83, 256, 32, 256  # round(4 * 83 * 2/3) = 221 -> 256; round(4 * 32 * 2/3) = 85 -> 256
    assert model.config.mlp_t_inter == inter_t and model.config.mlp_inter == inter
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {
        "inner.embed_tokens.embedding_weight": (11, D),
        "inner.lm_head.weight": (11, D),
        "inner.q_head.weight": (2, D),
        "inner.q_head.bias": (2,),
        "inner.puzzle_emb.weights": (1, 32),
        "inner.L_level.layers.0.mlp_t.gate_up_proj.weight": (2 * inter_t, P),
        "inner.L_level.layers.0.mlp_t.down_proj.weight": (P, inter_t),
        "inner.L_level.layers.0.mlp.gate_up_proj.weight": (2 * inter, D),
        "inner.L_level.layers.0.mlp.down_proj.weight": (D, inter),
        "inner.H_init": (D,),
        "inner.L_init": (D,),
    }
    att = {k for k in tiny(**ATTENTION).state_dict() if ".layers.0." in k}
    assert att == {f"inner.L_level.layers.0.{n}.weight" for n in
                   ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")}


def test_mlp_t_block_mixes_positions_and_normalises_over_them():
    model = tiny()
    block = model.inner.L_level.layers[0]
    torch.manual_seed(1)
    h = torch.randn(2, 83, 32)
    # By hand: a SwiGLU over the position axis, RMS-normalised over positions, then the channel SwiGLU.
    gate, up = torch.einsum("bpd,ip->bid", h, block.mlp_t.gate_up_proj.weight).chunk(2, dim=1)
    s = h + torch.einsum("bid,pi->bpd", F.silu(gate) * up, block.mlp_t.down_proj.weight)
    s = s * torch.rsqrt(s.square().mean(dim=1, keepdim=True) + 1e-5)
    gate, up = (s @ block.mlp.gate_up_proj.weight.T).chunk(2, dim=-1)
    s = s + (F.silu(gate) * up) @ block.mlp.down_proj.weight.T
    expected = s * torch.rsqrt(s.square().mean(dim=-1, keepdim=True) + 1e-5)
    with torch.no_grad():
        torch.testing.assert_close(block(h, None), expected, rtol=1e-5, atol=1e-5)

    # Changing one input token changes other positions' outputs at the first block.
    outs = []
    block.register_forward_hook(lambda mod, args, out: outs.append(out))
    tokens, ids = batch(1)
    other = tokens.clone()
    other[0, 40] = 1 + tokens[0, 40] % 10
    with torch.no_grad():
        for t in (tokens, other):
            model.segment(*model.initial_carry(1), t, ids)
    first, second = outs[0], outs[len(outs) // 2]
    changed = (first - second).abs().amax(-1)[0] > 0  # [P]
    assert changed[42]  # the edited token (after the 2 prefix positions)
    assert changed[:42].all() and changed[43:].all()  # and every other position


def test_preset_parameter_counts_match_a_hand_computation():
    def count(D, P, V, layers, mlp_t, inter, inter_t):
        mix = (P * 2 * inter_t + inter_t * P) if mlp_t else (D * 3 * D + D * D)
        return layers * (mix + D * 2 * inter + inter * D) + 2 * V * D + 2 * D + 2

    # trm-sudoku-5m: D 512, P 81 + 16, channel inter round(1365.3) -> 1536, token inter round(258.7) -> 512.
    assert count(512, 97, 11, 2, True, 1536, 512) == 5_028_866
    assert count(512, 97, 11, 2, False, 1536, 0) == 6_828_034
    assert count(128, 97, 11, 2, True, 512, 512) == 694_274
    assert count(32, 83, 11, 1, True, 256, 256) == 89_090
    for name, n in (("trm-sudoku-5m", 5_028_866), ("trm-sudoku-att-7m", 6_828_034),
                    ("trm-sudoku-demo", 694_274), ("trm-sudoku-tiny", 89_090)):
        cfg = preset_config(name)
        assert cfg.parameter_count() == n, name
        if n < 6_000_000:
            assert create_model(cfg).parameter_count() == n, name


def test_no_ACT_continue_halts_on_q_halt_above_zero():
    model = tiny()
    with torch.no_grad():
        model.inner.q_head.bias.copy_(torch.tensor([0.0, 3.0]))
    z_H = torch.randn(8, 83, 32)
    with torch.no_grad():
        _, q_halt, q_cont = model.heads(z_H)
        raw = z_H[:, 0] @ model.inner.q_head.weight.T + model.inner.q_head.bias
    torch.testing.assert_close(q_halt, raw[:, 0])
    assert torch.equal(q_cont, torch.zeros(8))  # the official code never reads this logit
    halts = parse_policy("q").halts(q_halt.numpy(), q_cont.numpy())
    assert np.array_equal(halts, q_halt.numpy() > 0) and 0 < halts.sum() < 8
    # Threshold 0.5 is the same rule: sigmoid(q_halt) >= 0.5.
    assert np.array_equal(parse_policy("threshold:0.5").halts(q_halt.numpy(), q_cont.numpy()), q_halt.numpy() >= 0)

    model = tiny(no_ACT_continue=False)
    with torch.no_grad():
        _, _, q_cont = model.heads(z_H)
        raw = z_H[:, 0] @ model.inner.q_head.weight.T + model.inner.q_head.bias
    torch.testing.assert_close(q_cont, raw[:, 1])


def test_run_act_with_the_torch_runner_drives_a_trm():
    model = tiny(seed=3)
    tokens, ids = batch(6)
    T = model.config.halt_max_steps
    fixed = run_act(TorchSegmentRunner(model), tokens.numpy(), ids.numpy(), parse_policy("fixed"), T)
    assert (fixed.steps == T).all()
    assert np.array_equal(fixed.predictions, logits_of_batch(model, tokens, ids, T)[-1][0].argmax(-1).numpy())

    # Shift the halt bias so that some puzzles halt early under "q" (q_halt > 0).
    q0 = torch.stack([q for _, q in logits_of_batch(model, tokens, ids, T)])  # [T, B]
    with torch.no_grad():
        model.inner.q_head.bias[0] -= q0[0].median()
    traj = logits_of_batch(model, tokens, ids, T)
    q = torch.stack([q for _, q in traj]).numpy()
    expected_steps = np.array([next((t + 1 for t in range(T) if q[t, b] > 0), T) for b in range(6)])
    assert len(set(expected_steps)) > 1  # a mix of early and late halts
    res = run_act(TorchSegmentRunner(model), tokens.numpy(), ids.numpy(), parse_policy("q"), T)
    assert np.array_equal(res.steps, expected_steps)
    for b, s in enumerate(expected_steps):
        assert np.array_equal(res.predictions[b], traj[s - 1][0][b].argmax(-1).numpy())
    assert (res.q_continue == 0).all()


def logits_of_batch(model, tokens, ids, steps):
    """[(logits, q_halt)] of `steps` consecutive segments for the whole batch."""
    out = []
    z_H, z_L = model.initial_carry(len(tokens))
    with torch.no_grad():
        for _ in range(steps):
            z_H, z_L, logits, q_halt, _ = model.segment(z_H, z_L, tokens, ids)
            out.append((logits, q_halt))
    return out


# ---------------------------------------------------------------------------- family detection

def test_without_arch_name_the_family_comes_from_the_keys(tmp_path):
    write_official_layout(tmp_path / "run", tiny(), step=1)
    edit_yaml(tmp_path / "run" / "all_config.yaml", lambda c: c["arch"].pop("name"))
    ck = load_checkpoint(tmp_path / "run")
    assert ck.provenance["family"] == "trm" and ck.provenance["family_from"] == "keys"


def test_arch_name_and_weights_of_different_families_is_named(tmp_path):
    write_official_layout(tmp_path / "run", tiny(), step=1)
    edit_yaml(tmp_path / "run" / "all_config.yaml", lambda c: c["arch"].update(name=HRM_ARCH, H_layers=1))
    with pytest.raises(CheckpointError, match=r"config is for model family 'hrm' but the weights are 'trm' "
                                              r"\(it has inner.L_level.\* weights and no inner.H_level.\*\)"):
        load_checkpoint(tmp_path / "run")


def test_unsupported_arch_name_lists_the_supported_ones(tmp_path):
    write_official_layout(tmp_path / "run", tiny(), step=1)
    other = "recursive_reasoning.trm_singlez@TinyRecursiveReasoningModel_ACTV1"
    edit_yaml(tmp_path / "run" / "all_config.yaml", lambda c: c["arch"].update(name=other))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "run")
    msg = str(err.value)
    assert f"unsupported arch.name {other!r}" in msg and HRM_ARCH in msg and TRM_ARCH in msg
    assert "\n" not in msg


def test_hrm_official_layout_reports_its_family(tmp_path):
    torch.manual_seed(0)
    write_official_layout(tmp_path / "run", HRM(preset_config("sudoku-tiny")), step=1)
    ck = load_checkpoint(tmp_path / "run")
    assert isinstance(ck.model, HRM) and ck.provenance["family"] == "hrm"


def test_the_hrm_copy_in_the_trm_repository_loads_as_hrm_without_mlp_t(tmp_path):
    torch.manual_seed(0)
    write_official_layout(tmp_path / "run", HRM(preset_config("sudoku-tiny")), step=1)
    name = "recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1"
    edit_yaml(tmp_path / "run" / "all_config.yaml", lambda c: c["arch"].update(name=name, mlp_t=False))
    ck = load_checkpoint(tmp_path / "run")
    assert isinstance(ck.model, HRM) and ck.provenance["ignored_arch_fields"] == ["mlp_t"]
    edit_yaml(tmp_path / "run" / "all_config.yaml", lambda c: c["arch"].update(mlp_t=True))
    with pytest.raises(CheckpointError, match="mlp_t: true is not supported"):
        load_checkpoint(tmp_path / "run")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_hrm_edge_formats_record_and_restore_the_family(tmp_path, suffix):
    model = tiny()
    path = save_checkpoint(tmp_path / f"m{suffix}", model, "sudoku", card={"note": "trm"})
    ck = load_checkpoint(path)
    assert isinstance(ck.model, TRM) and ck.config == model.config
    assert ck.provenance["family"] == "trm" and ck.provenance["family_from"] == "family field"
    assert torch.equal(logits_of(ck.model), logits_of(model))


def test_safetensors_config_without_family_is_recognised_by_its_keys(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny(), "sudoku")
    meta = json.loads((tmp_path / "m.json").read_text())
    meta.pop("family")
    meta["config"].pop("family")
    (tmp_path / "m.json").write_text(json.dumps(meta))
    ck = load_checkpoint(path)
    assert isinstance(ck.model, TRM) and ck.provenance["family_from"] == "keys"


def test_single_file_with_a_wrong_family_is_named(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", tiny(), "sudoku")
    raw = torch.load(path, weights_only=True)
    raw["family"] = raw["config"]["family"] = "xrm"
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=r"unknown model family 'xrm'; known: hrm, trm"):
        load_checkpoint(path)


# ---------------------------------------------------------------------------- config

def test_trm_config_defaults_are_the_official_trm_yaml():
    cfg = TRMConfig(seq_len=81, vocab_size=11, num_puzzle_identifiers=1)
    assert (cfg.hidden_size, cfg.num_heads, cfg.expansion, cfg.H_layers, cfg.L_layers) == (512, 8, 4.0, 0, 2)
    assert (cfg.H_cycles, cfg.L_cycles, cfg.halt_max_steps, cfg.halt_exploration_prob) == (3, 6, 16, 0.1)
    assert (cfg.puzzle_emb_ndim, cfg.puzzle_emb_len, cfg.pos_encodings) == (512, 16, "rope")
    assert (cfg.mlp_t, cfg.no_ACT_continue, cfg.forward_dtype) == (False, True, "bfloat16")
    assert cfg.family == "trm" and cfg.total_len == 97 and cfg.head_dim == 64


def test_trm_config_puzzle_prefix_rules():
    # 0 means "derive", as in the official code: ceil(puzzle_emb_ndim / hidden_size).
    assert TRMConfig(seq_len=9, vocab_size=4, num_puzzle_identifiers=1, hidden_size=32, num_heads=2,
                     puzzle_emb_ndim=40, puzzle_emb_len=0).puzzle_emb_len == 2
    assert TRMConfig(seq_len=9, vocab_size=4, num_puzzle_identifiers=1, puzzle_emb_ndim=0,
                     puzzle_emb_len=0).total_len == 9
    with pytest.raises(CheckpointError, match="puzzle_emb_len 16 needs puzzle_emb_ndim > 0"):
        TRMConfig(seq_len=9, vocab_size=4, num_puzzle_identifiers=1, puzzle_emb_ndim=0)
    with pytest.raises(CheckpointError, match="puzzle_emb_ndim 100 does not fit in puzzle_emb_len 1"):
        TRMConfig(seq_len=9, vocab_size=4, num_puzzle_identifiers=1, hidden_size=64, num_heads=2,
                  puzzle_emb_ndim=100, puzzle_emb_len=1)
    with pytest.raises(CheckpointError, match="'pos_encodings' must be one of"):
        TRMConfig(seq_len=9, vocab_size=4, num_puzzle_identifiers=1, pos_encodings="nope")
    with pytest.raises(CheckpointError, match="'pos_encodings' must be one of"):
        HRMConfig(seq_len=9, vocab_size=4, num_puzzle_identifiers=1, pos_encodings="none")


def test_configs_round_trip_and_dispatch_by_family():
    trm = preset_config("trm-sudoku-tiny")
    hrm = preset_config("sudoku-tiny")
    assert isinstance(trm, TRMConfig) and isinstance(hrm, HRMConfig)
    assert trm.to_dict()["family"] == "trm" and hrm.to_dict()["family"] == "hrm"
    assert config_from_dict(trm.to_dict()) == trm and config_from_dict(hrm.to_dict()) == hrm
    legacy = {k: v for k, v in hrm.to_dict().items() if k != "family"}
    assert config_from_dict(legacy) == hrm  # dicts from before TRM existed are HRM
    assert TRMConfig.from_dict(trm.to_dict()) == trm
    with pytest.raises(CheckpointError, match="config is for model family 'trm', not 'hrm'"):
        HRMConfig.from_dict(trm.to_dict())
    with pytest.raises(CheckpointError, match=r"unknown field.*mlp_t"):
        config_from_dict({**legacy, "mlp_t": True})
    assert isinstance(create_model(trm), TRM) and isinstance(create_model(hrm), HRM)
    assert create_model(trm, compute_dtype="bfloat16").compute_dtype == torch.bfloat16
    assert trm.segment_flops(2) == 2 * trm.segment_flops(1) > 0


def test_configs_import_without_torch():
    code = ("import sys; from hrm_edge.model import preset_config, config_from_dict; "
            "preset_config('trm-sudoku-5m'); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)

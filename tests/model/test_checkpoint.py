"""Loading checkpoints in the official layout and hrm-edge's own formats; one clear error per problem."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
import yaml

from hrm_edge.errors import CheckpointError
from hrm_edge.model.checkpoint import load_checkpoint, save_checkpoint, write_official_layout
from hrm_edge.model.config import preset_config
from hrm_edge.model.hrm import HRM


@pytest.fixture
def seeded_model() -> HRM:
    torch.manual_seed(123)
    model = HRM(preset_config("sudoku-tiny"))
    model.inner.puzzle_emb.weights.normal_()
    model.inner.q_head.weight.data.normal_()
    return model.eval()


def logits_of(model: HRM, steps: int = 2) -> torch.Tensor:
    torch.manual_seed(7)
    tokens = torch.randint(1, 11, (3, 81))
    ids = torch.zeros(3, dtype=torch.long)
    z_H, z_L = model.initial_carry(3)
    with torch.no_grad():
        for _ in range(steps):
            z_H, z_L, logits, _, _ = model.segment(z_H, z_L, tokens, ids)
    return logits


def official_dir(tmp_path, model: HRM, dataset_json: bool = True):
    ckpt = write_official_layout(tmp_path / "run", model, step=1234)
    if not dataset_json:
        (tmp_path / "run" / "dataset.json").unlink()
    return ckpt


def test_official_layout_uses_compiled_prefix_and_bf16_initial_states(tmp_path, seeded_model):
    ckpt = official_dir(tmp_path, seeded_model)
    raw = torch.load(ckpt, weights_only=True)
    assert "_orig_mod.model.inner.H_level.layers.0.self_attn.qkv_proj.weight" in raw
    assert raw["_orig_mod.model.inner.H_init"].dtype == torch.bfloat16
    assert raw["_orig_mod.model.inner.q_head.bias"].dtype == torch.float32
    arch = yaml.safe_load((tmp_path / "run" / "all_config.yaml").read_text())["arch"]
    assert arch["name"] == "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1"
    assert "seq_len" not in arch and "vocab_size" not in arch


def test_official_directory_loads_strictly_and_reproduces_logits(tmp_path, seeded_model):
    official_dir(tmp_path, seeded_model)
    # H_init/L_init went through bf16 on disk, exactly as the official trainer stores them.
    with torch.no_grad():
        seeded_model.inner.H_init.copy_(seeded_model.inner.H_init.bfloat16().float())
        seeded_model.inner.L_init.copy_(seeded_model.inner.L_init.bfloat16().float())
    ck = load_checkpoint(tmp_path / "run")
    assert ck.task == "sudoku"
    assert ck.provenance["format"] == "official" and ck.provenance["step"] == 1234
    assert torch.equal(logits_of(ck.model), logits_of(seeded_model))


def test_official_directory_picks_the_highest_step(tmp_path, seeded_model):
    official_dir(tmp_path, seeded_model)
    write_official_layout(tmp_path / "run", seeded_model, step=99)
    assert load_checkpoint(tmp_path / "run").provenance["step"] == 1234


def test_uncompiled_official_file_loads_too(tmp_path, seeded_model):
    ckpt = write_official_layout(tmp_path / "run", seeded_model, step=5, compiled=False)
    assert load_checkpoint(ckpt).config.hidden_size == 32


def test_missing_dataset_json_asks_for_seq_len(tmp_path, seeded_model):
    official_dir(tmp_path, seeded_model, dataset_json=False)
    with pytest.raises(CheckpointError, match=r"cannot tell seq_len.*--seq-len or --task"):
        load_checkpoint(tmp_path / "run")


def test_missing_dataset_json_is_filled_by_seq_len_or_task(tmp_path, seeded_model):
    official_dir(tmp_path, seeded_model, dataset_json=False)
    assert load_checkpoint(tmp_path / "run", seq_len=81).provenance["seq_len_from"] == "--seq-len"
    ck = load_checkpoint(tmp_path / "run", task="sudoku")
    assert ck.config.seq_len == 81 and ck.config.vocab_size == 11


def test_dataset_json_under_data_path_is_found(tmp_path, seeded_model, monkeypatch):
    official_dir(tmp_path, seeded_model, dataset_json=False)
    cfg_file = tmp_path / "run" / "all_config.yaml"
    cfg = yaml.safe_load(cfg_file.read_text())
    cfg["data_path"] = str(tmp_path / "data" / "sudoku-extreme-1k-aug-1000")
    cfg_file.write_text(yaml.safe_dump(cfg))
    ds = tmp_path / "data" / "sudoku-extreme-1k-aug-1000" / "train"
    ds.mkdir(parents=True)
    (ds / "dataset.json").write_text(json.dumps({"seq_len": 81, "vocab_size": 11, "num_puzzle_identifiers": 1}))
    assert load_checkpoint(tmp_path / "run").provenance["dataset_json"] == str(ds / "dataset.json")


def test_unsupported_arch_name_is_named(tmp_path, seeded_model):
    official_dir(tmp_path, seeded_model)
    cfg_file = tmp_path / "run" / "all_config.yaml"
    cfg = yaml.safe_load(cfg_file.read_text())
    cfg["arch"]["name"] = "hrm.hrm_act_v2@Something"
    cfg_file.write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match=r"unsupported arch.name 'hrm.hrm_act_v2@Something'"):
        load_checkpoint(tmp_path / "run")


def _edit_official(ckpt, edit) -> None:
    state = torch.load(ckpt, weights_only=True)
    edit(state)
    torch.save(state, ckpt)


def test_missing_key_is_named(tmp_path, seeded_model):
    ckpt = official_dir(tmp_path, seeded_model)
    _edit_official(ckpt, lambda s: s.pop("_orig_mod.model.inner.L_level.layers.0.mlp.down_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing 1 weight.*inner.L_level.layers.0.mlp.down_proj.weight"):
        load_checkpoint(ckpt)


def test_unexpected_key_is_named(tmp_path, seeded_model):
    ckpt = official_dir(tmp_path, seeded_model)
    _edit_official(ckpt, lambda s: s.__setitem__("_orig_mod.model.inner.extra.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match=r"unexpected key.*'inner.extra.weight'"):
        load_checkpoint(ckpt)


def test_shape_mismatch_is_named_with_both_shapes(tmp_path, seeded_model):
    ckpt = official_dir(tmp_path, seeded_model)
    _edit_official(ckpt, lambda s: s.__setitem__("_orig_mod.model.inner.q_head.weight", torch.zeros(3, 32)))
    with pytest.raises(CheckpointError, match=r"'inner.q_head.weight' has shape \(3, 32\).*\(2, 32\)"):
        load_checkpoint(ckpt)


def test_nan_weight_is_named(tmp_path, seeded_model):
    ckpt = official_dir(tmp_path, seeded_model)

    def poison(s):
        s["_orig_mod.model.inner.lm_head.weight"][0, 0] = float("nan")

    _edit_official(ckpt, poison)
    with pytest.raises(CheckpointError, match=r"weight 'inner.lm_head.weight' contains NaN or Inf"):
        load_checkpoint(ckpt)


def test_pickled_code_is_refused(tmp_path):
    bad = tmp_path / "evil.pt"

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    with open(bad, "wb") as f:
        pickle.dump({"format": "hrm-edge", "x": Payload()}, f)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_checkpoint(bad)


def test_garbage_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_checkpoint(bad)


def test_single_file_round_trip_keeps_weights_task_and_card(tmp_path, seeded_model):
    path = save_checkpoint(tmp_path / "m.pt", seeded_model, "sudoku", card={"accuracy": 0.5})
    ck = load_checkpoint(path)
    assert ck.task == "sudoku" and ck.card == {"accuracy": 0.5}
    assert torch.equal(logits_of(ck.model), logits_of(seeded_model))
    assert not list(tmp_path.glob("*.tmp"))


def test_single_file_from_a_newer_format_is_refused(tmp_path, seeded_model):
    path = save_checkpoint(tmp_path / "m.pt", seeded_model, "sudoku")
    raw = torch.load(path, weights_only=True)
    raw["format_version"] = 99
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="format_version 99 is newer"):
        load_checkpoint(path)


def test_safetensors_pair_round_trip(tmp_path, seeded_model):
    path = save_checkpoint(tmp_path / "m.safetensors", seeded_model, "sudoku")
    assert (tmp_path / "m.json").is_file()
    ck = load_checkpoint(path)
    assert torch.equal(logits_of(ck.model), logits_of(seeded_model))


def test_safetensors_without_config_is_a_clear_error(tmp_path, seeded_model):
    path = save_checkpoint(tmp_path / "m.safetensors", seeded_model, "sudoku")
    (tmp_path / "m.json").unlink()
    with pytest.raises(CheckpointError, match=r"need a config m\.json beside them"):
        load_checkpoint(path)


def test_unknown_config_field_is_named(tmp_path, seeded_model):
    path = save_checkpoint(tmp_path / "m.pt", seeded_model, "sudoku")
    raw = torch.load(path, weights_only=True)
    raw["config"]["hiden_size"] = 3
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=r"unknown field.*hiden_size"):
        load_checkpoint(path)

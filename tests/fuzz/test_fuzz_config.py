"""The checkpoint config reader (`config_from_dict`): every field typed and in range, the model it
implies under MAX_MODEL_ELEMENTS, and nothing allocated in proportion to a number in the input."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from hrm_edge.errors import CheckpointError
from hrm_edge.model import create_model
from hrm_edge.model.config import (
    FLOAT_RANGES,
    MAX_MODEL_ELEMENTS,
    PRESETS,
    TRM_INT_RANGES,
    HRMConfig,
    TRMConfig,
    config_from_dict,
    model_elements,
    preset_config,
)
from tests.fuzz.strategies import ONE_MIB, hostile_numbers, json_values, parses_or_refuses, peak_bytes

FIELDS = sorted({f.name for cls in (HRMConfig, TRMConfig) for f in dataclasses.fields(cls)})
CHOICES = {"pos_encodings": ["rope", "learned", "none", "ROPE"], "forward_dtype": ["float32", "bfloat16", "int8"],
           "mlp_t": [True, False, 1], "no_ACT_continue": [True, False, "yes"]}


def field_values(name: str) -> st.SearchStrategy:
    """In-range values of a field (small ones most often), or anything a hostile file could hold."""
    if name in TRM_INT_RANGES:
        low, high = TRM_INT_RANGES[name]
        valid = st.integers(low, min(high, 64)) | st.integers(low, high)
    elif name in FLOAT_RANGES:
        low, high, _ = FLOAT_RANGES[name]
        valid = st.floats(low, high) | st.integers(0, 8)
    else:
        valid = st.sampled_from(CHOICES[name])
    return valid | hostile_numbers


REQUIRED = ("seq_len", "vocab_size", "num_puzzle_identifiers")
configs = st.fixed_dictionaries(
    {name: st.integers(1, 100) | field_values(name) for name in REQUIRED},
    optional={"family": st.sampled_from(["hrm", "trm", "xrm"]) | hostile_numbers,
              **{name: field_values(name) for name in FIELDS if name not in REQUIRED}})


@given(data=configs)
def test_any_config_dict_is_a_bounded_config_or_one_checkpoint_error(data):
    config, peak = peak_bytes(config_from_dict, data)
    assert peak < ONE_MIB  # a size in the input is never allocated, only compared
    if config is not None:
        assert model_elements(config) <= MAX_MODEL_ELEMENTS
        assert config_from_dict(config.to_dict()) == config


@given(data=st.one_of(json_values, st.dictionaries(st.one_of(st.text(max_size=10), st.integers(), st.none()),
                                                   hostile_numbers, max_size=5)))
def test_any_json_document_as_a_config_is_a_config_or_one_checkpoint_error(data):
    parses_or_refuses(config_from_dict, data)


small_configs = st.fixed_dictionaries(
    {name: st.integers(1, 8) for name in REQUIRED},
    optional={"family": st.sampled_from(["hrm", "trm"]),
              **{name: st.integers(TRM_INT_RANGES[name][0], 8) for name in TRM_INT_RANGES if name not in REQUIRED},
              **{name: field_values(name) for name in FIELDS if name not in TRM_INT_RANGES}})


@given(data=small_configs)
@example(data={"seq_len": 1, "vocab_size": 1, "num_puzzle_identifiers": 1, "hidden_size": 8})  # head_dim 1
def test_model_elements_counts_every_weight_and_buffer_of_the_model(data):
    config = parses_or_refuses(config_from_dict, data)
    if config is not None:
        with torch.device("meta"):
            model = create_model(config)
        held = sum(t.numel() for t in model.parameters()) + sum(b.numel() for b in model.buffers())
        assert model_elements(config) == held


# ---------------------------------------------------------------------------- the ranges, by example

@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_within_the_caps(name):
    assert model_elements(preset_config(name)) <= MAX_MODEL_ELEMENTS


def test_the_published_27m_config_on_arc_shapes_with_a_million_puzzle_ids_is_accepted():
    # The official ARC builder gives each augmented puzzle its own identifier: ~1M for ARC-1 x 1000.
    config = preset_config("sudoku-27m", seq_len=900, vocab_size=12, num_puzzle_identifiers=1_000_000)
    network = 27_275_266 + 2 * 512  # the published parameters, one more token id in and out
    assert model_elements(config) == network + 2 * 512 + 1_000_000 * 512 + 2 * 901 * 64 == 539_392_642


def test_a_hidden_size_of_a_billion_is_refused_naming_field_value_and_range():
    with pytest.raises(CheckpointError, match=r"^config field 'hidden_size' is 1000000000, allowed 1\.\.8192$"):
        preset_config("sudoku-27m", hidden_size=10**9)


def test_a_model_over_the_element_cap_is_refused_with_its_size():
    with pytest.raises(CheckpointError, match=r"implies 2,174,\d{3},\d{3} weight elements \(8\.1 GiB in fp32\)"):
        preset_config("sudoku-27m", num_puzzle_identifiers=1 << 22)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("hidden_size", "512", r"'hidden_size' must be an integer, got '512' \(str\)"),
    ("H_layers", 4.0, r"'H_layers' must be an integer, got 4\.0 \(float\)"),
    ("halt_max_steps", True, r"'halt_max_steps' must be an integer, got True \(bool\)"),
    ("halt_max_steps", 10_001, r"'halt_max_steps' is 10001, allowed 1\.\.10000"),
    ("expansion", float("nan"), r"'expansion' is nan, allowed \(0, 64\]"),
    ("expansion", "4", r"'expansion' must be a number, got '4' \(str\)"),
    ("halt_exploration_prob", 1.5, r"'halt_exploration_prob' is 1\.5, allowed \[0, 1\]"),
    ("pos_encodings", ["rope"], r"'pos_encodings' must be one of \('rope', 'learned'\), got \['rope'\]"),
])
def test_a_wrong_type_or_range_is_one_line_naming_the_field(field, value, message):
    with pytest.raises(CheckpointError, match=message):
        preset_config("sudoku-tiny", **{field: value})


def test_rope_with_an_odd_head_dim_is_refused():
    with pytest.raises(CheckpointError, match=r"^config: head_dim 1 \(hidden_size 8 / num_heads 8\) must be even"):
        preset_config("sudoku-tiny", hidden_size=8, num_heads=8, puzzle_emb_ndim=8)
    assert preset_config("sudoku-tiny", hidden_size=8, num_heads=8, puzzle_emb_ndim=8, pos_encodings="learned")


def test_an_integer_expansion_is_stored_as_a_float():
    assert preset_config("sudoku-tiny", expansion=4).expansion == 4.0

"""`load_checkpoint` on real tiny weights with hostile configs beside them: the official layout's
`all_config.yaml` and `dataset.json`, hrm-edge's `.pt` config dict and a safetensors `.json`.
Each either loads or is one CheckpointError line; a config never makes it allocate a model that
the weights do not fill."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from hrm_edge.cli.main import main
from hrm_edge.model import create_model
from hrm_edge.model.checkpoint import load_checkpoint, save_checkpoint, write_official_layout
from hrm_edge.model.config import TRM_INT_RANGES, preset_config
from tests.fuzz.strategies import DEEP_JSON, hostile_numbers, json_values, parses_or_refuses

PRESETS = ("sudoku-tiny", "trm-sudoku-tiny")
ARCH_FIELDS = sorted({*TRM_INT_RANGES, "expansion", "rms_norm_eps", "rope_theta", "halt_exploration_prob",
                      "pos_encodings", "forward_dtype", "mlp_t", "no_ACT_continue", "name", "puzzle_emb_len"})


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Per preset: the official run directory of a seeded tiny model, and its arch / dataset dicts."""
    out = {}
    for name in PRESETS:
        torch.manual_seed(0)
        directory = tmp_path_factory.mktemp(name)
        write_official_layout(directory, create_model(preset_config(name)), step=1)
        save_checkpoint(directory / "model.pt", create_model(preset_config(name)), task="sudoku")
        save_checkpoint(directory / "st" / "model.safetensors", create_model(preset_config(name)), task="sudoku")
        out[name] = {"dir": directory, "all_config": yaml.safe_load((directory / "all_config.yaml").read_text()),
                     "dataset": json.loads((directory / "dataset.json").read_text()),
                     "meta": json.loads((directory / "st" / "model.json").read_text())}
    return out


def load_counting_models(path: Path) -> tuple[Any, int]:
    """(parses_or_refuses(load_checkpoint, path), how many models it created off the meta device)."""
    real = []

    def spy(config, *args, **kwargs):
        model = create_model(config, *args, **kwargs)
        if not next(model.parameters()).is_meta:
            real.append(config)
        return model

    with mock.patch("hrm_edge.model.checkpoint.create_model", spy):
        ck = parses_or_refuses(load_checkpoint, path)
    return ck, len(real)


def changed(base: dict[str, Any], changes: dict[str, Any], removed: list[str]) -> dict[str, Any]:
    return {**{k: v for k, v in base.items() if k not in removed}, **changes}


field_changes = st.dictionaries(st.sampled_from(ARCH_FIELDS), hostile_numbers | json_values, max_size=3)
removals = st.lists(st.sampled_from([*ARCH_FIELDS, "seq_len", "vocab_size", "num_puzzle_identifiers"]), max_size=2)


@given(preset=st.sampled_from(PRESETS), arch=field_changes, gone=removals,
       dataset=st.dictionaries(st.sampled_from(["seq_len", "vocab_size", "num_puzzle_identifiers"]),
                               hostile_numbers, max_size=2),
       data_path=st.one_of(st.just("data"), hostile_numbers, st.sampled_from(["x" * 5_000, "a\x00b"])))
@example(preset="sudoku-tiny", arch={"hidden_size": 10**9}, gone=[], dataset={}, data_path="data")
@example(preset="sudoku-tiny", arch={"name": ["a"]}, gone=[], dataset={}, data_path="data")
@example(preset="sudoku-tiny", arch={}, gone=[], dataset={"seq_len": float("inf")}, data_path="data")
def test_official_layout_with_any_all_config_and_dataset_json_loads_or_is_one_error(
        runs, preset, arch, gone, dataset, data_path):
    run = runs[preset]
    all_config = {**run["all_config"], "arch": changed(run["all_config"]["arch"], arch, gone), "data_path": data_path}
    (run["dir"] / "all_config.yaml").write_text(yaml.safe_dump(all_config))
    (run["dir"] / "dataset.json").write_text(json.dumps(changed(run["dataset"], dataset, gone)))
    ck, real_models = load_counting_models(run["dir"])
    # Only a config the weights fill is ever allocated: shapes are compared on the meta device first.
    assert real_models == (ck is not None)


@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=100), st.sampled_from(DEEP_JSON[1:2] + DEEP_JSON[3:]),
                      st.just("arch: &a [*a]"), st.just("arch: !!python/object:os.system {}")))
@example(text=DEEP_JSON[0])  # 100,000 '[' (PyYAML recurses until the stack runs out: ~1 s, so once)
def test_official_layout_with_any_all_config_text_loads_or_is_one_error(runs, text):
    run = runs["sudoku-tiny"]
    path = run["dir"] / "all_config.yaml"
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    (run["dir"] / "dataset.json").write_text(json.dumps(run["dataset"]))
    parses_or_refuses(load_checkpoint, run["dir"])


@given(preset=st.sampled_from(PRESETS), config=field_changes, gone=removals,
       extra=st.dictionaries(st.sampled_from(["task", "card", "provenance", "family"]), json_values, max_size=2))
def test_safetensors_with_any_json_config_loads_or_is_one_error(runs, preset, config, gone, extra):
    run = runs[preset]
    meta = {**run["meta"], "config": changed(run["meta"]["config"], config, gone), **extra}
    (run["dir"] / "st" / "model.json").write_text(json.dumps(meta))
    ck = parses_or_refuses(load_checkpoint, run["dir"] / "st" / "model.safetensors")
    assert ck is None or ck.task is None or isinstance(ck.task, str)


@given(preset=st.sampled_from(PRESETS), config=field_changes, gone=removals,
       extra=st.dictionaries(st.sampled_from(["task", "card", "provenance"]), json_values, max_size=2))
def test_hrm_edge_single_file_with_any_config_dict_loads_or_is_one_error(runs, preset, config, gone, extra):
    run = runs[preset]
    raw = torch.load(run["dir"] / "model.pt", weights_only=True)
    raw.update(config=changed(raw["config"], config, gone), **extra)
    path = run["dir"] / "hostile.pt"
    torch.save(raw, path)
    parses_or_refuses(load_checkpoint, path)


def test_a_hostile_hidden_size_through_the_cli_is_one_error_line_and_exit_1(runs, capsys):
    run = runs["sudoku-tiny"]
    arch = {**run["all_config"]["arch"], "hidden_size": 10**9}
    (run["dir"] / "all_config.yaml").write_text(yaml.safe_dump({**run["all_config"], "arch": arch}))
    (run["dir"] / "dataset.json").write_text(json.dumps(run["dataset"]))
    with pytest.raises(SystemExit) as done:
        main(["info", str(run["dir"])])
    err = capsys.readouterr().err
    assert done.value.code == 1
    assert err == "error: config field 'hidden_size' is 1000000000, allowed 1..8192\n"


def test_the_shipped_demo_checkpoints_are_within_the_caps():
    for path in sorted(Path(__file__).resolve().parents[2].glob("checkpoints/*/model.pt")):
        assert load_checkpoint(path).config.family in ("hrm", "trm"), path

"""Exports that keep only the puzzle-embedding rows a deployment needs, with ids remapped."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hrm_edge.act import parse_policy, run_act
from hrm_edge.bundle import BundleError, open_bundle
from hrm_edge.cli.main import main
from hrm_edge.errors import HrmEdgeError
from hrm_edge.export.puzzle_rows import select_ids
from hrm_edge.model.checkpoint import save_checkpoint
from hrm_edge.model.config import preset_config
from hrm_edge.model.hrm import HRM
from hrm_edge.model.runner import TorchSegmentRunner
from hrm_edge.runtimes.solver import GraphSolver


@pytest.fixture(scope="module")
def model_and_bundle(tmp_path_factory):
    torch.manual_seed(5)
    # two segments only: random weights are chaotic, and this test is about rows, not drift
    model = HRM(preset_config("sudoku-tiny", num_puzzle_identifiers=10, forward_dtype="float32", halt_max_steps=2))
    model.inner.puzzle_emb.weights.normal_(0, 0.2)
    root = tmp_path_factory.mktemp("rows")
    ckpt = save_checkpoint(root / "m.pt", model, "sudoku")
    with pytest.raises(SystemExit) as exc:
        main(["export", str(ckpt), "-o", str(root / "b"), "--no-fp16", "--golden", "3", "--puzzle-ids", "7,3"])
    assert exc.value.code == 0
    return model.eval(), root / "b"


def test_manifest_records_the_kept_rows(model_and_bundle):
    _, bundle = model_and_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["puzzle_rows"] == {"kept_original_ids": [0, 3, 7], "original_rows": 10}
    assert manifest["model"]["config"]["num_puzzle_identifiers"] == 3


def test_pruned_graph_answers_like_the_full_model_for_kept_ids(model_and_bundle):
    model, bundle = model_and_bundle
    tokens = np.random.default_rng(0).integers(1, 11, (4, 81))
    ids = np.array([3, 7, 0, 7])
    full = run_act(TorchSegmentRunner(model), tokens, ids, parse_policy("fixed"), 2, record_logits=True)
    pruned = GraphSolver(open_bundle(bundle), "segment.fp32").solve(tokens, ids, parse_policy("fixed"), 2,
                                                                    record_logits=True)
    assert np.abs(full.step_logits - pruned.step_logits).max() < 1e-4
    # and the rows matter: another id gives other logits
    other = run_act(TorchSegmentRunner(model), tokens, np.array([7, 3, 3, 0]), parse_policy("fixed"), 2)
    assert not np.array_equal(other.predictions, full.predictions)
    assert np.array_equal(full.predictions, pruned.predictions)


def test_an_id_that_was_not_kept_is_a_clear_error(model_and_bundle):
    _, bundle = model_and_bundle
    solver = GraphSolver(open_bundle(bundle), "segment.fp32")
    with pytest.raises(BundleError, match="puzzle id 5 was not kept"):
        solver.solve(np.ones((1, 81), np.int64), np.array([5]), parse_policy("fixed"), 1)


def test_pruned_bundle_verifies(model_and_bundle, capsys):
    _, bundle = model_and_bundle
    with pytest.raises(SystemExit) as exc:
        main(["verify", str(bundle)])
    assert exc.value.code == 0, capsys.readouterr().err


def test_arc_tasks_select_their_augmentations_by_name(tmp_path):
    names = ["<blank>", "007bbfb7", "007bbfb7_t1_0123456789", "00d62c1b", "007bbfb7x_t2_0"]
    f = tmp_path / "identifiers.json"
    f.write_text(json.dumps(names))
    assert select_ids(5, arc_tasks=["007bbfb7"], identifiers=f) == [0, 1, 2]
    with pytest.raises(HrmEdgeError, match="no identifier for ARC task 'ffffffff'"):
        select_ids(5, arc_tasks=["ffffffff"], identifiers=f)
    with pytest.raises(HrmEdgeError, match="puzzle id 12 is outside"):
        select_ids(5, puzzle_ids=[12])


def test_int8_calibration_of_a_pruned_model_uses_only_kept_ids_remapped():
    from hrm_edge.export.puzzle_rows import calib_for_kept_ids
    from hrm_edge.puzzles.datasets import load_puzzle_set

    pset = load_puzzle_set("calib_data/sudoku", split="calib")
    n = 5
    pset.inputs, pset.labels, pset.difficulty = pset.inputs[:n], pset.labels[:n], pset.difficulty[:n]
    pset.names, pset.meta = pset.names[:n], pset.meta[:n]
    pset.puzzle_ids = np.array([0, 3, 5, 7, 3])
    kept = calib_for_kept_ids(pset, [0, 3, 7])
    assert kept.puzzle_ids.tolist() == [0, 1, 2, 1]
    np.testing.assert_array_equal(kept.inputs, pset.inputs[[0, 1, 3, 4]])
    assert kept.names == [pset.names[i] for i in (0, 1, 3, 4)]
    with pytest.raises(HrmEdgeError, match="no sudoku calib puzzle uses a kept puzzle id"):
        calib_for_kept_ids(pset, [9])

"""ACT-aware INT8 calibration: the reader feeds every ACT step with the documented weighting, the
carries are the reference's, and the calibration cache skips recalibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hrm_edge.act import parse_policy
from hrm_edge.model import create_model
from hrm_edge.model.config import preset_config
from hrm_edge.puzzles.datasets import load_puzzle_set
from hrm_edge.quant import calibration as C

T = 4  # max_steps of the test model


@pytest.fixture(scope="module")
def puzzles():
    pset = load_puzzle_set("calib_data/sudoku6", split="calib")
    return pset.inputs[:16], pset.puzzle_ids[:16]


@pytest.fixture(scope="module")
def model(puzzles):
    torch.manual_seed(0)
    cfg = preset_config("sudoku-tiny", seq_len=36, vocab_size=8, halt_max_steps=T, forward_dtype="float32")
    m = create_model(cfg, compute_dtype="float32").eval()
    with torch.inference_mode():  # a Q-head that halts about half the puzzles early: the weighting shows
        m.inner.q_head.weight.normal_(0, 1.0)
        m.inner.q_head.bias.zero_()
        x = m.embed(torch.from_numpy(puzzles[0]), torch.from_numpy(puzzles[1]))
        z_H, z_L = m.initial_carry(len(x))
        diffs = []
        for _ in range(T):
            z_H, z_L = m.reason(z_H, z_L, x)
            _, qh, qc = m.heads(z_H)
            diffs.append((qh - qc).numpy())
        m.inner.q_head.bias[0] = -float(np.quantile(np.concatenate(diffs), 0.75))
    return m


@pytest.fixture(scope="module")
def graph(model, tmp_path_factory):
    from hrm_edge.export.graphs import export_segment

    return export_segment(model, tmp_path_factory.mktemp("calib") / "segment.onnx")


def test_select_samples_follows_the_running_puzzles_with_a_floor():
    halt = np.array([1, 2, 2, 4, 4, 4, 4, 4])
    chosen = C.select_samples(halt, 4, min_step_share=0.25)
    assert [len(c) for c in chosen] == [8, 7, 5, 5]  # puzzles still running at steps 0..3
    assert list(chosen[1]) == [1, 2, 3, 4, 5, 6, 7]
    early = C.select_samples(np.array([1, 1, 1, 1, 1, 1, 1, 2]), 4, min_step_share=0.25)
    assert [len(c) for c in early] == [8, 2, 2, 2]  # topped up to ceil(0.25 * 8) from the fixed continuation
    assert 7 in early[1] and 7 in early[3]  # the puzzle that halted last is used first
    assert [len(c) for c in C.select_samples(np.ones(8, int), 3, min_step_share=0)] == [8, 0, 0]


def test_reader_feeds_every_step_weighted_by_the_q_policy(model, puzzles):
    tokens, ids = puzzles
    reader = C.ActCalibrationReader(model, tokens, ids, max_steps=T, policy="q", min_step_share=0.25, batch_size=5)
    rollout = reader.rollout
    # halting steps are the q policy's on the reference run
    policy = parse_policy("q")
    for i in range(len(tokens)):
        first = next((s + 1 for s in range(T) if policy.halts(rollout.q_halt[s, i:i + 1],
                                                              rollout.q_continue[s, i:i + 1])[0]), T)
        assert rollout.halt_steps[i] == first
    running = [int((rollout.halt_steps > s).sum()) for s in range(T)]
    assert reader.running_counts == running
    assert running[0] == len(tokens) and running[-1] < len(tokens), "the test Q-head should halt some puzzles"
    floor = int(np.ceil(0.25 * len(tokens)))
    assert reader.step_counts == [max(r, floor) for r in running]
    fed = []
    rows = 0
    while (feeds := reader.get_next()) is not None:
        assert set(feeds) == {"tokens", "puzzle_ids", "z_H", "z_L"}
        rows += len(feeds["tokens"])
        fed.append(feeds)
    assert sorted(set(reader.fed_steps)) == list(range(T))  # steps 0..max-1 are all fed
    assert rows == sum(reader.step_counts)
    assert len(reader) == len(fed)
    # the step-0 carry is the initial carry, later carries differ from it and from each other
    h0 = model.inner.H_init.numpy()
    assert np.allclose(rollout.z_H[0], h0[None, None, :])
    for s in range(1, T):
        assert not np.allclose(rollout.z_H[s], rollout.z_H[s - 1], atol=1e-3)
        assert not np.allclose(rollout.z_L[s], rollout.z_L[s - 1], atol=1e-3)
    # ... and they are the reference's: the carry entering segment 3 of puzzle 2, recomputed
    with torch.inference_mode():
        x = model.embed(torch.from_numpy(tokens[2:3]), torch.from_numpy(ids[2:3]))
        z_H, z_L = model.initial_carry(1)
        for _ in range(2):
            z_H, z_L = model.reason(z_H, z_L, x)
    np.testing.assert_allclose(rollout.z_H[2, 2], z_H[0].numpy(), atol=1e-5)
    reader.rewind()
    assert reader.get_next() is not None and reader.fed_steps == [0]


def test_calibration_is_cached(model, puzzles, graph, tmp_path):
    tokens, ids = puzzles
    reader = C.ActCalibrationReader(model, tokens[:6], ids[:6], max_steps=T)
    before = C.calibration_runs()
    first = C.calibrate(graph, reader, "minmax", op_types=["MatMul"], cache_dir=tmp_path, progress=False)
    assert C.calibration_runs() == before + 1 and not first.cache_hit
    again = C.calibrate(graph, C.ActCalibrationReader(model, tokens[:6], ids[:6], max_steps=T), "minmax",
                        op_types=["MatMul"], cache_dir=tmp_path, progress=False)
    assert C.calibration_runs() == before + 1, "the second call must not calibrate again"
    assert again.cache_hit and again.key == first.key
    a, b = first.tensors(), again.tensors()
    assert set(a.keys()) == set(b.keys()) and len(a.keys()) > 10
    name = next(iter(a.keys()))
    np.testing.assert_array_equal(a[name].range_value, b[name].range_value)
    # other settings (step 0 only, the naive calibration): a new key, a real calibration, other ranges
    step0 = C.calibrate(graph, C.ActCalibrationReader(model, tokens[:6], ids[:6], max_steps=1), "minmax",
                        op_types=["MatMul"], cache_dir=tmp_path, progress=False)
    assert not step0.cache_hit and step0.key != first.key and C.calibration_runs() == before + 2
    s0 = step0.tensors()
    wider = [k for k in a if np.ptp(np.asarray(a[k].range_value)) > 1.05 * np.ptp(np.asarray(s0[k].range_value))]
    assert len(wider) > 5, "later ACT steps reach activation ranges that step 0 does not"


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_methods(model, puzzles, graph, tmp_path, method):
    tokens, ids = puzzles
    reader = C.ActCalibrationReader(model, tokens[:4], ids[:4], max_steps=2, batch_size=4)
    cal = C.calibrate(graph, reader, method, op_types=["MatMul"], cache_dir=tmp_path, progress=False, chunk_batches=1)
    ranges = cal.tensors()
    lo, hi = ranges["z_L"].range_value if "z_L" in ranges else next(iter(ranges.values())).range_value
    assert float(np.max(hi)) > float(np.min(lo))
    with pytest.raises(ValueError, match="unknown calibration method"):
        C.calibration_method("kl")

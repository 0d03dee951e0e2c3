"""Parity metrics and gates on the trained demo: the fp64 floor tells rounding from a real error."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from hrm_edge.act import SolveResult, parse_policy, solve_in_batches
from hrm_edge.export import graphs
from hrm_edge.model.checkpoint import load_checkpoint
from hrm_edge.model.runner import TorchSegmentRunner
from hrm_edge.parity import DEFAULT_GATES, compare, gate
from hrm_edge.puzzles.datasets import load_puzzle_set
from hrm_edge.runtimes.ort import loader as ort_loader
from hrm_edge.runtimes.ort import runner as ort_runtime

REPO = Path(__file__).resolve().parents[1]
N = 64  # validation puzzles


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(model, puzzles, torch fp32 run, torch fp64 run, exported segment graph)."""
    torch.set_num_threads(1)
    ck = load_checkpoint(REPO / "checkpoints" / "sudoku6-demo" / "model.pt")
    model = ck.model.set_compute_dtype("float32").eval()
    pset = load_puzzle_set(REPO / "calib_data" / "sudoku6", split="val")
    tokens, ids, labels = pset.inputs[:N], pset.puzzle_ids[:N], pset.labels[:N]
    steps = model.config.halt_max_steps

    def run(m):
        return solve_in_batches(TorchSegmentRunner(m), tokens, ids, parse_policy("q"), steps, N,
                                record_steps=True, record_logits=True)

    fp32 = run(model)
    fp64 = run(copy.deepcopy(model).double().set_compute_dtype(torch.float64))
    path = graphs.export_segment(model, tmp_path_factory.mktemp("parity") / "segment.onnx")
    return model, (tokens, ids, labels), fp32, fp64, path


def ort_run(model, path, puzzles):
    tokens, ids, _ = puzzles
    carry = graphs.export_initial_carry(model)
    runner = ort_runtime.OrtSegmentRunner(ort_loader.make_session(path, threads=1), carry["H_init"], carry["L_init"])
    return solve_in_batches(runner, tokens, ids, parse_policy("q"), model.config.halt_max_steps, N,
                            record_steps=True, record_logits=True)


def test_pytorch_fp32_itself_is_far_from_fp64_on_a_trained_model(demo):
    _, puzzles, fp32, fp64, _ = demo
    metrics = compare(fp64, fp32, puzzles[2])
    # the same weights in fp32 and fp64 solve the same puzzles ...
    assert metrics["exact_agreement"] == 1.0 and metrics["halting_agreement"] == 1.0
    # ... yet their logits differ by far more than the 1e-4 from step 1 on
    assert metrics["per_step"][0]["max_abs"] > 1e-4


def test_the_exported_graph_is_as_exact_as_pytorch_fp32(demo):
    model, puzzles, fp32, fp64, path = demo
    metrics = compare(fp32, ort_run(model, path, puzzles), puzzles[2], fp64=fp64)
    assert {"fp64_floor", "fp64_error", "fp64_ratio"} <= set(metrics["per_step"][0])
    assert metrics["fp64_error_ratio"] <= 2.0
    assert all(c["passed"] for c in gate(metrics, DEFAULT_GATES["fp32"]) if c["name"] != "max_logit_rel")


def test_a_graph_with_a_subtly_wrong_weight_fails_the_fp64_gate(demo, tmp_path):
    model, puzzles, fp32, fp64, path = demo
    proto = onnx.load(str(path))
    weight = next(t for t in proto.graph.initializer if t.name.endswith("H_level.layers.1.mlp.down_proj.weight"))
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(1.001), weight.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    metrics = compare(fp32, ort_run(model, broken, puzzles), puzzles[2], fp64=fp64)
    # a 0.1% scale error in one MLP: invisible in the solutions, 10x beyond fp32 rounding in the logits
    assert metrics["exact_agreement"] == 1.0
    assert metrics["fp64_error_ratio"] > 10
    failed = [c["name"] for c in gate(metrics, DEFAULT_GATES["fp32"]) if not c["passed"]]
    assert "fp64_error_ratio" in failed


def _with_prediction(result, puzzle: int, cells: np.ndarray):
    """`result` with puzzle `puzzle`'s final prediction replaced by `cells`."""
    predictions = result.predictions.copy()
    predictions[puzzle] = cells
    return dataclasses.replace(result, predictions=predictions)


def test_a_different_wrong_answer_where_the_reference_fails_keeps_solved_agreement(demo):
    _, puzzles, fp32, _, _ = demo
    labels = puzzles[2]
    unsolved = np.flatnonzero(~(fp32.predictions == labels).all(-1))
    assert len(unsolved) >= 1  # the demo fails some validation puzzles
    wrong = fp32.predictions[unsolved[0]].copy()
    j = np.flatnonzero(wrong == labels[unsolved[0]])[0]  # a right cell made wrong: still wrong, differently
    wrong[j] = wrong[j] % 6 + 1
    metrics = compare(fp32, _with_prediction(fp32, unsolved[0], wrong), labels)
    assert metrics["exact_agreement"] == 1 - 1 / N
    assert metrics["solved_agreement"] == 1.0
    assert [c["name"] for c in gate(metrics, DEFAULT_GATES["int8"]) if not c["passed"]] == []


def test_failing_a_puzzle_the_reference_solves_costs_solved_agreement(demo):
    _, puzzles, fp32, _, _ = demo
    labels = puzzles[2]
    solved = np.flatnonzero((fp32.predictions == labels).all(-1))
    wrong = labels[solved[0]].copy()
    wrong[0] = wrong[0] % 6 + 1
    metrics = compare(fp32, _with_prediction(fp32, solved[0], wrong), labels)
    assert metrics["solved_agreement"] == metrics["exact_agreement"] == 1 - 1 / N
    failed = [c["name"] for c in gate(metrics, DEFAULT_GATES["int8"]) if not c["passed"]]
    assert failed == ["solved_agreement", "accuracy_drop"]  # 1 of 64 is 1.6 points


def test_without_labels_the_solved_gate_falls_back_to_identical_outputs(demo):
    _, puzzles, fp32, _, _ = demo
    unsolved = np.flatnonzero(~(fp32.predictions == puzzles[2]).all(-1))
    wrong = fp32.predictions[unsolved[0]].copy()
    wrong[0] = wrong[0] % 6 + 1
    metrics = compare(fp32, _with_prediction(fp32, unsolved[0], wrong), None)
    assert "solved_agreement" not in metrics
    checks = {c["name"]: c for c in gate(metrics, DEFAULT_GATES["int8"])}
    assert checks["exact_agreement"]["threshold"] == 0.99 and not checks["exact_agreement"]["passed"]


def test_verify_bounds_the_first_segment_where_parity_bounds_every_step():
    """The HRM demo's fresh fp32 export on its 16 golden puzzles: every output and halting step equal,
    the first segment 7.9e-7 from the golden logits, step 8 1.6e-5 (recurrence drift)."""
    from hrm_edge.parity import VERIFY_GATES

    metrics = {"max_logit_rel": 1.6e-5, "first_step_logit_rel": 7.9e-7, "exact_agreement": 1.0,
               "halting_agreement": 1.0}
    failed = {c["name"] for c in gate(metrics, DEFAULT_GATES["fp32"]) if not c["passed"]}
    assert failed == {"max_logit_rel"}
    assert all(c["passed"] for c in gate(metrics, VERIFY_GATES["fp32"]))
    wrong_graph = {**metrics, "first_step_logit_rel": 2e-5}
    failed = {c["name"] for c in gate(wrong_graph, VERIFY_GATES["fp32"]) if not c["passed"]}
    assert failed == {"first_step_logit_rel"}


def test_verify_gates_fp32_on_the_puzzles_solved_not_on_chaotic_wrong_answers():
    """The seeded 27M config's fresh export on its 16 golden puzzles (session 16): the first segment 2.0e-6
    from the golden logits, every halting step equal, both sides solve none of them, and identical
    outputs on 1 of 16 after 16 chaotic segments. That is a correct graph; a graph that solves one
    puzzle fewer is not."""
    from hrm_edge.parity import VERIFY_GATES

    chaotic = {"max_logit_rel": 1.5, "first_step_logit_rel": 2.0e-6, "exact_agreement": 1 / 16,
               "solved_agreement": 1.0, "halting_agreement": 1.0, "accuracy_drop": 0.0}
    assert all(c["passed"] for c in gate(chaotic, VERIFY_GATES["fp32"]))
    one_fewer = {**chaotic, "solved_agreement": 15 / 16, "accuracy_drop": 1 / 16}
    failed = {c["name"] for c in gate(one_fewer, VERIFY_GATES["fp32"]) if not c["passed"]}
    assert failed == {"solved_agreement", "accuracy_drop"}
    unlabelled = {k: v for k, v in chaotic.items() if k != "solved_agreement"}  # falls back to identical outputs
    failed = {c["name"] for c in gate(unlabelled, VERIFY_GATES["fp32"]) if not c["passed"]}
    assert failed == {"exact_agreement"}


# the agreement gates of parity's fp32 gate (these results carry no logits; with the fp64 run the CLI drops
# the fixed logit bound for the fp64 error ratio)
FP32_AGREEMENT = dataclasses.replace(DEFAULT_GATES["fp32"], max_logit_rel=None)


def _results(predictions, steps):
    """SolveResults of 6-token puzzles from one int per puzzle (its output) and halting steps."""
    preds = np.repeat(np.asarray(predictions, np.int64)[:, None], 6, axis=1)
    zeros = np.zeros(len(steps), np.float32)
    return SolveResult(preds, np.asarray(steps, np.int32), zeros, zeros)


def test_parity_holds_fp32_to_the_outputs_its_own_rounding_does_not_decide():
    """4 puzzles (final outcomes only); on puzzle 3 PyTorch fp32 and fp64 give different answers (a chaotic,
    unsolved puzzle). A graph that differs there too is as exact as PyTorch itself; one that differs on a
    stable puzzle, in output or halting step, fails."""
    fp32, fp64 = _results([1, 2, 3, 4], [2, 3, 8, 8]), _results([1, 2, 3, 5], [2, 3, 8, 8])
    chaotic = compare(fp32, _results([1, 2, 3, 6], [2, 3, 8, 8]), None, fp64=fp64)
    assert chaotic["rounding_stable_puzzles"] == 3
    assert chaotic["exact_agreement"] == 0.75 and chaotic["exact_agreement_stable"] == 1.0
    assert all(c["passed"] for c in gate(chaotic, FP32_AGREEMENT))
    wrong = compare(fp32, _results([1, 9, 3, 4], [2, 4, 8, 8]), None, fp64=fp64)
    failed = {c["name"]: c["value"] for c in gate(wrong, FP32_AGREEMENT) if not c["passed"]}
    assert failed == {"exact_agreement_stable": 2 / 3, "halting_agreement_stable": 2 / 3}


def test_a_puzzle_whose_tokens_rounding_changed_on_the_way_is_neither_stable_nor_in_the_later_fp64_ratios():
    """2 puzzles, 3 segments: PyTorch fp32 and fp64 end on the same answer for both, but on puzzle 1 fp64
    predicted other tokens at segment 2 (a chaotic trajectory that happened to land on the same output)."""
    rng = np.random.default_rng(0)
    tokens = np.ones((3, 2, 6), np.int64)
    logits = rng.normal(size=(3, 2, 6, 2)).astype(np.float32)
    zeros = np.zeros(2, np.float32)

    def run(step_tokens, step_logits):
        return SolveResult(step_tokens[-1], np.full(2, 3, np.int32), zeros, zeros, step_predictions=step_tokens,
                           step_q_halt=np.zeros((3, 2), np.float32), step_logits=step_logits)

    detour = tokens.copy()
    detour[1, 1, 0] = 2
    fp32, fp64 = run(tokens, logits), run(detour, logits + 1e-4)
    metrics = compare(fp32, run(tokens, logits + 1e-4), None, fp64=fp64)
    assert metrics["exact_agreement"] == 1.0 and metrics["rounding_stable_puzzles"] == 1
    assert [s["fp64_puzzles"] for s in metrics["per_step"]] == [2, 1, 1]


def test_without_the_fp64_run_parity_holds_fp32_to_every_output():
    fp32 = _results([1, 2, 3, 4], [2, 3, 8, 8])
    metrics = compare(fp32, _results([1, 2, 3, 6], [2, 3, 8, 8]), None)
    assert "rounding_stable_puzzles" not in metrics
    assert {c["name"] for c in gate(metrics, FP32_AGREEMENT) if not c["passed"]} == {"exact_agreement"}


def test_where_rounding_decides_every_output_only_the_arithmetic_gates_remain():
    """The seeded 27M config solves nothing and never halts: on 32 val puzzles PyTorch fp32 and fp64 first
    predicted a different token at segment 5-13 on every one (session 17)."""
    fp32, fp64 = _results([1, 2], [16, 16]), _results([3, 4], [16, 16])
    metrics = compare(fp32, _results([5, 6], [16, 16]), None, fp64=fp64)
    assert metrics["rounding_stable_puzzles"] == 0
    checks = {c["name"]: c for c in gate(metrics, FP32_AGREEMENT)}
    assert checks["exact_agreement_stable"]["value"] is None and checks["exact_agreement_stable"]["passed"]


def _changed(result, rows, labels):
    """Predictions with `rows` made wrong (a right cell changed) and their halting steps moved by one."""
    predictions, steps = result.predictions.copy(), result.steps.copy()
    for r in rows:
        j = np.flatnonzero(predictions[r] == labels[r])[0]
        predictions[r, j] = predictions[r, j] % 6 + 1
        steps[r] = steps[r] % 8 + 1
    return predictions, steps


def test_a_prefix_already_over_the_allowed_disagreements_has_failed():
    """halting >= 0.95 over 64 puzzles allows floor(3.2) = 3 puzzles to halt elsewhere: 3 in the first
    16 can still pass, a fourth cannot whatever the other 48 do."""
    from hrm_edge.act import SolveResult
    from hrm_edge.parity import failed_already

    n, total = 16, 64
    ref = SolveResult(np.ones((total, 4), np.int64), np.full(total, 2), np.zeros(total), np.zeros(total))
    gates = dataclasses.replace(DEFAULT_GATES["int8"], min_solved_agreement=None)
    steps = np.full(n, 2)
    steps[:3] = 3
    assert failed_already(ref, ref.predictions[:n], steps, None, total, gates) is None
    steps[3] = 3
    assert failed_already(ref, ref.predictions[:n], steps, None, total, gates) == "halting_agreement"


def test_a_run_stopped_at_its_first_certain_failure_fails_as_the_complete_run_does(demo):
    """On the demo's 64 puzzles with 4 solved ones broken: every prefix `failed_already` condemns
    belongs to a complete run whose gate fails, and the complete run is condemned by its last prefix."""
    from hrm_edge.parity import failed_already

    _, puzzles, fp32, _, _ = demo
    labels = puzzles[2]
    solved = np.flatnonzero((fp32.predictions == labels).all(-1))
    predictions, steps = _changed(fp32, solved[[3, 10, 20, 40]], labels)
    for gates in (DEFAULT_GATES["int8"], dataclasses.replace(DEFAULT_GATES["int8"], min_solved_agreement=0.9,
                                                             min_halting_agreement=0.9)):
        complete = gate(compare(fp32, dataclasses.replace(fp32, predictions=predictions, steps=steps), labels), gates)
        agreement_failed = any(not c["passed"] for c in complete if c["name"].endswith("_agreement"))
        first = next((n for n in range(1, N + 1)
                      if failed_already(fp32, predictions[:n], steps[:n], labels, N, gates)), None)
        assert (first is not None) == agreement_failed
    # 0.99 allows floor(0.64) = 0 disagreements: the first broken puzzle (row solved[3]) decides
    first = next(n for n in range(1, N + 1)
                 if failed_already(fp32, predictions[:n], steps[:n], labels, N, DEFAULT_GATES["int8"]))
    assert first == solved[3] + 1


def test_without_labels_an_early_failure_reads_identical_outputs(demo):
    from hrm_edge.parity import failed_already

    _, puzzles, fp32, _, _ = demo
    unsolved = np.flatnonzero(~(fp32.predictions == puzzles[2]).all(-1))
    wrong = fp32.predictions.copy()
    wrong[unsolved[0], 0] = wrong[unsolved[0], 0] % 6 + 1  # a failed puzzle failed differently
    gates = DEFAULT_GATES["int8"]
    assert failed_already(fp32, wrong, fp32.steps, puzzles[2], N, gates) is None
    assert failed_already(fp32, wrong, fp32.steps, None, N, gates) == "exact_agreement"

"""The INT8 export's sensitivity and search on the PyTorch fake-quant model agree with the ONNX
Runtime path they replace, on the trained HRM 6x6 demo (cpu flavour, 64 calibration puzzles); the
calibration rollout doubles as SmoothQuant's statistics and the closed-loop reference; the estimate
line comes before the long phases; a fake-quant choice that the ORT check rejects is grown through ORT.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from hrm_edge.act import solve_in_batches
from hrm_edge.model.runner import TorchSegmentRunner
from hrm_edge.quant import search as S
from hrm_edge.quant.calibration import ActCalibrationReader, channel_absmax
from hrm_edge.quant.quantize import swiglu_pairs
from hrm_edge.quant.torch_search import FakeQuantEvaluator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ranks(values: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(values)).astype(float)


def _spearman(a: list[float], b: list[float]) -> float:
    return float(np.corrcoef(_ranks(np.asarray(a)), _ranks(np.asarray(b)))[0, 1])


@pytest.fixture(scope="module")
def cpu(demo):
    """The cpu all-int8 graph, its quantized sites and its fake-quant evaluator."""
    pipe = demo["pipe"]
    full = onnx.load(str(demo["graphs"]["cpu"]))
    closed = pipe.closed_loop
    fq = FakeQuantEvaluator(pipe.model, full, pipe.fp32, "int8", pipe.reader.subset(pipe.sensitivity_per_step),
                            closed, "cpu")
    sites = [s for s in pipe.sites if s.kind == "weight"]
    return {"pipe": pipe, "full": full, "fq": fq, "sites": sites}


@pytest.fixture(scope="module")
def rankings(cpu):
    """Leave-one-out benefit of every site, through ONNX Runtime and on the fake-quant model."""
    pipe = cpu["pipe"]
    _, on_ort = S.leave_one_out(cpu["full"], pipe.fp32, cpu["sites"], pipe.open_loop, progress=False)
    _, on_torch = cpu["fq"].leave_one_out([s.node for s in cpu["sites"]], progress=False)
    return on_ort, on_torch


def test_fake_quant_sensitivity_ranks_the_sites_like_onnx_runtime(cpu, rankings):
    """Measured: Spearman rank correlation 0.875 over the 50 sites (the tail of small benefits is
    noise either way); the same 5 most sensitive sites, 7 of the top 8 shared."""
    on_ort, on_torch = rankings
    nodes = [s.node for s in cpu["sites"]]
    assert len(nodes) == 50
    assert _spearman([on_ort[n] for n in nodes], [on_torch[n] for n in nodes]) >= 0.8
    def top(benefit, k):
        return set(sorted(nodes, key=lambda n: -benefit[n])[:k])
    assert top(on_ort, 5) == top(on_torch, 5)
    assert len(top(on_ort, 8) & top(on_torch, 8)) >= 6


def test_fake_quant_open_loop_error_is_the_int8_graph_s(cpu):
    """The all-int8 open-loop score (mean rel. error of the carry, logits and halting margin) agrees
    with ORT's to 3% of its value (measured 0.01706 vs 0.01679: 1.6%)."""
    on_ort = cpu["pipe"].open_loop.errors(cpu["full"])["score"]
    on_torch = cpu["fq"].open_loop()["score"]
    assert on_torch == pytest.approx(on_ort, rel=0.03)


def test_fake_quant_gate_figures_match_onnx_runtime_for_the_same_exclusions(cpu, rankings):
    """The 8 most sensitive sites in float: solved, halting and token agreement with the fp32 reference
    within 3 points of ORT's on 64 puzzles (measured: solved 100% / 100%, halting 92.2% / 92.2%,
    tokens 99.87% / 99.74%)."""
    on_ort, _ = rankings
    excluded = sorted(on_ort, key=lambda n: -on_ort[n])[:8]
    pipe = cpu["pipe"]
    ort_ev = pipe.closed_loop.evaluate(S.restore_float(cpu["full"], pipe.fp32, excluded, "int8"))
    torch_ev = cpu["fq"].closed_loop(excluded)
    for key in ("solved_agreement", "halting_agreement", "token_agreement"):
        assert abs(ort_ev["metrics"][key] - torch_ev["metrics"][key]) <= 0.03, key
    assert torch_ev["engine"] == "torch" and ort_ev["passed"] == torch_ev["passed"]


def test_the_rollout_is_the_closed_loop_reference(demo):
    """The calibration rollout's per-step logits give the same fp32 reference as running the ACT loop again."""
    pipe = demo["pipe"]
    from_rollout = pipe.reader.rollout.solve_result()
    again = solve_in_batches(TorchSegmentRunner(pipe.model), pipe.tokens, pipe.puzzle_ids, pipe.policy,
                             pipe.max_steps, 64, record_steps=True, record_logits=True)
    np.testing.assert_array_equal(from_rollout.steps, again.steps)
    np.testing.assert_array_equal(from_rollout.predictions, again.predictions)
    np.testing.assert_array_equal(from_rollout.step_predictions, again.step_predictions)
    np.testing.assert_allclose(from_rollout.step_logits, again.step_logits, atol=1e-4, equal_nan=True)
    np.testing.assert_allclose(from_rollout.step_q_halt, again.step_q_halt, atol=1e-4, equal_nan=True)


def test_smoothquant_statistics_from_the_rollout_equal_the_onnx_runtime_pass(demo, tmp_path):
    pipe = demo["pipe"]
    prepared = onnx.load(str(pipe.prepared_path))
    pairs = swiglu_pairs(prepared)
    tensors = [a for p in pairs for a in p["inputs"]]
    modules = {a: p["down"].removeprefix("model.").removesuffix(".weight__T") for p in pairs for a in p["inputs"]}

    def reader():
        return ActCalibrationReader(pipe.model, pipe.tokens[:16], pipe.puzzle_ids[:16], pipe.max_steps, "q")

    on_ort = channel_absmax(pipe.prepared_path, reader(), tensors, tmp_path / "a", progress=False)
    on_torch = channel_absmax(pipe.prepared_path, reader(), tensors, tmp_path / "b", progress=False, modules=modules)
    for p in pairs:  # what SmoothQuant uses: the maximum over the block's call sites
        a = np.max([on_ort[t] for t in p["inputs"]], axis=0)
        b = np.max([on_torch[t] for t in p["inputs"]], axis=0)
        np.testing.assert_allclose(b, a, rtol=1e-4)


def test_the_estimate_line_comes_before_calibration(demo):
    logs = demo["logs"]
    first = next(i for i, line in enumerate(logs) if line.startswith("estimate: int8 export ~"))
    calibration = next(i for i, line in enumerate(logs) if line.startswith("SmoothQuant statistics"))
    assert first < calibration
    est = demo["pipe"].estimate
    # 64 puzzles x 8 segments of the rollout and as many of the tensorrt flavour's range pass, 16 GPTQ
    # samples per step, at the measured segment cost
    assert est.segment_seconds > 0
    assert est.calibration == pytest.approx(est.segment_seconds * (2 * 64 * 8 + 16 * 8))
    assert f"{1e3 * est.segment_seconds:.1f} ms per puzzle" in logs[first]


def _scripted(passes_from: int):
    def evaluate(excluded):
        ok = len(excluded) >= passes_from
        checks = [{"name": "solved", "value": 1.0 if ok else 0.9, "threshold": 0.99, "passed": ok}]
        m = {"exact_agreement": 0.9, "solved_agreement": checks[0]["value"], "halting_agreement": 1.0,
             "token_agreement": 0.99, "accuracy_drop": 0.0}
        return {"metrics": m, "gates": checks, "passed": ok, "seconds": 0.0}
    return evaluate


def test_a_choice_the_onnx_runtime_check_rejects_grows_by_the_next_ranked_sites():
    evaluate = _scripted(passes_from=5)
    result = S.continue_search(evaluate, list("abcdefgh"), ["a", "b"], max_excluded=8, max_evals=4,
                               progress=False, initial=evaluate(["a", "b"]))
    assert result.passed and result.excluded == ["a", "b", "c", "d", "e", "f"]  # +1, +2, +4
    assert [len(t.excluded) for t in result.trials] == [3, 4, 6]
    assert all(t.phase == "ort-continue" and t.engine == "ort" for t in result.trials)


def test_the_continuation_is_bounded_and_keeps_the_closest_trial():
    result = S.continue_search(_scripted(passes_from=99), list("abcdefgh"), ["a"], max_excluded=8, max_evals=2,
                               progress=False, initial=_scripted(99)(["a"]))
    assert not result.passed and len(result.trials) == 2
    assert result.excluded == ["a"]  # equally far from passing: the fewest float sites

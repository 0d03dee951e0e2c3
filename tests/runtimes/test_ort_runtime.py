"""ONNX Runtime runners against the PyTorch reference runner, in closed loop (`run_act`)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from hrm_edge.act import parse_policy, run_act
from hrm_edge.errors import HrmEdgeError
from hrm_edge.export import graphs
from hrm_edge.model.runner import TorchSegmentRunner
from hrm_edge.runtimes.ort import loader as ort_loader
from hrm_edge.runtimes.ort.loader import OnnxModelError, ProviderError, make_session
from hrm_edge.runtimes.ort.runner import OrtSegmentRunner, OrtUnrolledRunner, run_act_loop_graph, run_act_unrolled
from tests.model_helpers import q_model

MAX_STEPS = 6
POLICIES = ["fixed", "q", "threshold:0.6"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """The q-model and its graphs: two torch exports (segment, segment-with-x) + the embed graph;
    the unrolled and Loop graphs are composed from them."""
    root = tmp_path_factory.mktemp("ort")
    model = q_model(halt_max_steps=MAX_STEPS)
    carry = graphs.export_initial_carry(model)
    np.savez(root / "carry.npz", **carry)
    seg = graphs.export_segment(model, root / "segment.onnx")
    seg_x = graphs.export_segment(model, root / "segment_x.onnx", embed_inside=False)
    emb = graphs.export_embed(model, root / "embed.onnx")
    paths = {"segment": seg, "segment_x": seg_x, "embed": emb,
             "loop_x": graphs.export_act_loop(model, root / "loop_x.onnx", segment=seg_x, embed=emb)}
    for k in (2, 4):
        paths[f"unrolled{k}"] = graphs.export_unrolled(model, root / f"unrolled{k}.onnx", k, segment=seg)
    rng = np.random.default_rng(11)
    tokens = rng.integers(0, model.config.vocab_size, (8, model.config.seq_len))
    return {"model": model, "carry": carry, "root": root, "tokens": tokens,
            "puzzle_ids": np.zeros(len(tokens), np.int64), **paths}


@pytest.fixture(scope="module")
def sessions(bundle):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = make_session(bundle[name], threads=1)  # no spinning pool competing with torch's
        return cache[name]

    return get


@pytest.fixture(scope="module")
def reference(bundle):
    """run_act with the torch runner, per policy (recording steps and logits)."""
    cache = {}

    def get(policy):
        if policy not in cache:
            cache[policy] = run_act(TorchSegmentRunner(bundle["model"]), bundle["tokens"], bundle["puzzle_ids"],
                                    parse_policy(policy), MAX_STEPS, record_steps=True, record_logits=True)
        return cache[policy]

    return get


def assert_same_solve(got, want, steps_too=True):
    np.testing.assert_array_equal(got.steps, want.steps)
    np.testing.assert_array_equal(got.predictions, want.predictions)
    np.testing.assert_allclose(got.q_halt, want.q_halt, atol=1e-4)
    np.testing.assert_allclose(got.q_continue, want.q_continue, atol=1e-4)
    if steps_too and got.step_predictions is not None:
        np.testing.assert_array_equal(got.step_predictions, want.step_predictions)
        np.testing.assert_array_equal(np.isnan(got.step_q_halt), np.isnan(want.step_q_halt))
        np.testing.assert_allclose(got.step_q_halt, want.step_q_halt, atol=1e-4)


def segment_runner(bundle, sessions, **kw):
    return OrtSegmentRunner(sessions("segment"), bundle["carry"]["H_init"], bundle["carry"]["L_init"], **kw)


def test_q_model_halts_puzzles_at_different_steps(reference):
    assert len(set(reference("q").steps.tolist())) >= 3
    assert reference("fixed").steps.tolist() == [MAX_STEPS] * 8


@pytest.mark.parametrize("policy", POLICIES)
def test_segment_runner_matches_torch_runner_in_closed_loop(bundle, sessions, reference, policy):
    got = run_act(segment_runner(bundle, sessions), bundle["tokens"], bundle["puzzle_ids"], parse_policy(policy),
                  MAX_STEPS, record_steps=True, record_logits=True)
    want = reference(policy)
    assert_same_solve(got, want)
    np.testing.assert_array_equal(np.isnan(got.step_logits), np.isnan(want.step_logits))
    np.testing.assert_allclose(got.step_logits, want.step_logits, atol=1e-4)


@pytest.mark.parametrize("policy", ["fixed", "q"])
def test_segment_runner_with_io_binding_matches(bundle, sessions, reference, policy):
    runner = segment_runner(bundle, sessions, io_binding=True)  # the GPU code path, on the CPU device
    assert runner.io_binding
    got = run_act(runner, bundle["tokens"], bundle["puzzle_ids"], parse_policy(policy), MAX_STEPS,
                  record_steps=True)
    assert_same_solve(got, reference(policy))


def assert_identical(got, want):
    for field in ("predictions", "steps", "q_halt", "q_continue", "step_predictions", "step_q_halt", "step_logits"):
        a, b = getattr(got, field), getattr(want, field)
        assert (a is None) == (b is None), field
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg=field)  # NaN == NaN here: same halting too


def test_cpu_runner_keeps_the_carry_in_ping_pong_buffers_by_default(bundle, sessions):
    assert segment_runner(bundle, sessions).carry_mode == "pingpong"
    assert segment_runner(bundle, sessions, io_binding=False).carry_mode == "host"
    assert segment_runner(bundle, sessions, io_binding=True).carry_mode == "device"


@pytest.mark.parametrize("graph", ["segment", "segment_x"])
@pytest.mark.parametrize("policy", POLICIES)
def test_ping_pong_runner_is_bit_identical_to_session_run(bundle, sessions, graph, policy):
    """Every step's logits and q values, and the batch shrinking as puzzles halt (q, threshold)."""
    carry, embed = bundle["carry"], (sessions("embed") if graph == "segment_x" else None)
    results = [run_act(OrtSegmentRunner(sessions(graph), carry["H_init"], carry["L_init"], embed_session=embed,
                                        io_binding=io), bundle["tokens"], bundle["puzzle_ids"], parse_policy(policy),
                       MAX_STEPS, record_steps=True, record_logits=True)
               for io in (None, False)]
    assert_identical(*results)


def test_ping_pong_step_returns_q_values_the_next_segment_does_not_overwrite(bundle, sessions):
    runner = segment_runner(bundle, sessions)
    runner.start(bundle["tokens"], bundle["puzzle_ids"])
    q_halt, q_continue = runner.step()
    first = (q_halt.copy(), q_continue.copy(), runner.logits(np.arange(8)))
    runner.step()
    np.testing.assert_array_equal(q_halt, first[0])
    np.testing.assert_array_equal(q_continue, first[1])
    assert not np.array_equal(runner.logits(np.arange(8)), first[2])  # the buffer holds the new segment


@pytest.mark.parametrize("policy", ["fixed", "q"])
def test_ping_pong_unrolled_runner_is_bit_identical_to_session_run(bundle, sessions, policy):
    carry = bundle["carry"]
    results = []
    for io in (None, False):
        runner = OrtUnrolledRunner(sessions("unrolled2"), carry["H_init"], carry["L_init"], io_binding=io)
        results.append(run_act_unrolled(runner, bundle["tokens"], bundle["puzzle_ids"], parse_policy(policy),
                                        MAX_STEPS - 1, record_steps=True))
    assert results[0].step_q_halt.shape == (MAX_STEPS - 1, 8)
    assert_identical(*results)


@pytest.mark.parametrize("policy", ["fixed", "q"])
def test_segment_graph_taking_x_with_embed_session_matches(bundle, sessions, reference, policy):
    runner = OrtSegmentRunner(sessions("segment_x"), bundle["carry"]["H_init"], bundle["carry"]["L_init"],
                              embed_session=sessions("embed"))
    got = run_act(runner, bundle["tokens"], bundle["puzzle_ids"], parse_policy(policy), MAX_STEPS,
                  record_steps=True)
    assert_same_solve(got, reference(policy))


def test_the_embed_session_runs_on_one_thread_that_does_not_spin(bundle):
    """Its idle threads must not spin into the segment call that follows: with the segment session's
    threads and ORT's spinning, the fused fp32 segment of the TRM sudoku6 demo took a median 74.6 ms inside
    `solve` against 52 ms alone (2 cores, batch 16)."""
    options = ort_loader.make_embed_session(bundle["embed"]).get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("policy", POLICIES)
def test_unrolled_runner_reports_the_segment_runners_steps(bundle, sessions, reference, k, policy):
    runner = OrtUnrolledRunner(sessions(f"unrolled{k}"), bundle["carry"]["H_init"], bundle["carry"]["L_init"])
    assert runner.k == k
    got = run_act_unrolled(runner, bundle["tokens"], bundle["puzzle_ids"], parse_policy(policy), MAX_STEPS,
                           record_steps=True)
    assert_same_solve(got, reference(policy))


@pytest.mark.parametrize("k", [2, 4])
def test_unrolled_runner_with_io_binding_and_a_cap_inside_a_chunk(bundle, sessions, k):
    # max_steps = 3 ends inside the first (k=4) or second (k=2) chunk
    want = run_act(segment_runner(bundle, sessions), bundle["tokens"], bundle["puzzle_ids"], parse_policy("q"), 3)
    runner = OrtUnrolledRunner(sessions(f"unrolled{k}"), bundle["carry"]["H_init"], bundle["carry"]["L_init"],
                               io_binding=True)
    got = run_act_unrolled(runner, bundle["tokens"], bundle["puzzle_ids"], parse_policy("q"), 3)
    assert got.steps.max() == 3
    assert_same_solve(got, want)


@pytest.mark.parametrize("policy", POLICIES)
def test_loop_graph_with_embedding_outside_the_loop_matches(bundle, sessions, reference, policy):
    got = run_act_loop_graph(sessions("loop_x"), bundle["tokens"], bundle["puzzle_ids"], parse_policy(policy),
                             MAX_STEPS)
    assert_same_solve(got, reference(policy), steps_too=False)


SCRIPT = r"""
import json, sys
sys.modules["torch"] = None  # any import of torch now raises ImportError
sys.modules["onnx"] = None   # nor is the onnx package needed on the device
import numpy as np
from hrm_edge.act import parse_policy, run_act
from hrm_edge.runtimes.ort.loader import make_session
from hrm_edge.runtimes.ort.runner import OrtSegmentRunner
graph, carry, data = sys.argv[1:4]
c, d = np.load(carry), np.load(data)
runner = OrtSegmentRunner(make_session(graph, threads=1), c["H_init"], c["L_init"])
res = run_act(runner, d["tokens"], d["puzzle_ids"], parse_policy("q"), int(d["max_steps"]))
print(json.dumps({"steps": res.steps.tolist(), "predictions": res.predictions.tolist()}))
"""


def test_solves_with_a_pre_exported_graph_where_torch_is_not_importable(bundle, reference):
    data = bundle["root"] / "batch.npz"
    np.savez(data, tokens=bundle["tokens"], puzzle_ids=bundle["puzzle_ids"], max_steps=MAX_STEPS)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(bundle["segment"]), str(bundle["root"] / "carry.npz"),
                           str(data)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    want = reference("q")
    assert out["steps"] == want.steps.tolist()
    assert out["predictions"] == want.predictions.tolist()


@pytest.mark.parametrize("content", [b"", b"\x08\x07garbage\xff" * 10, b"hello world\n", "truncated"])
def test_corrupt_onnx_file_is_one_line_error(bundle, tmp_path, content):
    if content == "truncated":
        content = bundle["segment"].read_bytes()[:5000]
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(OnnxModelError) as err:
        make_session(path)
    message = str(err.value)
    assert isinstance(err.value, HrmEdgeError)
    assert "\n" not in message and str(path) in message and "not a loadable ONNX model" in message


def test_missing_onnx_file_is_one_line_error(tmp_path):
    with pytest.raises(OnnxModelError, match="no such ONNX file"):
        make_session(tmp_path / "nope.onnx")


def test_session_is_tuned_for_latency(bundle):
    session = make_session(bundle["segment"])
    options = session.get_session_options()
    assert options.intra_op_num_threads == ort_loader.physical_cores()
    assert options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert make_session(bundle["segment"], threads=1).get_session_options().intra_op_num_threads == 1


def test_provider_resolution():
    available = ort.get_available_providers()
    assert ort_loader.resolve_providers(None) == ["CPUExecutionProvider"]
    auto = ort_loader.resolve_providers("auto")
    assert auto[-1] == "CPUExecutionProvider"
    assert auto[:-1] == [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
    if "CUDAExecutionProvider" not in available:
        with pytest.raises(ProviderError, match="CUDAExecutionProvider is not available"):
            ort_loader.resolve_providers("cuda")
    assert ort_loader.resolve_providers(["cpu"]) == ["CPUExecutionProvider"]


def test_runner_rejects_the_wrong_graph(bundle, sessions):
    carry = bundle["carry"]
    with pytest.raises(OnnxModelError, match="not a segment graph"):
        OrtSegmentRunner(sessions("embed"), carry["H_init"], carry["L_init"])
    with pytest.raises(OnnxModelError, match="embed_session"):
        OrtSegmentRunner(sessions("segment_x"), carry["H_init"], carry["L_init"])
    with pytest.raises(OnnxModelError, match="K-unrolled"):
        OrtUnrolledRunner(sessions("segment"), carry["H_init"], carry["L_init"])
    with pytest.raises(OnnxModelError, match="ACT-loop"):
        run_act_loop_graph(sessions("segment"), bundle["tokens"], bundle["puzzle_ids"], parse_policy("q"), 2)
    with pytest.raises(OnnxModelError, match="initial carry"):
        OrtSegmentRunner(sessions("segment"), carry["H_init"][:5], carry["L_init"][:5])

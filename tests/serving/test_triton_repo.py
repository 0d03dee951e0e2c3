"""`hrm-edge triton-repo`: the repository's config.pbtxt files parse as Triton model configurations
(tritonclient's protobuf) and name the graph contract's tensors with the bundle's dtypes and shapes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hrm_edge.contract import LOOP_INPUTS, LOOP_OUTPUTS, SEGMENT_INPUTS, SEGMENT_OUTPUTS
from hrm_edge.serving.bls import BlsSegmentRunner
from tests.cli_helpers import one_line_error
from tests.serving.demo import demo_bundle, demo_puzzles

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="the serve extra (tritonclient) is not installed")
text_format = pytest.importorskip("google.protobuf.text_format")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    bundle = demo_bundle(tmp_path_factory)
    out = tmp_path_factory.mktemp("repo") / "models"
    from hrm_edge.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["triton-repo", str(bundle), "-o", str(out), "--slots", "8"])
    assert exc.value.code == 0
    return bundle, out


def parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_segment_model_is_the_fp32_graph_on_onnxruntime_with_contract_tensors(repo):
    bundle, out = repo
    config = parse(out / "hrm_segment" / "config.pbtxt")
    assert (config.name, config.backend, config.max_batch_size) == ("hrm_segment", "onnxruntime", 8)
    assert [t.name for t in config.input] == list(SEGMENT_INPUTS)
    assert [t.name for t in config.output] == list(SEGMENT_OUTPUTS)
    fp32, i64 = model_config_pb2.TYPE_FP32, model_config_pb2.TYPE_INT64
    assert [t.data_type for t in config.input] == [i64, i64, fp32, fp32]
    assert [list(t.dims) for t in config.input] == [[36], [1], [37, 128], [37, 128]]
    assert [list(t.dims) for t in config.output] == [[37, 128], [37, 128], [36, 8], [1], [1]]
    assert list(config.input[1].reshape.shape) == [] and config.input[1].HasField("reshape")
    assert (out / "hrm_segment" / "1" / "model.onnx").read_bytes() == (bundle / "segment.fp32.onnx").read_bytes()


def test_solver_model_has_the_act_loop_graphs_interface(repo):
    _, out = repo
    config = parse(out / "hrm_solver" / "config.pbtxt")
    assert (config.name, config.backend, config.max_batch_size) == ("hrm_solver", "python", 0)
    assert [t.name for t in config.input] == list(LOOP_INPUTS)
    assert [t.name for t in config.output] == list(LOOP_OUTPUTS)
    assert [list(t.dims) for t in config.input] == [[-1, 36], [-1], [1], [1], [1]]
    assert [list(t.dims) for t in config.output] == [[-1, 36], [-1], [-1], [-1]]
    info = json.loads((out / "hrm_solver" / "1" / "solver.json").read_text())
    assert (info["seq_len"], info["total_len"], info["slots"], info["carry_dtype"]) == (36, 37, 8, "float32")
    assert "hrm_edge.serving.triton_model" in (out / "hrm_solver" / "1" / "model.py").read_text()


def test_fused_cpu_graph_is_refused_as_segment_model(repo, tmp_path, capsys):
    bundle, _ = repo
    error = one_line_error(capsys, "triton-repo", str(bundle), "-o", str(tmp_path / "r"), "--graph",
                           "segment.fp32-cpufused")
    assert "portable segment graph" in error
    assert not (tmp_path / "r").exists()


def test_bls_runner_over_the_segment_graph_solves_like_the_ort_runner(repo):
    """The solver model's runner, with ONNX Runtime in place of the BLS transport."""
    import onnxruntime as ort

    from hrm_edge.act import parse_policy, run_act
    from hrm_edge.bundle import open_bundle
    from hrm_edge.continuous import solve_continuous
    from hrm_edge.runtimes.solver import GraphSolver

    _, out = repo
    session = ort.InferenceSession(str(out / "hrm_segment" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    carry = np.load(out / "hrm_solver" / "1" / "carry_init.npz")

    def infer(feeds):
        return dict(zip(SEGMENT_OUTPUTS, session.run(list(SEGMENT_OUTPUTS), feeds), strict=True))

    pset = demo_puzzles(12)
    got = solve_continuous(BlsSegmentRunner(infer, carry["H_init"], carry["L_init"], 37), pset.inputs,
                           pset.puzzle_ids, parse_policy("q"), 8, slots=3)
    want = run_act(GraphSolver(open_bundle(repo[0]), "segment.fp32").segment_runner, pset.inputs, pset.puzzle_ids,
                   parse_policy("q"), 8)
    np.testing.assert_array_equal(got.steps, want.steps)
    np.testing.assert_array_equal(got.predictions, want.predictions)


def test_python_segment_backend_holds_the_onnx_graph_and_a_model_py(repo, tmp_path):
    from hrm_edge.serving.triton_repo import write_repository

    bundle, _ = repo
    out = write_repository(bundle, tmp_path / "models", slots=8, segment_backend="python", threads=2)
    config = parse(out / "hrm_segment" / "config.pbtxt")
    assert (config.name, config.backend, config.max_batch_size) == ("hrm_segment", "python", 8)
    assert [t.name for t in config.input] == list(SEGMENT_INPUTS)
    assert [t.name for t in config.output] == list(SEGMENT_OUTPUTS)
    assert config.parameters["threads"].string_value == "2"
    assert (out / "hrm_segment" / "1" / "model.onnx").read_bytes() == (bundle / "segment.fp32.onnx").read_bytes()
    assert "hrm_edge.serving.triton_segment" in (out / "hrm_segment" / "1" / "model.py").read_text()


def test_solver_config_carries_the_bundle_identity(repo):
    from hrm_edge.bundle import open_bundle

    bundle, out = repo
    config = parse(out / "hrm_solver" / "config.pbtxt")
    assert config.parameters["bundle_digest"].string_value == open_bundle(bundle).manifest.digest
    assert config.parameters["bundle_task"].string_value == "sudoku6"


def test_in_solver_variant_has_no_segment_model_and_a_copy_of_the_bundle(repo, tmp_path):
    from hrm_edge.bundle import open_bundle
    from hrm_edge.serving.triton_repo import write_repository

    bundle, _ = repo
    out = write_repository(bundle, tmp_path / "models", slots=8, segment_backend="in-solver", threads=1)
    assert sorted(p.name for p in out.iterdir()) == ["hrm_solver"]
    info = json.loads((out / "hrm_solver" / "1" / "solver.json").read_text())
    assert (info["segment"], info["graph"], info["runtime"], info["threads"]) == ("in-solver",
                                                                                  "segment.fp32-cpufused", "ort", 1)
    copy = open_bundle(out / "hrm_solver" / "1" / info["bundle"])  # every file's sha256 checked
    assert copy.manifest.digest == open_bundle(bundle).manifest.digest
    assert parse(out / "hrm_solver" / "config.pbtxt").parameters["bundle_digest"].string_value == copy.manifest.digest

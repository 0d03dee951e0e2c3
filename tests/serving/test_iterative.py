"""The iterative variant (`hrm-edge triton-repo --segment-backend iterative`,
`hrm_edge.serving.triton_iterative`): its configs parse as Triton model configurations, its
bookkeeping answers every puzzle as `run_act` alone does, and on the real tritonserver (the
nvidia-pytriton wheel's, loopback) concurrent clients of hrm_solver get what a local solve gives
while Triton batches hrm_iterative's segments."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from hrm_edge.contract import LOOP_INPUTS, LOOP_OUTPUTS
from tests.serving.demo import demo_bundle, demo_puzzles

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="the serve extra (tritonclient) is not installed")
text_format = pytest.importorskip("google.protobuf.text_format")

SLOTS = 4


def parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The demo bundle and its iterative repository, written by the CLI (8 request instances)."""
    from hrm_edge.cli.main import main

    bundle = demo_bundle(tmp_path_factory)
    out = tmp_path_factory.mktemp("iterative-repo") / "models"
    with pytest.raises(SystemExit) as exc:
        main(["triton-repo", str(bundle), "-o", str(out), "--segment-backend", "iterative", "--slots", str(SLOTS),
              "--threads", "1"])
    assert exc.value.code == 0
    return bundle, out


def test_hrm_iterative_is_a_per_puzzle_model_on_the_iterative_sequence_batcher(repo):
    _, out = repo
    config = parse(out / "hrm_iterative" / "config.pbtxt")
    assert (config.name, config.backend, config.max_batch_size) == ("hrm_iterative", "python", SLOTS)
    assert config.sequence_batching.iterative_sequence
    assert config.sequence_batching.oldest.max_candidate_sequences == SLOTS
    assert [t.name for t in config.input] == list(LOOP_INPUTS)
    assert [list(t.dims) for t in config.input] == [[36], [1], [1], [1], [1]]
    assert [t.HasField("reshape") and list(t.reshape.shape) == [] for t in config.input] == [False, True, True, True,
                                                                                            True]
    assert [t.name for t in config.output] == list(LOOP_OUTPUTS)
    assert [list(t.dims) for t in config.output] == [[36], [1], [1], [1]]
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    assert "hrm_edge.serving.triton_iterative import TritonPythonModel" in (
        out / "hrm_iterative" / "1" / "model.py").read_text()


def test_hrm_solver_keeps_the_shipped_interface_with_one_instance_per_request_in_flight(repo, tmp_path):
    from hrm_edge.bundle import open_bundle
    from hrm_edge.serving.triton_repo import REQUEST_THREADS, write_repository

    bundle, out = repo
    config = parse(out / "hrm_solver" / "config.pbtxt")
    shipped = parse(write_repository(bundle, tmp_path / "models", segment_backend="in-solver") / "hrm_solver"
                    / "config.pbtxt")
    assert (config.name, config.backend, config.max_batch_size) == ("hrm_solver", "python", 0)
    assert config.input == shipped.input and config.output == shipped.output
    assert config.parameters == shipped.parameters
    assert config.parameters["bundle_digest"].string_value == open_bundle(bundle).manifest.digest
    assert [g.count for g in config.instance_group] == [REQUEST_THREADS]
    assert "FrontModel as TritonPythonModel" in (out / "hrm_solver" / "1" / "model.py").read_text()
    front = json.loads((out / "hrm_solver" / "1" / "solver.json").read_text())
    assert (front["segment"], front["iterative_model"], front["seq_len"], front["vocab_size"]) == (
        "iterative", "hrm_iterative", 36, 8)


def test_hrm_iterative_runs_the_default_graph_on_a_checked_copy_of_the_bundle(repo):
    from hrm_edge.bundle import open_bundle

    bundle, out = repo
    info = json.loads((out / "hrm_iterative" / "1" / "solver.json").read_text())
    assert (info["segment"], info["graph"], info["runtime"], info["threads"], info["slots"]) == (
        "iterative", "segment.fp32-cpufused", "ort", 1, SLOTS)
    copy = open_bundle(out / "hrm_iterative" / "1" / info["bundle"])  # every file's sha256 checked
    assert copy.manifest.digest == open_bundle(bundle).manifest.digest


def _solver(bundle_dir, graph="segment.fp32"):
    from hrm_edge.bundle import open_bundle
    from hrm_edge.runtimes.solver import GraphSolver

    bundle = open_bundle(bundle_dir)
    return bundle, GraphSolver(bundle, graph, threads=1)


def _inputs(tokens, ids, i, max_steps, /, **change):
    from hrm_edge.act import halt_rule, parse_policy
    from hrm_edge.serving.protocol import request_inputs

    mode, threshold = halt_rule(parse_policy("q"))
    return {**request_inputs(tokens[i:i + 1], ids[i:i + 1], mode, threshold, max_steps), **change}


def test_the_loop_under_a_simulated_iterative_scheduler_answers_like_run_act(repo):
    """Triton's part played here: each batch holds every sequence in flight plus new ones up to the
    slots (the oldest strategy with max_candidate_sequences = slots); unanswered requests come back."""
    from hrm_edge.act import parse_policy, run_act
    from hrm_edge.serving.triton_iterative import Arrival, IterativeLoop

    bundle, solver = _solver(repo[0])
    pset = demo_puzzles(10)
    want = run_act(solver.segment_runner, pset.inputs, pset.puzzle_ids, parse_policy("q"), 8)
    loop = IterativeLoop(solver.segment_runner, SLOTS, 36, 8, bundle.model_puzzle_ids)
    waiting, live, got, batches = list(range(10)), [], {}, 0
    while waiting or live:
        live += [waiting.pop(0) for _ in range(min(SLOTS - len(live), len(waiting)))]
        outcomes = loop.step([Arrival(100 + i, lambda i=i: _inputs(pset.inputs, pset.puzzle_ids, i, 8)) for i in live])
        batches += 1
        got.update({i: o for i, o in zip(live, outcomes, strict=True) if o is not None})
        live = [i for i in live if i not in got]
    assert [got[i].steps for i in range(10)] == want.steps.tolist()
    np.testing.assert_array_equal(np.stack([got[i].prediction for i in range(10)]), want.predictions)
    assert [got[i].q_halt for i in range(10)] == want.q_halt.tolist()
    assert batches == loop.loop.segments < int(want.steps.sum())  # one segment per batch, several rows each
    assert loop.in_flight == 0


def test_a_malformed_or_cancelled_request_ends_alone_and_the_others_go_on(repo):
    from hrm_edge.serving.protocol import RequestError
    from hrm_edge.serving.triton_iterative import Arrival, IterativeLoop

    bundle, solver = _solver(repo[0])
    pset = demo_puzzles(3)

    def arrival(key, i, cancelled=False, **change):
        return Arrival(key, lambda: _inputs(pset.inputs, pset.puzzle_ids, i, 8, **change), cancelled)

    loop = IterativeLoop(solver.segment_runner, SLOTS, 36, 8, bundle.model_puzzle_ids)
    # puzzles 0 and 2 of the demo set halt after 8 and 3 segments
    first = loop.step([arrival(1, 0), arrival(2, 1, tokens=np.full((1, 36), 99, np.int64)), arrival(3, 2)])
    assert first[0] is None and first[2] is None and loop.in_flight == 2
    assert isinstance(first[1], RequestError) and "tokens must lie in 0..7" in str(first[1])
    second = loop.step([arrival(1, 0, cancelled=True), arrival(3, 2)])
    assert isinstance(second[0], RequestError) and str(second[0]) == "the request was cancelled"
    assert second[1] is None and loop.in_flight == 1
    (third,) = loop.step([arrival(3, 2)])
    assert (third.key, third.steps) == (3, 3) and loop.in_flight == 0
    assert loop.loop.in_flight == 1  # the cancelled puzzle's row runs on until it halts; nobody gets it


@pytest.fixture(scope="module")
def triton(repo):
    """`hrm-edge serve --scheduler iterative` (serve_bundle: the iterative repository in a private directory,
    4 slots, 4 request instances), for the module."""
    pytest.importorskip("pytriton", reason="the serve extra (nvidia-pytriton: its tritonserver) is not installed")
    pytest.importorskip("tritonclient.http", reason="the serve extra (tritonclient) is not installed")
    from hrm_edge.serving.tritonserver import serve_bundle

    bundle, _ = repo
    # unloading takes about a second per hrm_solver instance (a stub process each): 4 instances need more than 2 s
    server = serve_bundle(bundle, slots=SLOTS, threads=1, request_threads=4, exit_timeout_s=20,
                          scheduler="iterative")
    try:
        yield {"bundle": bundle, "server": server}
    finally:
        assert server.stop() == 0
        assert not server.repository.exists()


def _executions(server) -> dict[str, int]:
    import tritonclient.http as http

    client = http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    stats = client.get_inference_statistics("hrm_iterative")["model_stats"][0]
    client.close()
    return {"executions": int(stats["execution_count"]), "rows": int(stats["inference_count"])}


def test_concurrent_clients_get_what_a_local_solve_gives_and_triton_batches_the_segments(triton):
    from hrm_edge.act import parse_policy
    from hrm_edge.serving.client import RemoteSolver

    _, solver = _solver(triton["bundle"], "segment.fp32-cpufused")  # the graph hrm_iterative runs
    pset = demo_puzzles(24)
    want = solver.solve(pset.inputs, pset.puzzle_ids, parse_policy("q"), 8)
    before = _executions(triton["server"])
    parts: dict[int, object] = {}

    def client(c: int) -> None:  # 4 clients x 6 puzzles, 2 puzzles per request
        remote = RemoteSolver(triton["server"].http_url)
        rows = slice(6 * c, 6 * c + 6)
        parts[c] = remote.solve(pset.inputs[rows], pset.puzzle_ids[rows], parse_policy("q"), 8, batch_size=2)
        remote.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    got_steps = np.concatenate([parts[c].steps for c in range(4)])
    np.testing.assert_array_equal(got_steps, want.steps)
    np.testing.assert_array_equal(np.concatenate([parts[c].predictions for c in range(4)]), want.predictions)
    np.testing.assert_array_equal(np.concatenate([parts[c].q_halt for c in range(4)]), want.q_halt)
    assert sorted(set(want.steps.tolist())) != [8]  # the set mixes early halts and the cap
    after = _executions(triton["server"])
    rows, executions = after["rows"] - before["rows"], after["executions"] - before["executions"]
    # Triton counts the requests of each batch: at most one per puzzle-segment (a puzzle whose request
    # missed a batch still advanced with the others), and several per execution
    assert executions < rows <= int(want.steps.sum())


def test_a_malformed_request_gets_one_error_and_serving_goes_on(triton):
    from hrm_edge.act import parse_policy
    from hrm_edge.serving.client import RemoteSolver, ServerError

    pset = demo_puzzles(2)
    remote = RemoteSolver(triton["server"].grpc_url)
    with pytest.raises(ServerError) as exc:
        remote.infer(_inputs(pset.inputs, pset.puzzle_ids, 0, 8, tokens=np.full((1, 36), 99, np.int64)))
    assert "tokens must lie in 0..7" in str(exc.value) and len(str(exc.value).splitlines()) == 1
    assert remote.solve(pset.inputs, pset.puzzle_ids, parse_policy("q"), 8).steps.shape == (2,)
    remote.close()
    assert triton["server"].is_alive()


def test_hrm_iterative_answers_a_client_calling_it_directly(triton):
    from hrm_edge.act import parse_policy
    from hrm_edge.serving.client import RemoteSolver

    _, solver = _solver(triton["bundle"], "segment.fp32-cpufused")
    pset = demo_puzzles(1)
    want = solver.solve(pset.inputs, pset.puzzle_ids, parse_policy("q"), 8)
    remote = RemoteSolver(triton["server"].http_url, model="hrm_iterative")
    feeds = {n: a if n == "tokens" else a.reshape(1, 1) for n, a in _inputs(pset.inputs, pset.puzzle_ids, 0, 8).items()}
    out = remote.infer(feeds)
    remote.close()
    assert {n: a.shape for n, a in out.items()} == {"preds": (1, 36), "steps": (1, 1), "q_halt": (1, 1),
                                                    "q_continue": (1, 1)}
    assert int(out["steps"][0, 0]) == int(want.steps[0])
    np.testing.assert_array_equal(out["preds"][0], want.predictions[0])

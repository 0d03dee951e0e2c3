"""The Triton repository on a real Triton Inference Server: the `tritonserver` binary of the
nvidia-pytriton wheel on loopback (ephemeral ports), serving `hrm-edge triton-repo --segment-backend
python` of the HRM 6x6 demo bundle: the solver model runs the continuous ACT loop and sends every
segment by BLS to the segment model (ONNX Runtime in its Python-backend stub). One server for the
module, always stopped."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.cli_helpers import one_line_error, run_cli
from tests.serving.demo import DEMO, demo_bundle, demo_puzzles

pytest.importorskip("pytriton", reason="the serve extra (nvidia-pytriton, which ships tritonserver) is not installed")
pytest.importorskip("tritonclient.http", reason="the serve extra (tritonclient) is not installed")

GRAPH = "segment.fp32"  # the portable segment graph the repository's segment model holds


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    """{"bundle", "http", "grpc", "server"}: tritonserver on the repository, started once for the module."""
    from hrm_edge.serving.triton_repo import write_repository
    from hrm_edge.serving.tritonserver import TritonServer

    bundle = demo_bundle(tmp_path_factory)
    repo = write_repository(bundle, tmp_path_factory.mktemp("triton") / "models", slots=4, segment_backend="python",
                            threads=1)
    server = TritonServer(repo, exit_timeout_s=2).start()
    try:
        yield {"bundle": bundle, "http": server.http_url, "grpc": server.grpc_url, "server": server}
    finally:
        server.stop()


def records(out: str) -> list[dict]:
    return [r for r in (json.loads(line) for line in out.splitlines() if line.startswith("{")) if "summary" not in r]


def test_served_answers_equal_a_local_solve_of_the_same_graph(triton):
    from hrm_edge.act import parse_policy
    from hrm_edge.bundle import open_bundle
    from hrm_edge.runtimes.solver import GraphSolver
    from hrm_edge.serving.client import RemoteSolver

    pset = demo_puzzles(12)
    want = GraphSolver(open_bundle(triton["bundle"]), GRAPH, threads=1).solve(pset.inputs, pset.puzzle_ids,
                                                                             parse_policy("q"), 8)
    remote = RemoteSolver(triton["http"])
    got = remote.solve(pset.inputs, pset.puzzle_ids, parse_policy("q"), 8, batch_size=5)
    remote.close()
    np.testing.assert_array_equal(got.steps, want.steps)
    np.testing.assert_array_equal(got.predictions, want.predictions)
    np.testing.assert_array_equal(got.q_halt, want.q_halt)
    assert sorted(set(want.steps.tolist())) != [8]  # the set mixes early halts and the cap


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_solve_with_server_prints_what_local_solve_prints(triton, capsys, scheme):
    args = ["solve", str(triton["bundle"]), "--file", str(DEMO / "demo.txt"), "--json", "--batch-size", "3"]
    code, local, _ = run_cli(capsys, *args, "--graph", GRAPH)
    assert code == 0
    code, remote, err = run_cli(capsys, *args, "--server", triton[scheme])
    assert code == 0, err
    assert records(remote) == records(local) and len(records(local)) == 8
    assert "note:" not in err  # the repository says which bundle it serves


def test_parity_against_tritonserver_passes_the_closed_loop_gates(triton, capsys, tmp_path):
    code, stdout, err = run_cli(capsys, "parity", str(triton["bundle"]), "--server", triton["grpc"], "--limit", "8",
                                "--out", str(tmp_path / "parity"))
    assert code == 0, err
    assert "PASS server: 8 puzzles" in stdout
    metrics = json.loads((tmp_path / "parity" / "parity.json").read_text())["graphs"]["server"]["metrics"]
    assert metrics["exact_agreement"] == 1.0 and metrics["halting_agreement"] == 1.0


def test_the_solver_config_carries_the_bundle_digest(triton):
    from hrm_edge.bundle import open_bundle
    from hrm_edge.serving.client import RemoteSolver

    for scheme in ("http", "grpc"):
        remote = RemoteSolver(triton[scheme])
        assert remote.served_digest() == open_bundle(triton["bundle"]).manifest.digest
        remote.close()


@pytest.mark.parametrize("command", ["solve", "parity"])
def test_a_client_of_another_bundle_is_refused_in_one_line(triton, capsys, tmp_path, command):
    """Another bundle of the same task and sequence length: its manifest differs (so does its digest)."""
    other = tmp_path / "other-bundle"
    shutil.copytree(triton["bundle"], other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["created"] = "2000-01-01T00:00:00Z"
    (other / "manifest.json").write_text(json.dumps(manifest))
    args = ["--puzzle", "." * 36] if command == "solve" else ["--out", str(tmp_path / "p")]
    line = one_line_error(capsys, command, str(other), *args, "--server", triton["http"])
    assert line.startswith(f"error: {triton['http']} serves bundle sha256:")
    assert line.endswith(f"{other} is sha256:{_digest(other)[7:]}: the server serves another bundle")


def test_a_malformed_request_gets_one_error_and_tritonserver_keeps_serving(triton):
    from hrm_edge.act import parse_policy
    from hrm_edge.serving.client import RemoteSolver, ServerError
    from hrm_edge.serving.protocol import request_inputs

    pset = demo_puzzles(2)
    remote = RemoteSolver(triton["http"])
    with pytest.raises(ServerError) as exc:
        remote.infer({**request_inputs(pset.inputs[:1], pset.puzzle_ids[:1], 1, 0.0, 8),
                      "tokens": np.full((1, 36), 99, np.int64)})
    assert "tokens must lie in 0..7" in str(exc.value) and len(str(exc.value).splitlines()) == 1
    assert remote.solve(pset.inputs, pset.puzzle_ids, parse_policy("q"), 8).steps.shape == (2,)
    remote.close()
    assert triton["server"].is_alive()


def _digest(path) -> str:
    from hrm_edge.bundle import open_bundle

    return open_bundle(path).manifest.digest

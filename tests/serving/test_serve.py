"""`hrm-edge serve` for real: the bundle's in-solver repository on the wheel's tritonserver, on
loopback (ephemeral ports; the session's, from conftest) serving the HRM 6x6 demo bundle; `solve
--server` prints what a local `solve` prints; malformed requests get one error each and the server
keeps serving."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.cli_helpers import run_cli
from tests.serving.demo import DEMO, demo_bundle, demo_puzzles, free_port

pytest.importorskip("pytriton", reason="the serve extra (nvidia-pytriton) is not installed")
pytest.importorskip("tritonclient.http", reason="the serve extra (tritonclient) is not installed")


def records(out: str) -> list[dict]:
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [r for r in lines if "summary" not in r]


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_solve_with_server_prints_what_local_solve_prints(server, capsys, scheme):
    args = ["solve", str(server["bundle"]), "--file", str(DEMO / "demo.txt"), "--json", "--batch-size", "3"]
    code, local, _ = run_cli(capsys, *args)
    assert code == 0
    code, remote, err = run_cli(capsys, *args, "--server", server[scheme])
    assert code == 0, err
    assert records(remote) == records(local)
    assert len(records(local)) == 8


def test_concurrent_requests_get_their_own_answers(server):
    from concurrent.futures import ThreadPoolExecutor

    from hrm_edge.act import parse_policy
    from hrm_edge.bundle import open_bundle
    from hrm_edge.runtimes.solver import GraphSolver
    from hrm_edge.serving.client import RemoteSolver

    pset = demo_puzzles(24)
    want = GraphSolver(open_bundle(server["bundle"]), server["graph"]).solve(pset.inputs, pset.puzzle_ids,
                                                                             parse_policy("q"), 8)

    def one(i):
        return RemoteSolver(server["http"]).solve(pset.inputs[i:i + 1], pset.puzzle_ids[i:i + 1],
                                                  parse_policy("q"), 8)

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(24)))
    np.testing.assert_array_equal(np.concatenate([r.predictions for r in results]), want.predictions)
    np.testing.assert_array_equal(np.concatenate([r.steps for r in results]), want.steps)


@pytest.mark.parametrize("bad", [
    {"tokens": np.zeros((1, 35), np.int64)},  # wrong sequence length
    {"tokens": np.full((1, 36), 99, np.int64)},  # tokens beyond the vocabulary
    {"halt_mode": np.array([5], np.int64)},
    {"max_steps": np.array([0], np.int64)},
    {"puzzle_ids": np.zeros(2, np.int64)},  # 1 puzzle, 2 ids
])
def test_a_malformed_request_gets_one_error_and_the_server_keeps_serving(server, bad):
    from hrm_edge.act import parse_policy
    from hrm_edge.serving.client import RemoteSolver, ServerError
    from hrm_edge.serving.protocol import request_inputs

    pset = demo_puzzles(2)
    client = RemoteSolver(server["http"])
    inputs = {**request_inputs(pset.inputs[:1], pset.puzzle_ids[:1], 1, 0.0, 8), **bad}
    with pytest.raises(ServerError) as exc:
        client.infer(inputs)
    assert len(str(exc.value).splitlines()) == 1
    assert client.solve(pset.inputs, pset.puzzle_ids, parse_policy("q"), 8).steps.shape == (2,)


def test_unreachable_server_is_one_line_error(tmp_path_factory, capsys):
    from tests.cli_helpers import one_line_error

    bundle = demo_bundle(tmp_path_factory)
    error = one_line_error(capsys, "solve", str(bundle), "--puzzle", "." * 36, "--server",
                           f"http://127.0.0.1:{free_port()}")
    assert "cannot reach" in error


def test_solve_with_server_checks_the_served_bundle_without_a_note(server, capsys):
    code, _, err = run_cli(capsys, "solve", str(server["bundle"]), "--puzzle", "." * 36, "--server", server["http"])
    assert code == 0, err
    assert not [line for line in err.splitlines() if line.startswith("note:")]


def test_a_server_that_does_not_say_its_bundle_gets_a_note_line(tmp_path_factory, capsys):
    """A repository whose solver config carries no identity (hand-written, or an older hrm-edge): the
    client checks the sequence length only and says so."""
    import re

    from hrm_edge.serving.protocol import SOLVER_MODEL
    from hrm_edge.serving.triton_repo import write_repository
    from hrm_edge.serving.tritonserver import TritonServer

    bundle = demo_bundle(tmp_path_factory)
    repo = write_repository(bundle, tmp_path_factory.mktemp("anonymous") / "models", slots=2, threads=1,
                            segment_backend="in-solver", copy_bundle=False)
    config = repo / SOLVER_MODEL / "config.pbtxt"
    config.write_text(re.sub(r"parameters \{.*?\n\}\n", "", config.read_text(), flags=re.S))
    assert "bundle_digest" not in config.read_text()
    with TritonServer(repo, exit_timeout_s=1) as triton:
        code, _, err = run_cli(capsys, "solve", str(bundle), "--puzzle", "." * 36, "--server", triton.http_url)
    assert code == 0, err
    assert (f"note: {triton.http_url} does not say which bundle it serves (no bundle_digest in hrm_solver's "
            "config); checked its sequence length only") in err.splitlines()

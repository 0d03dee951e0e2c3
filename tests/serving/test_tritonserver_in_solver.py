"""`hrm-edge triton-repo --segment-backend in-solver` on the real tritonserver of the nvidia-pytriton
wheel (loopback, ephemeral ports): the solver model runs the default graph (the fused CPU graph) itself
on its copy of the bundle, no segment model; its answers are those of a local solve."""

from __future__ import annotations

import json

import pytest

from tests.cli_helpers import run_cli
from tests.serving.demo import DEMO, demo_bundle

pytest.importorskip("pytriton", reason="the serve extra (nvidia-pytriton, which ships tritonserver) is not installed")
pytest.importorskip("tritonclient.http", reason="the serve extra (tritonclient) is not installed")


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    from hrm_edge.serving.triton_repo import write_repository
    from hrm_edge.serving.tritonserver import TritonServer

    bundle = demo_bundle(tmp_path_factory)
    repo = write_repository(bundle, tmp_path_factory.mktemp("triton") / "models", slots=4,
                            segment_backend="in-solver", threads=1)
    server = TritonServer(repo, exit_timeout_s=2).start()
    try:
        yield {"bundle": bundle, "grpc": server.grpc_url}
    finally:
        assert server.stop() == 0  # a graceful stop


def test_solve_with_server_prints_what_local_solve_of_the_default_graph_prints(triton, capsys):
    args = ["solve", str(triton["bundle"]), "--file", str(DEMO / "demo.txt"), "--json"]
    code, local, _ = run_cli(capsys, *args)
    assert code == 0
    code, remote, err = run_cli(capsys, *args, "--server", triton["grpc"])
    assert code == 0, err
    records = [[json.loads(line) for line in out.splitlines() if line.startswith("{")] for out in (local, remote)]
    assert records[0][:-1] == records[1][:-1] and len(records[0]) == 9  # 8 puzzles, then the summary

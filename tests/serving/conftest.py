"""The serving tests' one loopback server: `hrm-edge serve`'s PyTriton server (ephemeral ports) over
the HRM 6x6 demo bundle, started once per test session and stopped after it."""

from __future__ import annotations

import pytest

from tests.serving.demo import demo_bundle, free_port


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """{"bundle": the served bundle, "http"/"grpc": its URLs, "graph": the graph it serves}."""
    pytest.importorskip("pytriton", reason="the serve extra (nvidia-pytriton) is not installed")
    from hrm_edge.serving.local import local_solver
    from hrm_edge.serving.pytriton_server import start_server

    bundle = demo_bundle(tmp_path_factory)
    local = local_solver(bundle, slots=4, threads=1)
    http, grpc = free_port(), free_port()
    triton = start_server(local.service, "127.0.0.1", http, grpc, instances=4, exit_timeout_s=1)
    try:
        yield {"bundle": bundle, "http": f"http://127.0.0.1:{http}", "grpc": f"grpc://127.0.0.1:{grpc}",
               "graph": local.graph}
    finally:
        triton.stop()
        local.service.close()

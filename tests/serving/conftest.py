"""The serving tests' one loopback server: what `hrm-edge serve` starts (`serve_bundle`: the bundle's
in-solver repository on the nvidia-pytriton wheel's tritonserver, ephemeral ports) over the HRM 6x6
demo bundle, started once per test session and stopped, gracefully, after it."""

from __future__ import annotations

import pytest

from tests.serving.demo import demo_bundle


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """{"bundle": the served bundle, "http"/"grpc": its URLs, "graph": the graph it serves, "server"}."""
    pytest.importorskip("pytriton", reason="the serve extra (nvidia-pytriton: its tritonserver) is not installed")
    from hrm_edge.serving.tritonserver import serve_bundle, served_graph

    bundle = demo_bundle(tmp_path_factory)
    triton = serve_bundle(bundle, slots=4, threads=1, request_threads=4, exit_timeout_s=2)
    try:
        yield {"bundle": bundle, "http": triton.http_url, "grpc": triton.grpc_url,
               "graph": served_graph(triton)["graph"], "server": triton}
    finally:
        assert triton.stop() == 0  # a graceful stop
        assert not triton.repository.exists()  # serve's private repository is gone

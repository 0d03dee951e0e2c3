"""The load test (`hrm_edge.bench.loadtest`) at a small size: it starts `hrm-edge serve` itself, checks
every answer against a local solve, interleaves malformed requests, and always stops the server."""

from __future__ import annotations

import json

import pytest

from tests.serving.demo import demo_bundle

pytest.importorskip("pytriton", reason="the serve extra (nvidia-pytriton, which ships tritonserver) is not installed")
pytest.importorskip("tritonclient.http", reason="the serve extra (tritonclient) is not installed")


def test_a_small_load_test_loses_nothing_and_stops_its_server(tmp_path_factory, tmp_path):
    from hrm_edge.bench.loadtest import LoadConfig, run

    cfg = LoadConfig(clients=3, puzzles=5, max_seconds=60, malformed_every=2, batch1=4, slots=4, instances=3)
    report = run(str(demo_bundle(tmp_path_factory)), tmp_path, cfg)
    load, server = report["load"], report["server"]
    assert (load["sent"], load["answered"], load["lost"], load["duplicated"], load["mismatched"]) == (15, 15, 0, 0, 0)
    assert (load["malformed_sent"], load["malformed_one_error"]) == (6, 6)  # requests 2 and 4 of each client
    assert server["restarts"] == 0 and server["health_failures"] == 0 and server["health_checks"] > 0
    assert server["alive_until_stopped"] and server["stop_line"] == "stopped (SIGTERM)"
    assert server["exit_code"] == 0
    assert report["batch1"]["requests"] == 4 and report["batch1"]["serve_p50_ms"] > 0
    assert sum(load["steps_histogram"]) == 15
    assert json.loads((tmp_path / "loadtest.json").read_text())["targets"] == report["targets"]
    assert (tmp_path / "loadtest.png").stat().st_size > 1000

"""`hrm-edge parity BUNDLE --server URL`: the candidate solved by the served solver model, the PyTorch
reference here, the same JSON / JUnit / PNG as local parity, closed-loop gates only (the server returns
no per-step logits)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from tests.cli_helpers import one_line_error, run_cli
from tests.serving.demo import DEMO, free_port

pytest.importorskip("pytriton", reason="the serve extra (nvidia-pytriton) is not installed")
pytest.importorskip("tritonclient.http", reason="the serve extra (tritonclient) is not installed")

ANOTHER_MODEL = DEMO.parent / "trm-sudoku6-demo" / "model.pt"  # same task and sequence length, other weights


def test_parity_against_the_server_passes_the_fp32_closed_loop_gates(server, capsys, tmp_path):
    scheme = "grpc"  # `solve --server` covers both schemes; parity shares its client
    out = tmp_path / "parity"
    code, stdout, err = run_cli(capsys, "parity", str(server["bundle"]), "--server", server[scheme], "--limit", "12",
                                "--batch-size", "5", "--out", str(out))
    assert code == 0, err
    assert "PASS server: 12 puzzles" in stdout
    report = json.loads((out / "parity.json").read_text())
    assert report["runtime"] == f"server {server[scheme]}" and report["fp64_floor"] is False
    entry = report["graphs"]["server"]
    assert entry["candidate"] == f"server on {server[scheme]}"
    assert {g["name"] for g in entry["gates"]} == {"exact_agreement", "halting_agreement", "accuracy_drop"}
    assert entry["metrics"]["exact_agreement"] == 1.0 and entry["metrics"]["halting_agreement"] == 1.0
    assert entry["metrics"]["max_logit_rel"] is None  # no per-step logits come back from a server
    cases = ET.parse(out / "parity.xml").getroot().iter("testcase")
    assert sorted(c.get("name") for c in cases) == ["accuracy_drop", "exact_agreement", "halting_agreement"]
    assert (out / "parity-server.png").stat().st_size > 1000


def test_parity_fails_in_one_line_when_the_server_serves_another_model_than_the_reference(server, capsys,
                                                                                           tmp_path):
    line = one_line_error(capsys, "parity", str(server["bundle"]), "--server", server["http"], "--limit", "12",
                          "--checkpoint", str(ANOTHER_MODEL), "--out", str(tmp_path / "parity"))
    assert line.startswith("error: parity gate failed: server: halting_agreement ")
    metrics = json.loads((tmp_path / "parity" / "parity.json").read_text())["graphs"]["server"]["metrics"]
    assert metrics["halting_agreement"] < 0.5  # both models solve these puzzles, in other numbers of segments


def test_a_server_for_another_sequence_length_is_refused_before_solving(server):
    from hrm_edge.serving.client import RemoteSolver, ServerError

    with pytest.raises(ServerError) as exc:
        RemoteSolver(server["grpc"]).check_seq_len(81, "sudoku-9x9-bundle")
    assert str(exc.value) == (f"{server['grpc']} serves hrm_solver for 36-token puzzles; sudoku-9x9-bundle has "
                              "seq_len 81: the server serves another model")


def test_parity_server_with_a_graph_is_one_line(server, capsys, tmp_path):
    line = one_line_error(capsys, "parity", str(server["bundle"]), "--server", server["http"], "--graph",
                          "segment.fp32", "--out", str(tmp_path / "p"))
    assert line == "error: --server gates what the server serves: not with --graph or --open-loop"


def test_an_unreachable_server_fails_in_one_line_before_the_reference_runs(server, capsys, tmp_path):
    code, _, err = run_cli(capsys, "parity", str(server["bundle"]), "--server", f"http://127.0.0.1:{free_port()}",
                           "--out", str(tmp_path / "p"))
    assert code == 1 and err.startswith("error: cannot reach http://127.0.0.1:") and len(err.splitlines()) == 1

"""The fused CPU graph is a bundle graph: exported, listed, chosen by default on ONNX Runtime's CPU EP,
gated like every fp32 graph, and kept off the runtimes it cannot run on (trained sudoku6 demo)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from hrm_edge.bundle import Bundle, open_bundle
from hrm_edge.errors import BundleError
from hrm_edge.manifest import ORT_CPU, Manifest
from hrm_edge.puzzles.codecs import get_codec
from hrm_edge.runtimes.solver import GraphSolver, default_graph, runnable_graphs
from tests.cli_helpers import run_cli

DEMO = Path(__file__).resolve().parents[2] / "checkpoints" / "sudoku6-demo" / "model.pt"
FUSED = "segment.fp32-cpufused"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fused") / "demo"
    with pytest.raises(SystemExit) as exc:
        from hrm_edge.cli.main import main

        main(["export", str(DEMO), "-o", str(out), "--no-fp16", "--golden", "8"])
    assert exc.value.code == 0
    return out


def test_export_lists_the_fused_cpu_graph_and_its_embed_graph(bundle):
    b = open_bundle(bundle)
    assert list(b.graphs) == ["segment.fp32", FUSED, "embed.fp32"]
    fused = b.graphs[FUSED]
    assert (fused.kind, fused.precision, fused.only_on, fused.embed_graph) == ("segment", "fp32", "ort-cpu",
                                                                               "embed.fp32")
    assert list(fused.inputs) == ["x", "z_H", "z_L"] and fused.inputs["x"].shape == ["batch", 37, 128]
    # 2 H cycles x (2 L cycles + 1) x 2 layers = 12 attention blocks, two norms and two RoPEs each
    assert fused.fusion["fused_ops"] == {"MultiHeadAttention": 12, "RotaryEmbedding": 24,
                                         "SimplifiedLayerNormalization": 24}
    assert fused.fusion["skipped"] == [] and fused.file in b.manifest.files
    embed = b.graphs["embed.fp32"]
    assert embed.kind == "embed" and list(embed.outputs) == ["x"] and embed.only_on is None


def test_each_runtime_lists_the_graphs_it_runs_and_defaults_to_the_fastest(bundle):
    b = open_bundle(bundle)
    assert runnable_graphs(b, "ort") == ["segment.fp32", FUSED]
    assert runnable_graphs(b, "trt") == ["segment.fp32"]
    assert default_graph(b, "ort") == FUSED
    assert default_graph(b, "trt") == "segment.fp32"
    with pytest.raises(BundleError, match="runs only on ONNX Runtime's CPU execution provider"):
        GraphSolver(b, FUSED, "trt", engine="unused.engine")


def _solve_json(capsys, bundle: Path, puzzles: Path, *graph: str) -> tuple[list[dict], dict]:
    code, out, err = run_cli(capsys, "solve", str(bundle), "--file", str(puzzles), "--json", *graph)
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    return lines[:-1], lines[-1]["summary"]


def test_solve_picks_the_fused_graph_and_matches_the_segment_graph_on_the_golden_puzzles(capsys, bundle, tmp_path):
    codec = get_codec("sudoku6")
    with np.load(bundle / "reference.npz") as ref:
        inputs, predictions = ref["inputs"], ref["predictions"]
    puzzles = tmp_path / "golden.txt"
    puzzles.write_text("".join(codec.decode(t) + "\n" for t in inputs))
    fused, fused_summary = _solve_json(capsys, bundle, puzzles)
    plain, plain_summary = _solve_json(capsys, bundle, puzzles, "--graph", "segment.fp32")
    assert fused_summary["runtime"] == f"ort {FUSED}" and plain_summary["runtime"] == "ort segment.fp32"
    assert len(fused) == 8
    assert [(r["solution"], r["segments"]) for r in fused] == [(r["solution"], r["segments"]) for r in plain]
    assert [r["solution"] for r in fused] == [codec.decode(p) for p in predictions]  # the golden outputs
    assert max(abs(f["q_halt"] - p["q_halt"]) for f, p in zip(fused, plain, strict=True)) < 1e-4


def test_verify_runs_the_fused_graph_on_the_golden_puzzles(capsys, bundle):
    code, out, err = run_cli(capsys, "verify", str(bundle), "--graph", FUSED)
    assert code == 0, err
    assert f"PASS {FUSED}: 8 puzzles" in out and "identical outputs 100.0%" in out


def test_parity_gates_the_fused_graph_like_every_fp32_graph(capsys, bundle, tmp_path):
    # 128 puzzles: on fewer the fp64 floor's denominator (PyTorch fp32's own worst error) is noisy
    code, _, err = run_cli(capsys, "parity", str(bundle), "--graph", FUSED, "--limit", "128", "--out", str(tmp_path))
    assert code == 0, err
    fused = json.loads((tmp_path / "parity.json").read_text())["graphs"][FUSED]
    assert fused["metrics"]["exact_agreement"] == 1.0 and fused["metrics"]["halting_agreement"] == 1.0
    assert fused["metrics"]["fp64_error_ratio"] <= 2.0
    # the trained demo's reference: rounding decides no answer, so every puzzle is gated
    assert fused["metrics"]["rounding_stable_puzzles"] == 128
    assert [(c["name"], c["threshold"]) for c in fused["gates"]] == [
        ("fp64_error_ratio", 2.0), ("exact_agreement_stable", 1.0), ("halting_agreement_stable", 1.0),
        ("accuracy_drop", 0.0)]


def test_check_trt_skips_the_graph_tensorrt_cannot_run(capsys, bundle):
    code, out, err = run_cli(capsys, "check-trt", str(bundle))
    assert code == 0, err
    assert f"skip {FUSED}: runs only on ort-cpu, not on TensorRT" in out
    assert "segment.fp32.onnx: TensorRT 10.3: OK" in out and "embed.fp32.onnx: TensorRT 10.3: OK" in out


def _int8_bundle(tmp_path: Path, float_sites: int) -> Bundle:
    """The v1 INT8 manifest in tests/data with `float_sites` of its 50 sites kept in float."""
    data = json.loads((Path(__file__).resolve().parents[1] / "data" / "manifest-v1-int8.json").read_text())
    q = data["graphs"]["segment.int8-cpu"]["quantization"]
    assert q["sites"] == 50
    q["float_sites"] = [{"node": f"n{i}", "label": f"n{i}", "benefit": 0.0} for i in range(float_sites)]
    return Bundle(tmp_path, Manifest.from_dict(data))


@pytest.mark.parametrize(("float_sites", "chosen"), [(0, "segment.int8-cpu"), (24, "segment.int8-cpu"),
                                                     (26, "segment.fp32"), (50, "segment.fp32")])
def test_int8_graph_is_the_cpu_default_only_when_most_sites_compute_in_int8(tmp_path, float_sites, chosen):
    assert default_graph(_int8_bundle(tmp_path, float_sites), "ort") == chosen


@pytest.mark.parametrize(("float_sites", "chosen"), [(0, "segment.int8-cpufused"), (26, "segment.fp32")])
def test_the_fused_int8_graph_is_the_cpu_default_when_it_pays(tmp_path, float_sites, chosen):
    """`export --int8` also ships the cpu graph fused for ORT's CPU EP (1.6x faster per segment than the
    unfused one on the maze demo); it comes first on ORT's CPU EP and is never run elsewhere."""
    b = _int8_bundle(tmp_path, float_sites)
    plain = b.manifest.graphs["segment.int8-cpu"]
    b.manifest.graphs["segment.int8-cpufused"] = dataclasses.replace(plain, file="segment.int8-cpufused.onnx",
                                                                    only_on=ORT_CPU)
    assert default_graph(b, "ort") == chosen
    assert "segment.int8-cpufused" not in runnable_graphs(b, "openvino")
    assert "segment.int8-cpufused" not in runnable_graphs(b, "trt")


def test_verify_passes_every_graph_of_a_fresh_default_export_of_the_hrm_demo(capsys, tmp_path):
    """The default export (16 golden puzzles): the portable fp32 graph is 1.6e-5 from the golden logits
    by step 8 (recurrence drift), over an all-steps bound of 1e-5, while every output and halting step
    matches and the first segment is 7.9e-7 away; verify bounds the first segment (parity.VERIFY_GATES)."""
    code, _, err = run_cli(capsys, "export", str(DEMO), "-o", str(tmp_path / "b"), "--no-fp16")
    assert code == 0, err
    code, out, err = run_cli(capsys, "verify", str(tmp_path / "b"))
    assert code == 0, out + err
    assert out.count("PASS ") == 2 and out.count("16 puzzles") == 2 and "first segment" in out


@pytest.mark.parametrize(("float_sites", "chosen"), [(0, "segment.int8-tensorrt"), (26, "segment.fp32")])
def test_openvino_defaults_to_the_static_int8_graph_when_it_pays(tmp_path, float_sites, chosen):
    """OpenVINO accelerates the static Q/DQ graph (the tensorrt flavour), not the dynamic cpu one."""
    b = _int8_bundle(tmp_path, float_sites)
    static = b.manifest.graphs["segment.int8-cpu"]
    b.manifest.graphs["segment.int8-tensorrt"] = dataclasses.replace(static, file="segment.int8-tensorrt.onnx")
    assert default_graph(b, "openvino") == chosen
    assert default_graph(b, "ort") == ("segment.int8-cpu" if float_sites == 0 else "segment.fp32")

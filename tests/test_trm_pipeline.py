"""TRM through the HRM pipeline: the same exporter, runtimes, INT8 flavours and TensorRT check,
with no TRM-specific code outside the model (both the mlp_t and the attention variant)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from hrm_edge.act import parse_policy, run_act
from hrm_edge.export import graphs
from hrm_edge.export.onnx_utils import check_graph, graph_summary
from hrm_edge.model.checkpoint import Checkpoint
from hrm_edge.model.runner import TorchSegmentRunner
from hrm_edge.puzzles.datasets import load_puzzle_set
from hrm_edge.quant import quantize as Q
from hrm_edge.runtimes.ort import loader as ort_loader
from hrm_edge.runtimes.ort import runner as ort_runtime
from hrm_edge.runtimes.trt.check import check_trt
from tests.model_helpers import q_model

VARIANTS = {
    "mlp_t": {},
    "attention": {"mlp_t": False, "pos_encodings": "rope"},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def trm(variant: str):
    """A 6x6 TRM-tiny whose q-head halts puzzles at different steps."""
    return q_model("trm-sudoku-tiny", seed=4, seq_len=36, vocab_size=8, halt_max_steps=5, **VARIANTS[variant])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """variant -> (model, segment path, unrolled-2 path, loop path)."""
    root = tmp_path_factory.mktemp("trm")
    cache = {}

    def get(variant: str):
        if variant not in cache:
            model = trm(variant)
            seg = graphs.export_segment(model, root / f"{variant}.onnx")
            unrolled = graphs.export_unrolled(model, root / f"{variant}.unrolled2.onnx", 2, segment=seg)
            loop = graphs.export_act_loop(model, root / f"{variant}.loop.onnx", segment=seg)
            cache[variant] = (model, seg, unrolled, loop)
        return cache[variant]

    return get


def puzzles(n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    tokens = load_puzzle_set("calib_data/sudoku6", split="val").inputs[:n].astype(np.int64)
    return tokens, np.zeros(n, np.int64)


@pytest.mark.parametrize("variant", VARIANTS)
def test_segment_graph_matches_the_trm_segment(exported, variant):
    model, seg, _, _ = exported(variant)
    tokens, ids = puzzles(3)
    z_H, z_L = model.initial_carry(3)
    gen = torch.Generator().manual_seed(0)
    z_H, z_L = z_H + 0.5 * torch.randn(z_H.shape, generator=gen), z_L + 0.5 * torch.randn(z_L.shape, generator=gen)
    with torch.no_grad():
        want = model.segment(z_H, z_L, torch.from_numpy(tokens), torch.from_numpy(ids))
    got = ort_loader.make_session(seg, threads=1).run(list(graphs.SEGMENT_OUTPUTS), {
        "tokens": tokens, "puzzle_ids": ids, "z_H": z_H.numpy(), "z_L": z_L.numpy()})
    for name, g, w in zip(graphs.SEGMENT_OUTPUTS, got, want, strict=True):
        assert g.shape == tuple(w.shape), name
        assert np.abs(g - w.numpy()).max() <= 1e-4, name
    # one network, stored once: 4 bytes per parameter and buffer (RoPE tables), plus small constants
    stored = model.parameter_count() + sum(b.numel() for b in model.buffers())
    assert graph_summary(seg)["initializer_bytes"] <= 4 * stored * 1.01


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("graph", ["segment", "unrolled2", "loop"])
def test_every_graph_kind_solves_like_the_torch_reference(exported, variant, graph):
    model, seg, unrolled, loop = exported(variant)
    tokens, ids = puzzles()
    policy = parse_policy("q")
    want = run_act(TorchSegmentRunner(model), tokens, ids, policy, 5)
    assert len(set(want.steps.tolist())) >= 2  # the halting head really exits at different steps
    carry = graphs.export_initial_carry(model)
    if graph == "segment":
        runner = ort_runtime.OrtSegmentRunner(ort_loader.make_session(seg, threads=1), carry["H_init"],
                                              carry["L_init"])
        got = run_act(runner, tokens, ids, policy, 5)
    elif graph == "unrolled2":
        runner = ort_runtime.OrtUnrolledRunner(ort_loader.make_session(unrolled, threads=1), carry["H_init"],
                                               carry["L_init"])
        got = ort_runtime.run_act_unrolled(runner, tokens, ids, policy, 5)
    else:
        got = ort_runtime.run_act_loop_graph(ort_loader.make_session(loop, threads=1), tokens, ids, policy, 5)
    np.testing.assert_array_equal(got.steps, want.steps)
    np.testing.assert_array_equal(got.predictions, want.predictions)
    np.testing.assert_allclose(got.q_halt, want.q_halt, atol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_tensorrt_int8_flavour_is_symmetric_and_passes_the_trt_check(exported, variant, tmp_path):
    model, seg, _, loop = exported(variant)
    ck = Checkpoint(model, model.config, "sudoku6")
    calib = load_puzzle_set("calib_data/sudoku6", split="calib")
    pipe = Q.Int8Pipeline(seg, ck, calib, tmp_path / "work", Q.Int8Config(
        calib_size=8, smooth_alpha=None, gptq=False, cache_dir=tmp_path / "cache"), progress=False)
    q = pipe.quantize(Q.settings_for("tensorrt"))
    summary = Q.qdq_summary(q)
    assert summary["all_zero_points_zero"] is True
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    assert sum(1 for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits) >= 6
    path = tmp_path / "int8.onnx"
    onnx.save(q, str(path))
    check_graph(path)
    for graph_path in (seg, loop, path):
        errors = [f for f in check_trt(graph_path, "10.3") if f.severity == "error"]
        assert not errors, errors[:3]

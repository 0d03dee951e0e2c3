"""Fused CPU graphs (`hrm_edge.export.fuse`) against the standard-op graphs they come from."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from hrm_edge.act import parse_policy, run_act
from hrm_edge.export import graphs
from hrm_edge.export.fuse import count_fused_ops, fuse_graph, fuse_model
from hrm_edge.export.onnx_utils import GraphCheckError, check_graph
from hrm_edge.model.config import preset_config
from hrm_edge.model.hrm import HRM
from hrm_edge.runtimes.ort.loader import make_session
from hrm_edge.runtimes.ort.runner import OrtSegmentRunner, OrtUnrolledRunner, run_act_loop_graph, run_act_unrolled
from tests.model_helpers import spread_q_head

MAX_STEPS = 6
N_PUZZLES = 8


def q_model(pos: str) -> HRM:
    """A tiny model whose q-head halts puzzles at different steps (as in test_ort_runtime)."""
    torch.manual_seed(3)
    model = HRM(preset_config("sudoku-tiny", halt_max_steps=MAX_STEPS, forward_dtype="float32",
                              pos_encodings=pos)).eval()
    spread_q_head(model)
    with torch.no_grad():
        if pos == "learned":  # this seed's learned-position model would otherwise halt everything at step 1
            model.inner.q_head.weight.neg_()
    return model


@pytest.fixture(scope="module", params=["rope", "learned"])
def case(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"fuse-{request.param}")
    model = q_model(request.param)
    seg = graphs.export_segment(model, root / "segment_x.onnx", embed_inside=False)
    emb = graphs.export_embed(model, root / "embed.onnx")
    fused = root / "segment_x.cpufused.onnx"
    report = fuse_graph(seg, fused)
    rng = np.random.default_rng(11)
    tokens = rng.integers(0, model.config.vocab_size, (N_PUZZLES, model.config.seq_len))
    return {"pos": request.param, "model": model, "carry": graphs.export_initial_carry(model), "segment": seg,
            "embed": emb, "fused": fused, "report": report, "tokens": tokens,
            "puzzle_ids": np.zeros(N_PUZZLES, np.int64)}


def blocks(model: HRM) -> int:
    cfg = model.config
    return cfg.H_cycles * cfg.H_layers + cfg.H_cycles * cfg.L_cycles * cfg.L_layers


def test_fused_graph_contains_the_contrib_ops(case):
    n = blocks(case["model"])
    ops = count_fused_ops(case["fused"])
    assert ops["MultiHeadAttention"] == n
    assert ops["SimplifiedLayerNormalization"] == 2 * n  # post-norm: after attention and after the MLP
    assert ops.get("RotaryEmbedding", 0) == (2 * n if case["pos"] == "rope" else 0)
    assert case["report"].fused_ops == ops and not case["report"].skipped
    assert case["report"].nodes_after < case["report"].nodes_before / 2
    standard = onnx.load(str(case["segment"]))
    assert not any(n.op_type == "Softmax" for n in onnx.load(str(case["fused"])).graph.node)
    assert sum(n.op_type == "Softmax" for n in standard.graph.node) == n
    with pytest.raises(GraphCheckError, match=r"non-standard ops|No Op registered"):  # not a portable graph
        check_graph(case["fused"])


def test_fused_segment_matches_standard_logits(case):
    """Every segment of a standard-graph trajectory: the fused graph, given the same carry, gives the
    same logits, q values and next carry within 1e-4 (closed-loop agreement: the ACT tests below)."""
    std, fused = make_session(case["segment"], threads=1), make_session(case["fused"], threads=1)
    embed = make_session(case["embed"], threads=1)
    x = embed.run(["x"], {"tokens": case["tokens"], "puzzle_ids": case["puzzle_ids"]})[0]
    shape = x.shape
    z = {"z_H": np.ascontiguousarray(np.broadcast_to(case["carry"]["H_init"], shape)),
         "z_L": np.ascontiguousarray(np.broadcast_to(case["carry"]["L_init"], shape))}
    for _ in range(MAX_STEPS):
        a = std.run(None, {"x": x, **z})
        b = fused.run(None, {"x": x, **z})
        for u, v in zip(a, b, strict=True):
            np.testing.assert_allclose(v, u, atol=1e-4, rtol=0)
        z = {"z_H": a[0], "z_L": a[1]}


@pytest.mark.parametrize("policy", ["q", "fixed"])
def test_fused_runner_gives_the_same_act_solutions(case, policy):
    carry = case["carry"]
    embed = make_session(case["embed"], threads=1)
    want = run_act(OrtSegmentRunner(make_session(case["segment"], threads=1), carry["H_init"], carry["L_init"],
                                    embed_session=embed),
                   case["tokens"], case["puzzle_ids"], parse_policy(policy), MAX_STEPS)
    runner = OrtSegmentRunner(make_session(case["fused"], threads=1), carry["H_init"], carry["L_init"],
                              embed_session=embed)
    assert runner.carry_mode == "pingpong"  # the fast CPU path
    got = run_act(runner, case["tokens"], case["puzzle_ids"], parse_policy(policy), MAX_STEPS)
    np.testing.assert_array_equal(got.steps, want.steps)
    np.testing.assert_array_equal(got.predictions, want.predictions)
    np.testing.assert_allclose(got.q_halt, want.q_halt, atol=1e-3)  # after up to 6 chaotic segments
    if policy == "q":
        assert len(set(want.steps.tolist())) >= 2  # halting really differs between puzzles


def test_fused_unrolled_and_loop_graphs(case, tmp_path):
    """fuse_graph works on the composed K-unrolled and whole-ACT Loop graphs (Loop body included)."""
    if case["pos"] != "rope":
        pytest.skip("one position encoding is enough for the composed graphs")
    carry, policy = case["carry"], parse_policy("q")
    embed = make_session(case["embed"], threads=1)
    want = run_act(OrtSegmentRunner(make_session(case["segment"], threads=1), carry["H_init"], carry["L_init"],
                                    embed_session=embed),
                   case["tokens"], case["puzzle_ids"], policy, MAX_STEPS)
    onnx.save(graphs.compose_unrolled(case["segment"], 2), str(tmp_path / "u2.onnx"))
    report = fuse_graph(tmp_path / "u2.onnx", tmp_path / "u2.fused.onnx")
    assert report.fused_ops["MultiHeadAttention"] == 2 * blocks(case["model"])
    runner = OrtUnrolledRunner(make_session(tmp_path / "u2.fused.onnx", threads=1), carry["H_init"], carry["L_init"],
                               embed_session=embed)
    got = run_act_unrolled(runner, case["tokens"], case["puzzle_ids"], policy, MAX_STEPS)
    np.testing.assert_array_equal(got.steps, want.steps)
    np.testing.assert_array_equal(got.predictions, want.predictions)

    loop = graphs.compose_act_loop(case["segment"], carry["H_init"], carry["L_init"], embed=case["embed"])
    fused, report = fuse_model(loop)
    assert report.fused_ops["MultiHeadAttention"] == blocks(case["model"])  # inside the Loop body
    assert report.fused_ops["SimplifiedLayerNormalization"] == 2 * blocks(case["model"]) and not report.skipped
    onnx.save(fused, str(tmp_path / "loop.fused.onnx"))
    got = run_act_loop_graph(make_session(tmp_path / "loop.fused.onnx", threads=1), case["tokens"],
                             case["puzzle_ids"], policy, MAX_STEPS)
    np.testing.assert_array_equal(got.steps, want.steps)
    np.testing.assert_array_equal(got.predictions, want.predictions)


def test_fusion_before_and_after_quantization(case, tmp_path):
    """fuse -> quantize and quantize -> fuse both run and keep the contrib ops."""
    if case["pos"] != "rope":
        pytest.skip("one position encoding is enough")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    q_after = tmp_path / "fused.int8.onnx"
    quantize_dynamic(str(case["fused"]), str(q_after), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    assert count_fused_ops(q_after) == count_fused_ops(case["fused"])
    folded, _ = fuse_model(onnx.load(str(case["segment"])), rmsnorm=False, attention=False, split_projections=False)
    onnx.save(folded, str(tmp_path / "folded.onnx"))
    quantize_dynamic(str(tmp_path / "folded.onnx"), str(tmp_path / "q.onnx"), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"])
    report = fuse_graph(tmp_path / "q.onnx", tmp_path / "q.fused.onnx")
    assert report.fused_ops == count_fused_ops(case["fused"])
    carry = case["carry"]
    embed = make_session(case["embed"], threads=1)
    results = [run_act(OrtSegmentRunner(make_session(p, threads=1), carry["H_init"], carry["L_init"],
                                        embed_session=embed),
                       case["tokens"], case["puzzle_ids"], parse_policy("fixed"), 2)
               for p in (q_after, tmp_path / "q.fused.onnx")]
    assert all(r.predictions.shape == case["tokens"].shape for r in results)


@pytest.mark.parametrize("scales", ["tensor", "row"])
def test_a_quantized_projection_split_on_its_last_axis_becomes_one_integer_matmul_per_chunk(case, tmp_path, scales):
    """After dynamic quantization (per-tensor, or the cpu flavour's per-row scales) the qkv and SwiGLU
    gate|up projections are split like the float ones: no Split copy, and the same numbers to the bit."""
    if case["pos"] != "rope":
        pytest.skip("one position encoding is enough")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from hrm_edge.quant.row_scales import per_row_activations

    folded, _ = fuse_model(onnx.load(str(case["segment"])), rmsnorm=False, attention=False, split_projections=False)
    onnx.save(folded, str(tmp_path / "folded.onnx"))
    quantize_dynamic(str(tmp_path / "folded.onnx"), str(tmp_path / "q.onnx"), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"], per_channel=True)
    quantized = onnx.load(str(tmp_path / "q.onnx"))
    if scales == "row":
        assert per_row_activations(quantized) > 0
    split, report = fuse_model(quantized)
    whole, _ = fuse_model(quantized, split_projections=False)
    # per block: the qkv projection (split before the attention is fused) and gate|up
    assert report.counts["split_integer_projections"] == 2 * blocks(case["model"])
    assert count_fused_ops(split) == count_fused_ops(case["fused"])
    assert not any(n.op_type == "Split" and n.input[0] in {m.output[0] for m in split.graph.node if m.op_type == "Mul"}
                   for n in split.graph.node)
    embed = make_session(case["embed"], threads=1)
    x = embed.run(["x"], {"tokens": case["tokens"], "puzzle_ids": case["puzzle_ids"]})[0]
    z = {k: np.ascontiguousarray(np.broadcast_to(case["carry"][f"{k[-1]}_init"], x.shape)) for k in ("z_H", "z_L")}
    a = make_session(whole.SerializeToString(), threads=1).run(None, {"x": x, **z})
    b = make_session(split.SerializeToString(), threads=1).run(None, {"x": x, **z})
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(v, u)


def test_fuse_is_idempotent_and_leaves_the_input_alone(case):
    proto = onnx.load(str(case["segment"]))
    before = proto.SerializeToString()
    once, _ = fuse_model(proto)
    assert proto.SerializeToString() == before
    twice, report = fuse_model(once)
    assert report.counts.get("multi_head_attention", 0) == 0 and report.counts.get("rmsnorm", 0) == 0
    assert count_fused_ops(twice) == count_fused_ops(once)


def test_skip_rmsnorm_variant(case):
    """skip=True folds the residual Add into SkipSimplifiedLayerNormalization, same numbers."""
    if case["pos"] != "rope":
        pytest.skip("one position encoding is enough")
    fused, report = fuse_model(onnx.load(str(case["segment"])), skip=True)
    n = blocks(case["model"])
    assert report.fused_ops["SkipSimplifiedLayerNormalization"] == 2 * n
    assert "SimplifiedLayerNormalization" not in report.fused_ops
    embed = make_session(case["embed"], threads=1)
    x = embed.run(["x"], {"tokens": case["tokens"], "puzzle_ids": case["puzzle_ids"]})[0]
    z = {k: np.ascontiguousarray(np.broadcast_to(case["carry"][f"{k[-1]}_init"], x.shape)) for k in ("z_H", "z_L")}
    a = make_session(case["fused"], threads=1).run(None, {"x": x, **z})
    b = make_session(fused.SerializeToString(), threads=1).run(None, {"x": x, **z})
    for u, v in zip(a, b, strict=True):
        np.testing.assert_allclose(v, u, atol=1e-4, rtol=0)

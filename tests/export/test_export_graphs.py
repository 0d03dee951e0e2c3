"""ONNX export: the segment, fp16, K-unrolled and ACT-loop graphs against the PyTorch reference.

Each torch export takes a few seconds (dynamo exporter), so every graph is exported once per
module into a shared temporary directory and reused by the tests that check it.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from hrm_edge import contract
from hrm_edge.act import parse_policy, run_act
from hrm_edge.export import graphs
from hrm_edge.export.onnx_utils import (
    GraphCheckError,
    check_graph,
    dedupe_initializers,
    graph_summary,
    softmax_to_fp32,
    value_types,
)
from hrm_edge.model.config import preset_config
from hrm_edge.model.hrm import HRM
from hrm_edge.model.runner import TorchSegmentRunner
from hrm_edge.runtimes.ort import loader as ort_loader
from hrm_edge.runtimes.ort import runner as ort_runtime
from tests.model_helpers import spread_q_head

FP16_ATOL = 2e-2  # documented in hrm_edge.export.graphs (fp16 vs fp32, one segment, tiny models)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def seeded(seed: int, random_puzzle_emb: bool = False, **overrides) -> HRM:
    torch.manual_seed(seed)
    model = HRM(preset_config("sudoku-tiny", forward_dtype="float32", **overrides)).eval()
    if random_puzzle_emb:  # zeros at init: make the puzzle-id lookup visible in the outputs
        model.inner.puzzle_emb.weights.normal_(0, 1)
    return model


def q_model() -> HRM:
    """A tiny model whose q-head halts puzzles at different steps."""
    return spread_q_head(seeded(3, halt_max_steps=6))


MODELS = {
    # rope, puzzle_emb_len 1, H/L cycles 2 x 2; the model of the halting tests (and the Loop graph)
    "rope": q_model,
    # learned positions, puzzle_emb_len 2, several puzzle ids; wide enough that weights dominate the file
    "learned": lambda: seeded(1, random_puzzle_emb=True, hidden_size=128, num_heads=4, puzzle_emb_ndim=256,
                              pos_encodings="learned", H_cycles=1, num_puzzle_identifiers=5),
    # fp16: one H and one L pass keep the export short
    "fp16": lambda: seeded(2, random_puzzle_emb=True, H_cycles=1, L_cycles=1),
}


OPSETS = {"rope": 18, "fp16": 19, "learned": 20}  # the supported range, 18..20


def session(path):
    return ort_loader.make_session(path, threads=1)  # no spinning pool competing with torch's


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (model, path), exported on first use. "loop" is composed from the "rope" segment
    graph (export_act_loop(segment=...)), so it costs no second torch export."""
    root = tmp_path_factory.mktemp("graphs")
    cache: dict[str, tuple[HRM, object]] = {}

    def get(name: str):
        if name not in cache:
            if name == "loop":
                model, segment = get("rope")
                path = graphs.export_act_loop(model, root / "loop.onnx", segment=segment)
            else:
                model = MODELS[name]()
                dtype = "float16" if name == "fp16" else "float32"
                path = graphs.export_segment(model, root / f"{name}.onnx", dtype=dtype, opset=OPSETS[name])
            cache[name] = (model, path)
        return cache[name]

    return get


def inputs(model: HRM, batch: int, seed: int = 0):
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len), generator=gen)
    puzzle_ids = torch.randint(0, cfg.num_puzzle_identifiers, (batch,), generator=gen)
    z_H, z_L = model.initial_carry(batch)
    # a carry away from the initial one, as after a few segments
    z_H = z_H + 0.5 * torch.randn(z_H.shape, generator=gen)
    z_L = z_L + 0.5 * torch.randn(z_L.shape, generator=gen)
    return tokens, puzzle_ids, z_H, z_L


def run_segment(session, tokens, puzzle_ids, z_H, z_L):
    return session.run(list(graphs.SEGMENT_OUTPUTS), {"tokens": tokens.numpy(), "puzzle_ids": puzzle_ids.numpy(),
                                                     "z_H": z_H.numpy(), "z_L": z_L.numpy()})


@pytest.mark.parametrize("name", ["rope", "learned"])
@pytest.mark.parametrize("batch", [1, 3])
def test_segment_graph_matches_hrm_segment(exported, name, batch):
    model, path = exported(name)
    sess = session(path)
    tokens, puzzle_ids, z_H, z_L = inputs(model, batch)
    with torch.no_grad():
        ref = model.segment(z_H, z_L, tokens, puzzle_ids)
    out = run_segment(sess, tokens, puzzle_ids, z_H, z_L)
    for name_, got, want in zip(graphs.SEGMENT_OUTPUTS, out, ref, strict=True):
        assert got.shape == tuple(want.shape), name_
        assert got.dtype == np.float32, name_
        assert np.abs(got - want.numpy()).max() <= 1e-4, name_


def test_models_cover_rope_learned_and_both_puzzle_emb_lengths(exported):
    rope, learned = exported("rope")[0].config, exported("learned")[0].config
    assert (rope.pos_encodings, rope.puzzle_emb_len) == ("rope", 1)
    assert (learned.pos_encodings, learned.puzzle_emb_len) == ("learned", 2)


@pytest.mark.parametrize("name", ["rope", "learned", "fp16", "loop"])
def test_graph_is_standard_opset_18_to_20_without_contrib_ops(exported, name):
    _, path = exported(name)
    check_graph(path)  # onnx.checker + strict shape inference + the rules below
    summary = graph_summary(path)
    assert summary["opset"] == OPSETS.get(name, 18)
    assert summary["domains"] == ["ai.onnx"]
    model = onnx.load(str(path))
    assert not model.functions
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)


@pytest.mark.parametrize("name", ["rope", "learned", "fp16"])
def test_only_the_batch_dimension_is_dynamic(exported, name):
    model, path = exported(name)
    cfg = model.config
    summary = graph_summary(path)
    shapes = {v["name"]: v["shape"] for v in summary["inputs"] + summary["outputs"]}
    P, D, S, V = cfg.total_len, cfg.hidden_size, cfg.seq_len, cfg.vocab_size
    assert shapes == {"tokens": ["batch", S], "puzzle_ids": ["batch"], "z_H": ["batch", P, D], "z_L": ["batch", P, D],
                      "z_H_out": ["batch", P, D], "z_L_out": ["batch", P, D], "logits": ["batch", S, V],
                      "q_halt": ["batch"], "q_continue": ["batch"]}
    dtypes = {v["name"]: v["dtype"] for v in summary["inputs"] + summary["outputs"]}
    assert dtypes["tokens"] == dtypes["puzzle_ids"] == "int64"
    assert {dtypes[n] for n in graphs.SEGMENT_OUTPUTS} == {"float32"}  # fp32 at the boundary, fp16 too


def expected_weight_bytes(model: HRM, param_bytes: int) -> int:
    """Parameters at `param_bytes` each, the puzzle embedding likewise, fp32 RoPE tables."""
    inner = model.inner
    n = sum(p.numel() for p in model.parameters()) * param_bytes
    if hasattr(inner, "puzzle_emb"):
        n += inner.puzzle_emb.weights.numel() * param_bytes
    if model.config.pos_encodings == "rope":
        n += 4 * (inner.rope_cos.numel() + inner.rope_sin.numel())
    return n


@pytest.mark.parametrize(("name", "param_bytes"), [("rope", 4), ("learned", 4), ("fp16", 2)])
def test_weights_are_stored_once(exported, name, param_bytes):
    model, path = exported(name)
    want = expected_weight_bytes(model, param_bytes)
    got = graph_summary(path)["initializer_bytes"]  # + a few int64 shape constants
    assert want <= got <= 1.02 * want


def test_file_is_four_bytes_per_parameter_plus_buffers(exported):
    model, path = exported("learned")  # weights dominate the graph structure at hidden 128
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())
    size = path.stat().st_size
    assert abs(size - 4 * (params + buffers)) <= 0.10 * 4 * (params + buffers)


def test_fp16_graph_matches_fp32_reference_within_tolerance(exported):
    model, path = exported("fp16")
    tokens, puzzle_ids, z_H, z_L = inputs(model, 2)
    with torch.no_grad():
        ref = model.segment(z_H, z_L, tokens, puzzle_ids)
    out = run_segment(session(path), tokens, puzzle_ids, z_H, z_L)
    for name, got, want in zip(graphs.SEGMENT_OUTPUTS, out, ref, strict=True):
        assert got.dtype == np.float32
        err = np.abs(got - want.numpy()).max()
        assert err <= FP16_ATOL, (name, err)
    assert np.abs(out[2] - ref[2].numpy()).max() > 1e-6  # it really computed in fp16


def test_fp16_graph_keeps_rmsnorm_and_softmax_in_fp32(exported):
    _, path = exported("fp16")
    model = onnx.load(str(path))
    types = value_types(model)
    softmax = [types[n.input[0]] for n in model.graph.node if n.op_type == "Softmax"]
    reduce_mean = [types[n.input[0]] for n in model.graph.node if n.op_type == "ReduceMean"]
    matmul = [types.get(n.input[0]) for n in model.graph.node if n.op_type == "MatMul"]
    assert softmax and set(softmax) == {TensorProto.FLOAT}
    assert reduce_mean and set(reduce_mean) == {TensorProto.FLOAT}  # RMSNorm statistics
    assert set(matmul) == {TensorProto.FLOAT16}


def test_fp16_segment_composes_into_unrolled_and_loop_graphs(exported, tmp_path):
    model, path = exported("fp16")
    unrolled = session(graphs.export_unrolled(model, tmp_path / "u.onnx", 2, segment=path))
    loop = session(graphs.export_act_loop(model, tmp_path / "l.onnx", segment=path))
    carry = graphs.export_initial_carry(model)
    rng = np.random.default_rng(9)
    tokens = rng.integers(0, model.config.vocab_size, (3, model.config.seq_len))
    puzzle_ids = np.array([0, 0, 0])
    policy = parse_policy("fixed")
    want = run_act(ort_runtime.OrtSegmentRunner(session(path), carry["H_init"], carry["L_init"]), tokens,
                   puzzle_ids, policy, 3)
    runner = ort_runtime.OrtUnrolledRunner(unrolled, carry["H_init"], carry["L_init"])
    for got in (ort_runtime.run_act_unrolled(runner, tokens, puzzle_ids, policy, 3),
                ort_runtime.run_act_loop_graph(loop, tokens, puzzle_ids, policy, 3)):
        np.testing.assert_array_equal(got.steps, want.steps)
        np.testing.assert_array_equal(got.predictions, want.predictions)
        np.testing.assert_array_equal(got.q_halt, want.q_halt)


def test_unrolled_graph_equals_k_calls_of_the_segment_graph(exported, tmp_path):
    model, path = exported("rope")
    k = 3
    unrolled_path = tmp_path / "unrolled.onnx"
    graphs.export_unrolled(model, unrolled_path, k, segment=path)
    check_graph(unrolled_path)
    seg, unrolled = session(path), session(unrolled_path)
    tokens, puzzle_ids, z_H, z_L = (t.numpy() for t in inputs(model, 3))
    halted = np.array([False, True, False])
    out = dict(zip(graphs.UNROLLED_OUTPUTS, unrolled.run(list(graphs.UNROLLED_OUTPUTS), {
        "tokens": tokens, "puzzle_ids": puzzle_ids, "z_H": z_H, "z_L": z_L, "halted": halted}), strict=True))
    assert out["q_halt"].shape == (k, 3) and out["preds"].shape == (k, 3, model.config.seq_len)
    h, lo = z_H, z_L
    for i in range(k):
        h, lo, logits, q_halt, q_continue = seg.run(None, {"tokens": tokens, "puzzle_ids": puzzle_ids,
                                                          "z_H": h, "z_L": lo})
        run = ~halted
        np.testing.assert_array_equal(out["q_halt"][i, run], q_halt[run])
        np.testing.assert_array_equal(out["q_continue"][i, run], q_continue[run])
        np.testing.assert_array_equal(out["preds"][i, run], logits.argmax(-1)[run])
    np.testing.assert_array_equal(out["z_H_out"][~halted], h[~halted])
    np.testing.assert_array_equal(out["logits"][~halted], logits[~halted])
    # a halted row's carry passes through unchanged
    np.testing.assert_array_equal(out["z_H_out"][1], z_H[1])
    np.testing.assert_array_equal(out["z_L_out"][1], z_L[1])
    # K copies share one set of weights
    assert graph_summary(unrolled_path)["initializer_bytes"] == graph_summary(path)["initializer_bytes"]


@pytest.mark.parametrize("policy", ["fixed", "q", "threshold:0.6"])
def test_loop_graph_matches_run_act_with_the_torch_runner(exported, policy):
    model, path = exported("loop")
    rng = np.random.default_rng(7)
    tokens = rng.integers(0, model.config.vocab_size, (8, model.config.seq_len))
    puzzle_ids = np.zeros(8, np.int64)
    max_steps = 6
    ref = run_act(TorchSegmentRunner(model), tokens, puzzle_ids, parse_policy(policy), max_steps)
    got = ort_runtime.run_act_loop_graph(session(path), tokens, puzzle_ids, parse_policy(policy), max_steps)
    np.testing.assert_array_equal(got.steps, ref.steps)
    np.testing.assert_array_equal(got.predictions, ref.predictions)
    np.testing.assert_allclose(got.q_halt, ref.q_halt, atol=1e-4)
    np.testing.assert_allclose(got.q_continue, ref.q_continue, atol=1e-4)
    if policy == "q":
        assert len(set(ref.steps.tolist())) >= 3  # the q-head really halts puzzles at different steps


def test_loop_graph_max_steps_is_an_input_and_extra_iterations_change_nothing(exported):
    model, path = exported("loop")
    loop = session(path)
    rng = np.random.default_rng(8)
    tokens = rng.integers(0, model.config.vocab_size, (4, model.config.seq_len))
    puzzle_ids = np.zeros(4, np.int64)
    # inference-time scaling: more steps than the training halt_max_steps
    ref = run_act(TorchSegmentRunner(model), tokens, puzzle_ids, parse_policy("fixed"), 9)
    got = ort_runtime.run_act_loop_graph(loop, tokens, puzzle_ids, parse_policy("fixed"), 9)
    np.testing.assert_array_equal(got.steps, [9, 9, 9, 9])
    np.testing.assert_array_equal(got.predictions, ref.predictions)
    # TensorRT's EP may run one iteration too many (onnxruntime#13894): the same graph with the
    # loop's trip count raised by one and the cap left at max_steps gives the same answer.
    proto = onnx.load(str(path))
    for node in proto.graph.node:
        if node.op_type == "Loop":
            node.input[0] = "max_steps_plus_one"
    proto.graph.initializer.append(numpy_helper.from_array(np.array(1, np.int64), "one_more"))
    proto.graph.node.insert(0, helper.make_node("Add", ["max_steps", "one_more"], ["max_steps_plus_one"]))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    extra = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    for policy in ("fixed", "q"):
        feeds = {"tokens": tokens, "puzzle_ids": puzzle_ids, "max_steps": np.array(5, np.int64),
                 "halt_mode": np.array(graphs.HALT_MODES[policy], np.int64), "threshold": np.array(0, np.float32)}
        want = loop.run(None, feeds)
        got = extra.run(None, feeds)
        for a, b in zip(want, got, strict=True):
            np.testing.assert_array_equal(a, b)


def test_loop_graph_metadata_and_runtime_halt_modes_agree(exported):
    _, path = exported("loop")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["hrm_edge.graph"] == "act_loop"
    assert meta["hrm_edge.default_max_steps"] == "6"
    assert contract.HALT_MODES == graphs.HALT_MODES


def test_initial_carry_vectors_match_the_model():
    model = seeded(0)
    carry = graphs.export_initial_carry(model)
    z_H, z_L = model.initial_carry(2)
    np.testing.assert_array_equal(np.broadcast_to(carry["H_init"], z_H.shape), z_H.numpy())
    np.testing.assert_array_equal(np.broadcast_to(carry["L_init"], z_L.shape), z_L.numpy())
    assert carry["H_init"].dtype == np.float32


def test_export_leaves_the_callers_model_untouched(exported):
    model, _ = exported("fp16")  # exported in fp16 from an fp32 model
    assert model.compute_dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_export_rejects_unsupported_opset_and_dtype(tmp_path):
    model = seeded(0)
    with pytest.raises(ValueError, match="opset"):
        graphs.export_segment(model, tmp_path / "a.onnx", opset=17)
    with pytest.raises(ValueError, match="dtype"):
        graphs.export_segment(model, tmp_path / "a.onnx", dtype="bfloat16")


# -- onnx_utils on small hand-made graphs


def tiny_graph(nodes, inits, opset=18, domain_ops=()):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=inits)
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domain_ops]
    return helper.make_model(graph, opset_imports=imports)


def test_dedupe_initializers_merges_identical_tensors_only():
    w = np.arange(4, dtype=np.float32).reshape(2, 2)
    model = tiny_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("MatMul", ["a", "w2"], ["b"]),
         helper.make_node("Add", ["b", "w3"], ["y"])],
        [numpy_helper.from_array(w, "w1"), numpy_helper.from_array(w.copy(), "w2"),
         numpy_helper.from_array(w + 1, "w3")])
    x = np.random.default_rng(0).standard_normal((2, 2)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert dedupe_initializers(model) == 1
    assert [t.name for t in model.graph.initializer] == ["w1", "w3"]
    assert list(model.graph.node[1].input) == ["a", "w1"]
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(before, after)


def test_check_graph_rejects_contrib_ops_and_out_of_range_opsets(tmp_path):
    ok = tiny_graph([helper.make_node("Relu", ["x"], ["y"])], [])
    check_graph(ok)
    with pytest.raises(GraphCheckError, match="opset 17"):
        check_graph(tiny_graph([helper.make_node("Relu", ["x"], ["y"])], [], opset=17))
    contrib = tiny_graph([helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")], [],
                         domain_ops=("com.microsoft",))
    with pytest.raises(GraphCheckError, match=r"com\.microsoft"):
        check_graph(contrib)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(GraphCheckError) as err:
        check_graph(bad)
    assert "\n" not in str(err.value)


def test_softmax_to_fp32_wraps_only_fp16_softmax():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 3])
    model = helper.make_model(helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 18)])
    assert softmax_to_fp32(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Cast", "Softmax", "Cast"]
    check_graph(model)
    xs = np.array([[1, 2, 3], [0, 0, 9]], np.float16)
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": xs})[0]
    assert got.dtype == np.float16
    e = np.exp(xs.astype(np.float32) - xs.max(-1, keepdims=True))
    np.testing.assert_allclose(got, e / e.sum(-1, keepdims=True), atol=1e-3)

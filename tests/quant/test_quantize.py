"""INT8 segment graphs: the two target flavours, graph surgery, the mixed-precision search on a model
with a deliberately sensitive site, SmoothQuant, file size, and the bundle entry point.

The test model is a small HRM whose dynamics are made stable on purpose (block weights x0.5, an
lm_head that reads the token embedding: the prediction copies the input), so that ordinary INT8 noise
flips no prediction and the closed-loop gates can be checked on a handful of puzzles. "Planting" a
sensitive site: channel 3 of the H-level layer-0 SwiGLU is scaled by 3000 in `up` and by 1/3000 in
down_proj -- the same fp32 function, but down_proj's input gets one channel 3000x larger than the rest,
which a per-tensor 8-bit activation scale cannot represent without zeroing the others.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from hrm_edge.model import create_model
from hrm_edge.model.checkpoint import Checkpoint
from hrm_edge.model.config import preset_config
from hrm_edge.parity import Gates
from hrm_edge.puzzles.datasets import load_puzzle_set
from hrm_edge.quant import quantize as Q
from hrm_edge.quant import search as S
from hrm_edge.runtimes.ort.loader import make_session
from tests.model_helpers import spread_q_head

PLANT, CHANNEL = 3000.0, 3
# Gate of the search tests: the int8 gates plus a per-step logit gate between ordinary INT8 noise
# (max |dlogit| / max |logit| ~0.015 on this model) and the planted site's (~0.06).
LOGIT_GATES = Gates(max_logit_rel=0.025, min_exact_agreement=0.99, min_halting_agreement=0.95, max_accuracy_drop=0.005)


def _config():
    return preset_config("sudoku-tiny", seq_len=36, vocab_size=8, hidden_size=128, num_heads=4, halt_max_steps=3,
                         forward_dtype="float32")


def _stable_model():
    torch.manual_seed(0)
    cfg = _config()
    m = create_model(cfg, compute_dtype="float32").eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "_level" in name:
                p.mul_(0.5)
        m.inner.lm_head.weight.copy_(m.inner.embed_tokens.embedding_weight)
    return m


def _plant(model):
    """The same function with one outlier channel at H-level layer-0 down_proj (see the module docstring)."""
    m = copy.deepcopy(model)
    mlp, inter = m.inner.H_level.layers[0].mlp, m.config.mlp_inter
    with torch.no_grad():
        mlp.gate_up_proj.weight[inter + CHANNEL] *= PLANT
        mlp.down_proj.weight[:, CHANNEL] /= PLANT
    return m


def _plant_graph(src, dst):
    g = onnx.load(str(src))
    inits = {t.name: t for t in g.graph.initializer}
    gu = inits["model.inner.H_level.layers.0.mlp.gate_up_proj.weight"]  # torch layout [2I, D]
    dn = inits["model.inner.H_level.layers.0.mlp.down_proj.weight"]  # [D, I]
    w_gu, w_dn = numpy_helper.to_array(gu).copy(), numpy_helper.to_array(dn).copy()
    w_gu[w_dn.shape[1] + CHANNEL] *= PLANT
    w_dn[:, CHANNEL] /= PLANT
    gu.CopyFrom(numpy_helper.from_array(w_gu, gu.name))
    dn.CopyFrom(numpy_helper.from_array(w_dn, dn.name))
    onnx.save(g, str(dst))
    return dst


@pytest.fixture(scope="module")
def calib():
    return load_puzzle_set("calib_data/sudoku6", split="calib")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from hrm_edge.export.graphs import export_segment

    d = tmp_path_factory.mktemp("int8")
    model = _stable_model()
    fp32 = export_segment(model, d / "segment.fp32.onnx")
    planted = _plant_graph(fp32, d / "segment.planted.onnx")
    return {"dir": d, "model": model, "fp32": fp32, "planted": planted, "planted_model": _plant(model)}


@pytest.fixture(scope="module")
def pipe(built, calib, tmp_path_factory):
    ck = Checkpoint(built["model"], built["model"].config, "sudoku6")
    return Q.Int8Pipeline(built["fp32"], ck, calib, tmp_path_factory.mktemp("work"), Q.Int8Config(
        calib_size=12, smooth_alpha=None, gptq=False, cache_dir=tmp_path_factory.mktemp("cache")), progress=False)


def _run(model, feeds):
    return make_session(model.SerializeToString()).run(None, feeds)


def _feeds(pipe):
    return pipe.reader.subset(4)[1][1]  # step-1 inputs


def _consumers(model):
    out = {}
    for n in model.graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def test_targets_and_presets():
    assert [Q.normalize_target(t) for t in ("cpu", "avx512_vnni", "arm64", "avx2", "tensorrt", "TRT")] == \
        ["cpu", "cpu", "cpu", "cpu", "tensorrt", "tensorrt"]
    with pytest.raises(ValueError, match="unknown INT8 target"):
        Q.normalize_target("fpga")
    with pytest.raises(ValueError, match="static QDQ only"):
        Q.settings_for("tensorrt", "dynamic")
    assert Q.graph_name("avx512_vnni") == "segment.int8-cpu"


def test_gptq_rounding_beats_round_to_nearest_on_correlated_inputs():
    rng = np.random.default_rng(0)
    k, n = 48, 24
    mix = rng.normal(size=(k, k)) * np.linspace(3, 0.1, k)  # anisotropic, correlated inputs
    x = rng.normal(size=(2000, k)) @ mix
    w = rng.normal(size=(k, n)).astype(np.float32)
    scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
    rtn = np.clip(np.round(w / scale), -127, 127)
    gptq = Q.gptq_int8(w, x.T @ x / len(x), scale)
    assert gptq.dtype == np.int8 and np.abs(gptq.astype(int)).max() <= 127
    err_rtn = np.linalg.norm(x @ (w - rtn * scale))
    err_gptq = np.linalg.norm(x @ (w - gptq.astype(np.float32) * scale))
    assert err_gptq < 0.6 * err_rtn


def test_prepared_graph_keeps_the_function(pipe, built):
    prepared = onnx.load(str(pipe.prepared_path))
    inits = {t.name for t in prepared.graph.initializer}
    assert not [n for n in prepared.graph.node if n.op_type == "Transpose" and n.input[0] in inits]
    assert any(name.endswith(".mlp.down_proj.weight__T") for name in inits)
    labels = [s.label for s in pipe.sites]
    assert "H1.layer0.down_proj" in labels and "lm_head" in labels and "L3.layer0.attn_av" in labels
    assert len(labels) == len(set(labels)) == 6 * 6 + 2  # 4 L + 2 H calls x 6 sites, lm_head, q_head
    feeds = _feeds(pipe)
    for a, b in zip(_run(onnx.load(str(built["fp32"])), feeds), _run(prepared, feeds), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_tensorrt_flavour_is_symmetric_int8_on_matmul_inputs_only(pipe, tmp_path):
    from hrm_edge.export.onnx_utils import check_graph
    from hrm_edge.runtimes.trt.check import check_trt

    q = pipe.quantize(Q.settings_for("tensorrt"))
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    qdq = [n for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for n in qdq:
        assert len(n.input) == 3, f"{n.name}: explicit zero point expected"
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), f"{n.name}: zero point {zp} (must be int8 0)"
    consumers = _consumers(q)
    dq_users = {u.op_type for n in qdq if n.op_type == "DequantizeLinear" for u in consumers.get(n.output[0], [])}
    assert dq_users <= {"MatMul", "Gemm"}
    producers = {o: n for n in q.graph.node for o in n.output}
    q_inputs = {producers[n.input[0]].op_type for n in qdq if n.op_type == "QuantizeLinear" and n.input[0] in producers}
    assert not q_inputs & {"MatMul", "Gemm"}, "no Q/DQ on MatMul/Gemm outputs"
    for op in ("ReduceMean", "Softmax", "Sqrt"):  # norms and softmax stay float
        assert all(c.op_type != "QuantizeLinear" for n in q.graph.node if n.op_type == op
                   for c in consumers.get(n.output[0], []))
    weights = [n for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert weights and all(inits[n.input[0]].dtype == np.int8 for n in weights)
    assert Q.qdq_summary(q)["all_zero_points_zero"] is True
    path = tmp_path / "trt.onnx"
    onnx.save(q, str(path))
    check_graph(path)
    errors = [f for f in check_trt(path, "10.3") if f.severity == "error"]
    assert not errors, errors[:3]


def test_cpu_static_flavour_is_u8_activations_s8_per_channel_weights(pipe):
    q = pipe.quantize(Q.settings_for("cpu", "static"))
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    acts = [n for n in q.graph.node if n.op_type == "QuantizeLinear"]
    assert acts and all(inits[n.input[2]].dtype == np.uint8 for n in acts)
    weight_dq = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                 and inits[n.input[0]].ndim == 2]
    assert weight_dq
    for n in weight_dq:
        w, scale = inits[n.input[0]], inits[n.input[1]]
        assert w.dtype == np.int8
        axis = next(a.i for a in n.attribute if a.name == "axis")
        assert scale.shape == (w.shape[axis],) and w.shape[axis] > 1, "per-channel weight scales"
    summary = Q.qdq_summary(q)
    assert summary["activation_dtypes"] == ["uint8"] and summary["weight_dtypes"] == ["int8"]


def test_cpu_dynamic_flavour(pipe):
    q = pipe.quantize(Q.settings_for("cpu"))
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    mmi = [n for n in q.graph.node if n.op_type == "MatMulInteger"]
    assert mmi and any(n.op_type == "DynamicQuantizeLinear" for n in q.graph.node)
    for n in mmi:
        w = inits[n.input[1]]
        assert w.dtype == np.int8 and inits[n.input[3]].shape == (w.shape[1],)  # per-channel, signed
    assert len(S.find_sites(q)) < len(pipe.sites)  # attention matmuls (no constant weight) stay float
    assert not {n.domain for n in q.graph.node} - {"", "ai.onnx"}


def test_int8_file_is_at_most_30_percent_of_fp32(pipe, built, tmp_path):
    fp32_bytes = built["fp32"].stat().st_size
    for target, mode in (("cpu", None), ("cpu", "static"), ("tensorrt", None)):
        path = tmp_path / f"{target}-{mode}.onnx"
        onnx.save(pipe.quantize(Q.settings_for(target, mode)), str(path))
        assert path.stat().st_size <= 0.30 * fp32_bytes, (target, mode, path.stat().st_size / fp32_bytes)
    # excluded sites keep their int8 weight (Cast * scale, folded at load): no size cost
    full = pipe.quantize(Q.settings_for("tensorrt"))
    weight_sites = [s.node for s in pipe.sites if s.kind == "weight"][:8]
    onnx.save(S.restore_float(full, pipe.fp32, weight_sites), str(tmp_path / "excl.onnx"))
    assert (tmp_path / "excl.onnx").stat().st_size <= 0.30 * fp32_bytes
    onnx.save(S.restore_float(full, pipe.fp32, weight_sites, weights="float"), str(tmp_path / "excl-f.onnx"))
    assert (tmp_path / "excl-f.onnx").stat().st_size > (tmp_path / "excl.onnx").stat().st_size


def test_restore_float_equals_ort_nodes_to_exclude(pipe, tmp_path):
    settings = Q.settings_for("cpu", "static")
    full = pipe.quantize(settings)
    # two calls of Linears that other (quantized) calls share: ORT keeps their weight int8 behind its
    # DequantizeLinear and feeds the excluded node the float activation -- restore_float(weights="int8")
    excluded = [s.node for s in pipe.sites if s.label in ("H1.layer0.down_proj", "L2.layer0.o_proj")]
    ours = S.restore_float(full, pipe.fp32, excluded)
    attention = [s.node for s in pipe.sites if s.kind == "bmm"]  # not quantized by default
    theirs = onnx.load(str(Q.quantize_graph(pipe.fp32_path, tmp_path / "ex.onnx", settings,
                                            pipe.calibration.ranges_path, nodes_to_exclude=excluded + attention)))
    Q.keep_float_paths(theirs)
    feeds = _feeds(pipe)
    for a, b in zip(_run(ours, feeds), _run(theirs, feeds), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-6, rtol=0)  # float rounding order only
    producers = {o: n for n in ours.graph.node for o in n.output}
    for node in ours.graph.node:  # the excluded sites read the float activation, a dequantized weight
        if node.name in excluded:
            assert producers[node.input[0]].op_type != "DequantizeLinear"
            assert producers[node.input[1]].op_type == "Mul"  # Cast(int8) * scale
    # weights="float": fully fp32 sites (float weight copies), closer to fp32 than the int8-weight variant
    fp = S.restore_float(full, pipe.fp32, excluded + [s.node for s in pipe.sites if s.label == "q_head"], "float")
    inits = {t.name for t in fp.graph.initializer}
    assert "model.inner.H_level.layers.0.mlp.down_proj.weight__T" in inits
    ref = _run(pipe.fp32, feeds)
    err = [np.abs(a - r).max() for a, r in zip(_run(fp, feeds), ref, strict=True)]
    assert all(np.isfinite(err))
    assert S.restore_float(full, pipe.fp32, []).SerializeToString() == full.SerializeToString()


def test_float_sites_of_the_tensorrt_flavour_dequantize_their_int8_weights_the_tensorrt_way(pipe, tmp_path):
    from hrm_edge.runtimes.trt.check import check_trt

    full = pipe.quantize(Q.settings_for("tensorrt"))
    excluded = [s.node for s in pipe.sites if s.label in ("H1.layer0.down_proj", "L2.layer0.o_proj")]
    cast = S.restore_float(full, pipe.fp32, excluded, "int8")
    dq = S.restore_float(full, pipe.fp32, excluded, "int8-dq")
    # the same arithmetic: int8 weight x per-channel scale, then a float MatMul
    for a, b in zip(_run(cast, _feeds(pipe)), _run(dq, _feeds(pipe)), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    producers = {o: n for n in dq.graph.node for o in n.output}
    assert {producers[n.input[1]].op_type for n in dq.graph.node if n.name in excluded} == {"DequantizeLinear"}
    paths = {}
    for name, model in (("cast", cast), ("dq", dq)):
        paths[name] = tmp_path / f"{name}.onnx"
        onnx.save(model, str(paths[name]))
    errors = {k: [f for f in check_trt(p, "10.3") if f.severity == "error"] for k, p in paths.items()}
    assert not errors["dq"], errors["dq"][:2]
    assert errors["cast"] and all("Cast" in f.message for f in errors["cast"])  # what TensorRT rejects


@pytest.mark.parametrize("engine", ["ort", "torch"])
def test_search_keeps_exactly_the_planted_sites_in_float(built, calib, tmp_path, engine):
    ck = Checkpoint(built["planted_model"], built["model"].config, "sudoku6")
    pipe = Q.Int8Pipeline(built["planted"], ck, calib, tmp_path / "w", Q.Int8Config(
        calib_size=12, smooth_alpha=None, gptq=False, cache_dir=tmp_path / "cache", gates=LOGIT_GATES,
        search_engine=engine), progress=False)
    planted = {s.node for s in pipe.sites if s.label in ("H0.layer0.down_proj", "H1.layer0.down_proj")}
    assert len(planted) == 2
    build = pipe.build("tensorrt", tmp_path / "int8.onnx", max_evals=12)
    trials = build.report["search"]["trials"]
    assert trials[0]["excluded"] == [] and not trials[0]["passed"], "all-int8 must fail the gate"
    ranked = sorted(build.report["sites"], key=lambda s: -(s["loo_benefit"] or 0))
    assert {s["node"] for s in ranked[:2]} == planted, "leave-one-out ranks the planted sites first"
    assert set(build.report["settings"]["search"] and [f["node"] for f in build.entry["quantization"]["float_sites"]]) \
        == planted
    assert build.entry["calib_parity"]["passed"]
    assert build.entry["calib_parity"]["exact_agreement"] == 1.0
    # the planted sites' output error drops from the full-int8 graph to the shipped one
    errs = {s["node"]: (s["error_full"], s["error_final"]) for s in build.report["sites"]}
    assert all(errs[n][1] < 0.5 * errs[n][0] for n in planted)
    if engine == "torch":  # chosen on the fake-quant model, confirmed once through ONNX Runtime
        assert {t["engine"] for t in trials[1:-1]} == {"torch"}
        assert trials[-1]["phase"] == "confirm" and trials[-1]["engine"] == "ort" and trials[-1]["passed"]


def test_smoothquant_absorbs_the_planted_outlier(built, calib, tmp_path):
    ck = Checkpoint(built["planted_model"], built["model"].config, "sudoku6")
    pipe = Q.Int8Pipeline(built["planted"], ck, calib, tmp_path / "w", Q.Int8Config(
        calib_size=12, smooth_alpha=0.7, gptq=False, cache_dir=tmp_path / "cache", gates=LOGIT_GATES), progress=False)
    info = pipe.prep_info["smoothquant"]["blocks"]
    h0 = info["model.inner.H_level.layers.0.mlp.down_proj.weight__T"]
    assert h0["act_absmax_before"] > 100 * h0["act_absmax_after"]
    feeds = _feeds(pipe)
    for a, b in zip(_run(onnx.load(str(built["planted"])), feeds), _run(pipe.fp32, feeds), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-4)  # the same fp32 function
    full = pipe.quantize(Q.settings_for("tensorrt"))
    ev = pipe.closed_loop.evaluate(full)
    assert ev["passed"], ev["gates"]


def test_add_int8_graphs_writes_graphs_entries_and_report(built, calib, tmp_path, monkeypatch):
    from hrm_edge.act import parse_policy
    from hrm_edge.bundle import open_bundle
    from hrm_edge.export import bundle_writer
    from hrm_edge.export.bundle_writer import GraphSpec, write_bundle
    from hrm_edge.quant import calibration as C
    from hrm_edge.runtimes.solver import GraphSolver

    # the fp32 export itself is tested elsewhere: reuse the module's graph instead of exporting again
    monkeypatch.setattr(bundle_writer, "_export_graph",
                        lambda ck, spec, path, *args, **kw: shutil.copyfile(built["fp32"], path))
    ck = Checkpoint(built["model"], built["model"].config, "sudoku6")
    golden = load_puzzle_set("calib_data/sudoku6", split="val")
    golden.inputs, golden.puzzle_ids, golden.labels = golden.inputs[:4], golden.puzzle_ids[:4], golden.labels[:4]
    cache = tmp_path / "cache"

    def extra(tmp, manifest, exported):
        Q.add_int8_graphs(tmp, manifest, exported, calib, targets=("avx512_vnni", "tensorrt"), calib_size=8,
                          cache_dir=cache, progress=False)

    runs = C.calibration_runs()
    out = write_bundle(ck, tmp_path / "bundle", [GraphSpec("segment", "fp32")], golden, log=lambda m: None,
                       extra_steps=extra)
    assert C.calibration_runs() == runs + 3  # SmoothQuant and GPTQ statistics, ranges (shared by both targets)
    b = open_bundle(out)  # every file hashed, the report included
    for target in ("cpu", "tensorrt"):
        name = f"segment.int8-{target}"
        entry = b.graphs[name]
        assert entry.kind == "segment" and entry.precision == "int8" and entry.target == target
        assert entry.file == f"{name}.onnx" and (out / entry.file).is_file()
        assert entry.calib_parity["passed"] and entry.calib_parity["data"].startswith("sudoku6 calib")
        assert entry.quantization["per_channel"] and "float_sites" in entry.quantization
        assert f"quant_report-{target}.png" in b.manifest.files
        res = GraphSolver(b, name).solve(golden.inputs, golden.puzzle_ids, parse_policy("q"), 3)
        np.testing.assert_array_equal(res.predictions, b.reference()["predictions"])
    # called as a library, no validation gate follows: the fused cpu graph gets its own calibration gate
    assert b.graphs["segment.int8-cpufused"].calib_parity["passed"]
    assert b.graphs["segment.int8-cpu"].quantization["mode"] == "dynamic"
    assert b.graphs["segment.int8-cpu"].quantization["gptq"]
    assert b.graphs["segment.int8-tensorrt"].calibration["samples_per_step"]
    report = json.loads((out / "quant_report.json").read_text())
    sites = report["targets"]["tensorrt"]["sites"]
    assert sites and {"label", "error_full", "error_final", "loo_benefit", "error_final_by_step"} <= set(sites[0])
    assert "quant_report.json" in b.manifest.files
    # a second export reuses the calibration and the search
    again_dir = tmp_path / "again"
    again_dir.mkdir()
    for name in ("segment.fp32.onnx", "reference.npz"):  # what add_int8_graphs reads from a bundle being written
        (again_dir / name).write_bytes((out / name).read_bytes())
    manifest = dataclasses.replace(b.manifest, graphs={"segment.fp32": b.graphs["segment.fp32"]})
    extra(again_dir, manifest, ck)
    assert C.calibration_runs() == runs + 3
    again = manifest.graphs["segment.int8-tensorrt"]
    assert again.calibration["cache_hit"] and again.quantization["search_cached"]
    assert again.quantization["float_sites"] == b.graphs["segment.int8-tensorrt"].quantization["float_sites"]


def test_open_loop_score_includes_the_halting_margin(built, calib, tmp_path):
    """The sensitivity pass scores q_halt - q_continue too, so sites that move halting decisions rank."""
    from hrm_edge.export.graphs import export_segment

    model = spread_q_head(copy.deepcopy(built["model"]))  # the official init makes q constant
    ck = Checkpoint(model, model.config, "sudoku6")
    pipe = Q.Int8Pipeline(export_segment(model, tmp_path / "q.onnx"), ck, calib, tmp_path / "w", Q.Int8Config(
        calib_size=12, smooth_alpha=None, gptq=False, cache_dir=tmp_path / "cache"), progress=False)
    full = pipe.quantize(Q.settings_for("tensorrt"))
    q_head = next(s.node for s in pipe.sites if s.label == "q_head")
    per_step = pipe.open_loop.errors(full)["per_step"]
    assert all(p["q_margin"] > 0 for p in per_step)
    assert all(p["q_margin"] == 0 for p in pipe.open_loop.errors(pipe.fp32)["per_step"])
    full_q = np.mean([p["q_margin"] for p in per_step])
    float_head = S.restore_float(full, pipe.fp32, [q_head], "float")
    assert np.mean([p["q_margin"] for p in pipe.open_loop.errors(float_head)["per_step"]]) < full_q


def _scripted(results):
    """An `evaluate` for search_exclusions: gate checks looked up by the number of excluded sites."""
    def evaluate(excluded):
        checks = [{"name": n, "value": v, "threshold": t, "passed": v >= t} for n, v, t in results[len(excluded)]]
        m = {"exact_agreement": 0.9, "solved_agreement": checks[0]["value"], "halting_agreement": checks[1]["value"],
             "token_agreement": 0.99, "accuracy_drop": 0.0}
        return {"metrics": m, "gates": checks, "passed": all(c["passed"] for c in checks), "seconds": 0.0}
    return evaluate


def test_a_search_that_never_passes_keeps_the_trial_closest_to_passing():
    # no exclusion: best solved agreement but halting far off; two exclusions: only solved agreement just short
    results = {0: [("solved", 1.0, 0.995), ("halting", 0.91, 0.97)],
               1: [("solved", 0.99, 0.995), ("halting", 0.95, 0.97)],
               2: [("solved", 0.994, 0.995), ("halting", 0.975, 0.97)]}
    result = S.search_exclusions(_scripted(results), ["a", "b"], max_excluded=2, progress=False)
    assert not result.passed
    assert result.excluded == ["a", "b"]

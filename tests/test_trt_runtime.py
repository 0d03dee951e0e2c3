"""TensorRT runtime and builder: what runs without TensorRT (imports, errors, sidecar logic, trtexec
command, device-side compaction plan, CLI wiring) and one end-to-end test for a GPU with TensorRT."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from hrm_edge.export.trt_build import TARGETS, EngineBuildError, parse_batch, trtexec_command
from hrm_edge.runtimes.trt_runtime import (
    EngineError,
    TrtNotInstalledError,
    check_sidecar,
    compaction_copies,
    engine_dir_name,
    gpu_slug,
    load_engine,
    read_sidecar,
    sidecar_mismatch,
    sidecar_path,
)

from hrm_edge.errors import HrmEdgeError

SHAPES = {"tokens": ["batch", 81], "puzzle_ids": ["batch"], "z_H": ["batch", 82, 512], "z_L": ["batch", 82, 512]}
HERE = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7"}


def test_import_without_tensorrt_and_without_torch():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "sys.modules['tensorrt'] = None\n"
        "import hrm_edge.runtimes.trt_runtime as r, hrm_edge.export.trt_build, hrm_edge.cli_trt\n"
        "assert sys.modules['torch'] is None\n"
        "assert not any(m.startswith('cuda') for m in sys.modules), [m for m in sys.modules if m.startswith('cuda')]\n"
        "try:\n"
        "    r.import_tensorrt()\n"
        "except r.TrtNotInstalledError as e:\n"
        "    print('OK', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("OK TensorRT is not installed")


def test_load_engine_says_tensorrt_is_not_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on this machine, even where it is installed
    engine = tmp_path / "segment_fp16.engine"
    engine.write_bytes(b"not really an engine")
    sidecar_path(engine).write_text(json.dumps(HERE))
    with pytest.raises(TrtNotInstalledError, match=r"^TensorRT is not installed") as exc:
        load_engine(engine)
    assert "\n" not in str(exc.value)
    with pytest.raises(EngineError, match="no such engine file"):
        load_engine(tmp_path / "missing.engine")


def test_sidecar_mismatch_logic(tmp_path):
    assert sidecar_mismatch(dict(HERE), HERE) is None
    assert sidecar_mismatch({**HERE, "tensorrt_version": "10.3.0.30"}, HERE) is None  # build number ignored
    why = sidecar_mismatch({**HERE, "tensorrt_version": "10.13.2"}, HERE)
    assert why and "TensorRT 10.13.2" in why and "10.3.0" in why
    why = sidecar_mismatch({**HERE, "gpu_name": "NVIDIA H200", "compute_capability": "9.0"}, HERE)
    assert "compute capability 9.0" in why and "'NVIDIA H200'" in why
    assert sidecar_mismatch({**HERE, "compute_capability": "8.6"}, HERE)
    assert sidecar_mismatch({}, HERE)
    with pytest.raises(EngineError) as exc:
        check_sidecar({**HERE, "tensorrt_version": "10.13.0"}, HERE, "e/segment.engine")
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("e/segment.engine: built for TensorRT 10.13.0")
    assert "hrm-edge build" in msg and "rebuild" in msg
    check_sidecar(dict(HERE), HERE)
    engine = tmp_path / "x.engine"
    with pytest.raises(EngineError, match=r"no x\.engine\.json"):
        read_sidecar(engine)
    sidecar_path(engine).write_text("{broken")
    with pytest.raises(EngineError, match="not valid JSON"):
        read_sidecar(engine)


def test_engine_directory_names():
    assert gpu_slug("NVIDIA GeForce RTX 4090") == "nvidia-geforce-rtx-4090"
    assert engine_dir_name({"tensorrt_version": "10.3.0.30", "gpu_name": "Orin"}) == "orin-trt10.3.0"


def test_trtexec_command():
    cmd = trtexec_command("bundle/segment_fp16.onnx", "bundle/engines/orin-trt10.3.0/segment_fp16.engine",
                          (1, 8, 32), SHAPES, "orin-nano", timing_cache="bundle/engines/orin-trt10.3.0/timing.cache")
    assert cmd == (
        "trtexec --onnx=bundle/segment_fp16.onnx --saveEngine=bundle/engines/orin-trt10.3.0/segment_fp16.engine "
        "--stronglyTyped "
        "--minShapes=tokens:1x81,puzzle_ids:1,z_H:1x82x512,z_L:1x82x512 "
        "--optShapes=tokens:8x81,puzzle_ids:8,z_H:8x82x512,z_L:8x82x512 "
        "--maxShapes=tokens:32x81,puzzle_ids:32,z_H:32x82x512,z_L:32x82x512 "
        "--memPoolSize=workspace:1024M --timingCacheFile=bundle/engines/orin-trt10.3.0/timing.cache")
    desktop = trtexec_command("a b.onnx", "a.engine", input_shapes=SHAPES, workspace_mb=2048, verbose=True)
    assert desktop.startswith("trtexec '--onnx=a b.onnx' ")
    assert desktop.endswith("--memPoolSize=workspace:2048M --verbose")
    assert "--maxShapes=tokens:256x81" in desktop  # the desktop preset's max batch
    with pytest.raises(EngineBuildError, match="dynamic non-batch"):
        trtexec_command("a.onnx", "a.engine", input_shapes={"x": ["batch", "seq"]})


def test_targets_and_batch_parsing():
    assert set(TARGETS) == {"orin-nano", "orin-agx", "thor", "desktop"}
    assert TARGETS["orin-nano"].workspace_mb < TARGETS["orin-agx"].workspace_mb <= TARGETS["thor"].workspace_mb
    assert parse_batch("1:32:128") == (1, 32, 128)
    for bad in ("1:2", "0:1:2", "4:2:8", "a:b:c"):
        with pytest.raises(EngineBuildError, match="MIN:OPT:MAX"):
            parse_batch(bad)


@pytest.mark.parametrize("rows", [[0, 1, 2], [1, 2, 3, 5, 9, 10], [3], [0, 2, 4, 6], [5, 6, 7, 8, 9], [0, 1, 7]])
def test_compaction_copies_move_rows_in_place(rows):
    rng = np.random.default_rng(0)
    buf = rng.standard_normal((12, 3))
    expected = buf[rows].copy()
    for dst, src, n in compaction_copies(np.array(rows)):
        assert n > 0 and (src >= dst + n or dst >= src + n)  # never a self-overlapping copy
        buf[dst:dst + n] = buf[src:src + n].copy()
    np.testing.assert_array_equal(buf[:len(rows)], expected)
    assert compaction_copies(np.arange(5)) == []


# --- CLI wiring on a hand-made bundle (no TensorRT) -----------------------------------------------------


def _fake_bundle(tmp_path):
    d = tmp_path / "bundle"
    d.mkdir()
    graphs = {}
    files = {}
    for name, precision, target in (("segment_fp16", "fp16", None), ("segment_int8_trt", "int8", "tensorrt"),
                                    ("segment_int8_cpu", "int8", "cpu")):
        (d / f"{name}.onnx").write_bytes(name.encode())
        files[f"{name}.onnx"] = hashlib.sha256(name.encode()).hexdigest()
        graphs[name] = {"file": f"{name}.onnx", "kind": "segment", "precision": precision, "opset": 18,
                        "inputs": {n: {"dtype": "int64" if n in ("tokens", "puzzle_ids") else "float32", "shape": s}
                                   for n, s in SHAPES.items()}, "outputs": {}}
        if target:
            graphs[name]["target"] = target
    manifest = {"schema_version": 1, "model": {"config": {}}, "task": {"name": "sudoku"}, "graphs": graphs,
                "files": files}
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


def test_select_segment_graph(tmp_path):
    from hrm_edge.bundle import open_bundle
    from hrm_edge.cli_trt import select_segment_graph

    graphs = open_bundle(_fake_bundle(tmp_path)).graphs
    assert select_segment_graph(graphs, "fp16") == "segment_fp16"
    assert select_segment_graph(graphs, "int8") == "segment_int8_trt"
    with pytest.raises(HrmEdgeError, match="no fp32 segment graph; segment graphs: segment_fp16 "):
        select_segment_graph(graphs, "fp32")
    graphs = {k: v for k, v in graphs.items() if k != "segment_int8_trt"}
    with pytest.raises(HrmEdgeError, match="no int8 segment graph with target tensorrt"):
        select_segment_graph(graphs, "int8")


def test_cli_build_prints_trtexec_and_reports_missing_tensorrt(tmp_path, monkeypatch):
    from hrm_edge.cli_trt import build

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    bundle = _fake_bundle(tmp_path)
    runner = CliRunner()
    res = runner.invoke(build, [str(bundle), "--precision", "int8", "--target", "orin-nano", "--print-trtexec"])
    assert res.exit_code == 0, res.output
    line = res.output.strip()
    assert line.startswith(f"trtexec --onnx={bundle}/segment_int8_trt.onnx --saveEngine={bundle}/engines/trtexec/")
    assert "--stronglyTyped" in line and "--maxShapes=tokens:32x81" in line and "workspace:1024M" in line
    res = runner.invoke(build, [str(bundle), "--precision", "fp16"])
    assert res.exit_code != 0 and isinstance(res.exception, TrtNotInstalledError)
    res = runner.invoke(build, [str(bundle), "--precision", "fp16", "--batch", "8:1:2", "--print-trtexec"])
    assert isinstance(res.exception, EngineBuildError)


# --- end to end on a GPU with TensorRT --------------------------------------------------------------------


def _have_gpu_tensorrt() -> str | None:
    for mod in ("tensorrt", "onnxruntime", "torch"):
        if importlib.util.find_spec(mod) is None:
            return f"needs {mod}"
    if importlib.util.find_spec("cuda") is None:
        return "needs cuda-python"
    try:
        from hrm_edge.runtimes.trt_runtime import current_device

        current_device()
    except Exception as exc:  # no GPU, no driver
        return f"needs a CUDA GPU ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    return None


class _OrtRunner:
    """The same SegmentRunner over onnxruntime on the CPU: the reference for the TensorRT engine."""

    def __init__(self, path, h_init, l_init, total_len):
        import onnxruntime as ort

        self.s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.h, self.l, self.p = h_init, l_init, total_len

    def start(self, tokens, puzzle_ids):
        b = len(tokens)
        self.tokens, self.pids = tokens, puzzle_ids
        self.zh = np.broadcast_to(self.h, (b, self.p, self.h.size)).astype(np.float32).copy()
        self.zl = np.broadcast_to(self.l, (b, self.p, self.l.size)).astype(np.float32).copy()

    def step(self):
        self.zh, self.zl, self.lg, qh, qc = self.s.run(
            None, {"tokens": self.tokens, "puzzle_ids": self.pids, "z_H": self.zh, "z_L": self.zl})
        return qh, qc

    def predictions(self, rows):
        return self.lg[rows].argmax(-1)

    def logits(self, rows):
        return self.lg[rows]

    def keep(self, rows):
        self.tokens, self.pids, self.zh, self.zl, self.lg = (a[rows] for a in (self.tokens, self.pids, self.zh,
                                                                                 self.zl, self.lg))


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize("use_cuda_graph", [False, True])
def test_engine_matches_onnxruntime(tmp_path, use_cuda_graph):
    reason = _have_gpu_tensorrt()
    if reason:
        pytest.skip(f"end-to-end TensorRT test {reason}")
    import torch
    from hrm_edge.export.trt_build import build_engine
    from hrm_edge.runtimes.trt_runtime import TrtSegmentRunner
    from test_trt_check import _export_segment  # tests/ is on sys.path (pytest's prepend import mode)

    from hrm_edge.act import parse_policy, run_act
    from hrm_edge.model.config import preset_config
    from hrm_edge.model.hrm import HRM

    onnx_path = tmp_path / "segment_fp32.onnx"
    _export_segment(onnx_path)
    torch.manual_seed(0)
    model = HRM(preset_config("sudoku-tiny"))
    cfg = model.config
    h, l_ = model.inner.H_init.numpy(), model.inner.L_init.numpy()
    engine = tmp_path / "engines" / "segment_fp32.engine"
    sidecar = build_engine(onnx_path, engine, "fp32", "desktop", batch=(1, 4, 8), timing_cache=tmp_path / "t.cache",
                           progress=False)
    assert sidecar["engine_sha256"] and (tmp_path / "t.cache").is_file()
    loaded = load_engine(engine)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, cfg.vocab_size, size=(6, cfg.seq_len)).astype(np.int64)
    pids = np.zeros(6, np.int64)
    with TrtSegmentRunner(loaded, h, l_, cfg.total_len, use_cuda_graph=use_cuda_graph) as trt_runner:
        ort_runner = _OrtRunner(onnx_path, h, l_, cfg.total_len)
        for runner in (trt_runner, ort_runner):
            runner.start(tokens, pids)
        for _ in range(2):
            (a_h, a_c), (b_h, b_c) = trt_runner.step(), ort_runner.step()
            np.testing.assert_allclose(a_h, b_h, atol=2e-3, rtol=2e-3)
            np.testing.assert_allclose(a_c, b_c, atol=2e-3, rtol=2e-3)
        rows = np.array([0, 2, 3, 5])
        np.testing.assert_allclose(trt_runner.logits(rows), ort_runner.logits(rows), atol=2e-3, rtol=2e-3)
        for runner in (trt_runner, ort_runner):
            runner.keep(rows)
        (a_h, _), (b_h, _) = trt_runner.step(), ort_runner.step()
        np.testing.assert_allclose(a_h, b_h, atol=2e-3, rtol=2e-3)
        policy = parse_policy("fixed")
        ours = run_act(trt_runner, tokens, pids, policy, 3, record_steps=True)
        ref = run_act(ort_runner, tokens, pids, policy, 3, record_steps=True)
        np.testing.assert_allclose(ours.step_q_halt, ref.step_q_halt, atol=2e-3, rtol=2e-3)
        assert (ours.predictions == ref.predictions).mean() > 0.99

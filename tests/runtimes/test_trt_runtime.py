"""TensorRT runtime and builder without TensorRT: imports, errors, sidecar logic, trtexec command,
device-side compaction plan, CLI wiring; `build_engine`, `load_engine` and `TrtSegmentRunner` against
an in-process stand-in for TensorRT and the CUDA runtime (ONNX Runtime plays the engine); and one
end-to-end test on a real GPU with TensorRT, skipped elsewhere."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from hrm_edge.errors import HrmEdgeError
from hrm_edge.runtimes.trt.builder import TARGETS, EngineBuildError, parse_batch, trtexec_command
from hrm_edge.runtimes.trt.runner import (
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

SHAPES = {"tokens": ["batch", 81], "puzzle_ids": ["batch"], "z_H": ["batch", 82, 512], "z_L": ["batch", 82, 512]}
HERE = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7"}


def test_import_without_tensorrt_and_without_torch():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "sys.modules['tensorrt'] = None\n"
        "import hrm_edge.runtimes.trt.runner as r, hrm_edge.runtimes.trt.builder, hrm_edge.cli.trt\n"
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
    from hrm_edge.cli.trt import select_segment_graph

    graphs = open_bundle(_fake_bundle(tmp_path)).graphs
    assert select_segment_graph(graphs, "fp16") == "segment_fp16"
    assert select_segment_graph(graphs, "int8") == "segment_int8_trt"
    with pytest.raises(HrmEdgeError, match="no fp32 segment graph; segment graphs: segment_fp16 "):
        select_segment_graph(graphs, "fp32")
    graphs = {k: v for k, v in graphs.items() if k != "segment_int8_trt"}
    with pytest.raises(HrmEdgeError, match="no int8 segment graph with target tensorrt"):
        select_segment_graph(graphs, "int8")


def test_cli_build_prints_trtexec_and_reports_missing_tensorrt(tmp_path, monkeypatch):
    from hrm_edge.cli.trt import build

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
        from hrm_edge.runtimes.trt.runner import current_device

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

    from hrm_edge.act import parse_policy, run_act
    from hrm_edge.model.config import preset_config
    from hrm_edge.model.hrm import HRM
    from hrm_edge.runtimes.trt.builder import build_engine
    from hrm_edge.runtimes.trt.runner import TrtSegmentRunner
    from tests.runtimes.test_trt_check import _export_segment

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


# --- the runner's bookkeeping against an in-process stand-in for TensorRT and the CUDA runtime ----------
# Host memory plays device memory, ONNX Runtime plays the engine, a recorded closure plays a CUDA
# graph. This exercises TrtSegmentRunner's own logic (bindings, ping-pong carry, copies back, keep,
# graph capture and re-capture) where no GPU exists; it says nothing about real TensorRT behaviour.


class _FakeCudart:

    class _Stream:
        def __int__(self) -> int:
            return 1234

    class _Props:
        name, major, minor = b"Fake GPU\0\0", 8, 7

    def __init__(self) -> None:
        import ctypes

        self.cudaError_t = SimpleNamespace(cudaSuccess=0)
        self.cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2,
                                              cudaMemcpyDeviceToDevice=3)
        self.cudaStreamCaptureMode = SimpleNamespace(cudaStreamCaptureModeGlobal=0)
        self.ctypes = ctypes
        self.memory: dict[int, object] = {}
        self.capturing: list | None = None
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def cudaSetDevice(self, device):
        return (0,)

    def cudaGetDeviceProperties(self, device):
        return 0, self._Props()

    def cudaGetErrorString(self, err):
        return 0, b"fake error"

    def cudaMalloc(self, n):
        buf = self.ctypes.create_string_buffer(n)
        addr = self.ctypes.addressof(buf)
        self.memory[addr] = buf
        return 0, addr

    def cudaMallocHost(self, n):
        return self.cudaMalloc(n)

    def cudaFree(self, ptr):
        del self.memory[ptr]
        return (0,)

    def cudaFreeHost(self, ptr):
        return self.cudaFree(ptr)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        self._count("memcpy")
        def op():
            self.ctypes.memmove(dst, src, n)

        if self.capturing is not None:
            self.capturing.append(op)
        else:
            op()
        return (0,)

    def cudaStreamCreate(self):
        return 0, self._Stream()

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaStreamDestroy(self, stream):
        return (0,)

    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing = []
        return (0,)

    def cudaStreamEndCapture(self, stream):
        ops, self.capturing = self.capturing, None
        return 0, ops

    def cudaGraphInstantiate(self, graph, flags):
        self._count("instantiate")
        return 0, list(graph)

    def cudaGraphLaunch(self, exec_graph, stream):
        self._count("launch")
        for op in exec_graph:
            op()
        return (0,)

    def cudaGraphExecDestroy(self, exec_graph):
        return (0,)

    def cudaGraphDestroy(self, graph):
        return (0,)


def _fake_tensorrt(cudart: _FakeCudart, onnx_path, max_batch: int = 8):
    import ctypes
    import types

    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    np_types = {1: np.dtype(np.float32), 7: np.dtype(np.int64), 10: np.dtype(np.float16)}
    io = {}
    for vi, mode in [(v, "in") for v in model.graph.input] + [(v, "out") for v in model.graph.output]:
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
        io[vi.name] = (mode, np_types[vi.type.tensor_type.elem_type], dims)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.nptype = lambda t: t

    class Logger:
        WARNING, VERBOSE = 2, 4

        def __init__(self, level):
            self.level = level

    class Context:
        def __init__(self):
            self.shapes, self.addresses = {}, {}

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)
            return True

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr
            return True

        def _run(self, addresses, shapes):
            feeds = {}
            for name, (mode, dt, _) in io.items():
                if mode == "in":
                    n = int(np.prod(shapes[name])) * dt.itemsize
                    raw = (ctypes.c_byte * n).from_address(addresses[name])
                    feeds[name] = np.frombuffer(raw, dtype=dt).reshape(shapes[name]).copy()
            outs = session.run(None, feeds)
            for out, vi in zip(outs, model.graph.output, strict=True):
                out = np.ascontiguousarray(out, dtype=io[vi.name][1])
                ctypes.memmove(addresses[vi.name], out.ctypes.data, out.nbytes)

        def execute_async_v3(self, stream_handle):
            assert stream_handle == 1234
            addresses, shapes = dict(self.addresses), dict(self.shapes)
            if cudart.capturing is not None:
                cudart.capturing.append(lambda: self._run(addresses, shapes))
            else:
                self._run(addresses, shapes)
            return True

    class Engine:
        num_io_tensors = len(io)

        def get_tensor_name(self, i):
            return list(io)[i]

        def get_tensor_mode(self, name):
            return io[name][0]

        def get_tensor_dtype(self, name):
            return io[name][1]

        def get_tensor_shape(self, name):
            return io[name][2]

        def get_tensor_profile_shape(self, name, profile):
            dims = io[name][2]
            return [[b, *dims[1:]] for b in (1, 4, max_batch)]

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine() if data == b"fake engine" else None

    trt.Logger, trt.Runtime = Logger, Runtime
    _add_fake_builder(trt, np_types)
    return trt


def _add_fake_builder(trt, np_types) -> None:
    """Builder-side stand-ins: the parser reads the ONNX file with onnx, the build returns b"fake engine"."""
    import onnx

    trt.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=5)
    trt.MemoryPoolType = SimpleNamespace(WORKSPACE="workspace")
    trt.LayerType = SimpleNamespace(QUANTIZE="quantize", OTHER="other")
    trt.DataType = SimpleNamespace(HALF="half", FLOAT="float")
    trt.built = []

    class IProgressMonitor:
        def __init__(self):
            pass

    class Tensor(SimpleNamespace):
        pass

    class Network:
        def __init__(self, flags):
            self.flags, self.inputs, self.layers = flags, [], []

        num_inputs = property(lambda self: len(self.inputs))
        num_layers = property(lambda self: len(self.layers))

        def get_input(self, i):
            return self.inputs[i]

        def get_layer(self, i):
            return self.layers[i]

    class ParserError:
        def __init__(self, node, name, op, desc):
            self._v = (node, name, op, desc)

        def node(self):
            return self._v[0]

        def node_name(self):
            return self._v[1]

        def node_operator(self):
            return self._v[2]

        def desc(self):
            return self._v[3]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        num_errors = property(lambda self: len(self.errors))

        def get_error(self, i):
            return self.errors[i]

        def parse_from_file(self, path):
            model = onnx.load(path)
            for i, node in enumerate(model.graph.node):
                if node.op_type == "Det":
                    self.errors.append(ParserError(i, node.name, node.op_type, "no importer registered for op: Det"))
            inits = {t.name for t in model.graph.initializer}
            for vi in model.graph.input:
                if vi.name not in inits:
                    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
                    self.network.inputs.append(Tensor(name=vi.name, shape=dims))
            half = any(vi.type.tensor_type.elem_type == 10 for vi in model.graph.value_info) or any(
                t.data_type == 10 for t in model.graph.initializer)
            for node in model.graph.node:
                kind = trt.LayerType.QUANTIZE if node.op_type == "QuantizeLinear" else trt.LayerType.OTHER
                dtype = trt.DataType.HALF if half else trt.DataType.FLOAT
                self.network.layers.append(SimpleNamespace(type=kind, num_outputs=1,
                                                           get_output=lambda j, d=dtype: SimpleNamespace(dtype=d)))
            return not self.errors

    class TimingCache:
        def __init__(self, data):
            self.data = bytes(data) or b"cache"

        def serialize(self):
            return self.data + b"+"

    class Config:
        def __init__(self):
            self.pools, self.profiles, self.progress_monitor, self.cache = {}, [], None, None

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return 0

        def create_timing_cache(self, data):
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (list(lo), list(opt), list(hi))

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            if config.progress_monitor is not None:
                config.progress_monitor.phase_start("Building engine", None, 2)
                assert config.progress_monitor.step_complete("Building engine", 0) is True
                config.progress_monitor.phase_finish("Building engine")
            trt.built.append((network, config))
            return b"fake engine"

    trt.IProgressMonitor, trt.OnnxParser, trt.Builder = IProgressMonitor, OnnxParser, Builder


@pytest.fixture(scope="module")
def segment_onnx(tmp_path_factory):
    pytest.importorskip("torch", reason="exports a real segment graph")
    from tests.runtimes.test_trt_check import _export_segment

    path = tmp_path_factory.mktemp("fake_gpu") / "segment.onnx"
    _export_segment(path)
    return path


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch, segment_onnx):
    import types

    onnx_path = segment_onnx
    cudart = _FakeCudart()
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    cuda.bindings = bindings
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(cudart, onnx_path))
    engine = tmp_path / "segment.engine"
    engine.write_bytes(b"fake engine")
    sidecar = {"tensorrt_version": "10.3.0", "gpu_name": "Fake GPU", "compute_capability": "8.7",
               "engine_sha256": hashlib.sha256(b"fake engine").hexdigest()}
    sidecar_path(engine).write_text(json.dumps(sidecar))
    return types.SimpleNamespace(onnx=onnx_path, engine=engine, cudart=cudart, sidecar=sidecar)


def test_load_engine_checks_against_the_running_gpu(fake_gpu):
    loaded = load_engine(fake_gpu.engine)
    assert loaded.sidecar["gpu_name"] == "Fake GPU" and loaded.engine.num_io_tensors == 9
    sidecar_path(fake_gpu.engine).write_text(json.dumps({**fake_gpu.sidecar, "gpu_name": "Orin"}))
    with pytest.raises(EngineError, match=r"GPU 'Orin'.*hrm-edge build"):
        load_engine(fake_gpu.engine)
    sidecar_path(fake_gpu.engine).write_text(json.dumps(fake_gpu.sidecar))
    fake_gpu.engine.write_bytes(b"fake enginX")
    with pytest.raises(EngineError, match="corrupt or truncated"):
        load_engine(fake_gpu.engine)
    with pytest.raises(EngineError, match="cannot deserialize"):
        load_engine(fake_gpu.engine, verify_sha256=False)


@pytest.mark.parametrize("use_cuda_graph", [False, True])
def test_runner_bookkeeping_matches_onnxruntime(fake_gpu, use_cuda_graph):
    import torch

    from hrm_edge.act import parse_policy, run_act
    from hrm_edge.model.config import preset_config
    from hrm_edge.model.hrm import HRM
    from hrm_edge.runtimes.trt.runner import TrtSegmentRunner

    torch.manual_seed(0)
    model = HRM(preset_config("sudoku-tiny"))
    cfg = model.config
    h, l_ = model.inner.H_init.numpy(), model.inner.L_init.numpy()
    rng = np.random.default_rng(1)
    tokens = rng.integers(1, cfg.vocab_size, size=(7, cfg.seq_len)).astype(np.int64)
    pids = np.zeros(7, np.int64)
    runner = TrtSegmentRunner(fake_gpu.engine, h, l_, cfg.total_len, use_cuda_graph=use_cuda_graph)
    ref = _OrtRunner(fake_gpu.onnx, h, l_, cfg.total_len)
    assert (runner.min_batch, runner.max_batch) == (1, 8)
    for r in (runner, ref):
        r.start(tokens, pids)
    for _ in range(3):
        (a_h, a_c), (b_h, b_c) = runner.step(), ref.step()
        np.testing.assert_allclose(a_h, b_h, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(a_c, b_c, rtol=1e-5, atol=1e-5)
    rows = np.array([0, 1, 2, 4, 6])
    np.testing.assert_allclose(runner.logits(rows), ref.logits(rows), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(runner.predictions(rows), ref.predictions(rows))
    for r in (runner, ref):
        r.keep(rows)
    np.testing.assert_allclose(runner.logits(np.arange(5)), ref.logits(np.arange(5)), rtol=1e-5, atol=1e-5)
    for r in (runner, ref):
        r.keep(np.array([1, 3, 4]))
    (a_h, _), (b_h, _) = runner.step(), ref.step()
    np.testing.assert_allclose(a_h, b_h, rtol=1e-5, atol=1e-5)
    for policy in ("fixed", "q", "threshold:0.4"):
        ours = run_act(runner, tokens, pids, parse_policy(policy), 4, record_steps=True)
        theirs = run_act(ref, tokens, pids, parse_policy(policy), 4, record_steps=True)
        np.testing.assert_array_equal(ours.steps, theirs.steps)
        np.testing.assert_array_equal(ours.predictions, theirs.predictions)
        np.testing.assert_allclose(ours.step_q_halt, theirs.step_q_halt, rtol=1e-5, atol=1e-5)
    if use_cuda_graph:
        assert fake_gpu.cudart.calls["instantiate"] >= 2 and fake_gpu.cudart.calls["launch"] > 0
    with pytest.raises(EngineError, match=r"outside the engine's profile 1\.\.8"):
        runner.start(np.zeros((9, cfg.seq_len), np.int64), np.zeros(9, np.int64))
    runner.close()
    assert not fake_gpu.cudart.memory  # every device and pinned buffer freed


def test_build_engine_writes_engine_sidecar_and_timing_cache(fake_gpu, tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    from hrm_edge.runtimes.trt.builder import build_engine

    engine = tmp_path / "engines" / "fake-gpu-trt10.3.0" / "segment.engine"
    cache = tmp_path / "engines" / "timing.cache"
    side = build_engine(fake_gpu.onnx, engine, "fp32", "orin-nano", batch=(1, 4, 8), timing_cache=cache,
                        extra_sidecar={"bundle_graph": "segment.fp32"})
    trt = sys.modules["tensorrt"]
    network, config = trt.built[-1]
    assert network.flags == 1 << 5 and config.pools == {"workspace": 1024 << 20}
    (profile,) = config.profiles
    assert profile.shapes["z_H"] == ([1, 82, 32], [4, 82, 32], [8, 82, 32])
    assert profile.shapes["puzzle_ids"] == ([1], [4], [8])
    assert engine.read_bytes() == b"fake engine" and cache.read_bytes() == b"cache+"
    on_disk = json.loads(sidecar_path(engine).read_text())
    assert on_disk == side
    assert side["tensorrt_version"] == "10.3.0" and side["gpu_name"] == "Fake GPU"
    assert side["compute_capability"] == "8.7" and side["precision"] == "fp32" and side["target"] == "orin-nano"
    assert side["build_flags"] == ["STRONGLY_TYPED"] and side["batch"] == {"min": 1, "opt": 4, "max": 8}
    assert side["engine_sha256"] == hashlib.sha256(b"fake engine").hexdigest()
    assert side["onnx_sha256"] == hashlib.sha256(fake_gpu.onnx.read_bytes()).hexdigest()
    assert side["bundle_graph"] == "segment.fp32" and side["hrm_edge_version"] and side["created"]
    assert side["trtexec"].startswith("trtexec ") and "--maxShapes=tokens:8x81" in side["trtexec"]
    assert "Building engine" in capsys.readouterr().err
    loaded = load_engine(engine)  # the runtime takes what the builder wrote
    assert loaded.sidecar["engine_sha256"] == side["engine_sha256"]
    build_engine(fake_gpu.onnx, engine, "fp32", "desktop", timing_cache=cache, progress=False)
    assert cache.read_bytes() == b"cache++"  # the cache was loaded and extended

    with pytest.raises(EngineBuildError, match="computes in fp32, not fp16"):
        build_engine(fake_gpu.onnx, engine, "fp16", "desktop")
    bad = tmp_path / "det.onnx"
    graph = helper.make_graph([helper.make_node("Det", ["x"], ["y"], name="determinant")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), bad)
    with pytest.raises(EngineBuildError, match="cannot parse it: node 0 'determinant' \\(Det\\): no importer"):
        build_engine(bad, tmp_path / "det.engine", "fp32")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), bad)
    with pytest.raises(EngineBuildError, match="dynamic non-batch dimension"):
        build_engine(bad, tmp_path / "det.engine", "fp32")

"""TensorRT runtime: a `SegmentRunner` over a serialized TensorRT 10 engine of the segment graph.

No torch: numpy, `tensorrt` and `cuda-python` only, the last two imported when first needed
(`TrtNotInstalledError` with what to install when they are missing), so this module imports
everywhere.

- `load_engine(path)` reads `<engine>.json` (written by `hrm-edge build`), checks that the engine
  was built by this TensorRT version on this GPU (name and compute capability; engines are tied
  to both) and that its bytes are the ones built, then deserializes it.
- `TrtSegmentRunner(engine, h_init, l_init, total_len)` runs one ACT segment per `step()` with the
  name-based TensorRT 10 API (`set_input_shape`, `set_tensor_address`, `execute_async_v3`). Device
  buffers are allocated once for the engine's largest profile batch. The carry never leaves the
  GPU: two buffer sets (z_H, z_L) are used in turn as input and output, swapped after every
  segment. Per segment only q_halt and q_continue (B values each) come back to the host; logits
  are copied back only when `predictions` or `logits` ask for them. `keep(rows)` compacts every
  per-row buffer on the device with device-to-device copies of row runs. With
  `use_cuda_graph=True` each of the two ping-pong segments is captured once as a CUDA graph and
  replayed, re-captured whenever the active batch size changes.

The I/O names are those of the exported segment graph: inputs tokens [B,S], puzzle_ids [B],
z_H, z_L [B,P,D]; outputs z_H_out, z_L_out [B,P,D], logits [B,S,V], q_halt, q_continue [B].
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hrm_edge.errors import HrmEdgeError

INPUTS = ("tokens", "puzzle_ids", "z_H", "z_L")
OUTPUTS = ("z_H_out", "z_L_out", "logits", "q_halt", "q_continue")
SIDECAR_SUFFIX = ".json"
MIN_TRT = (10, 0)
REBUILD_HINT = "rebuild it on this device with `hrm-edge build BUNDLE --precision fp16|int8`"


class TrtNotInstalledError(HrmEdgeError):
    """TensorRT or cuda-python is missing on this machine."""


class EngineError(HrmEdgeError):
    """An engine file that is missing, corrupt, or built for another TensorRT version or GPU."""


class CudaError(HrmEdgeError):
    """A CUDA runtime call failed."""


# --- lazy imports and CUDA helpers ----------------------------------------------------------------------


def import_tensorrt() -> Any:
    """The `tensorrt` module, at least version 10.0."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TrtNotInstalledError(
            f"TensorRT is not installed: `import tensorrt` failed ({exc}). On a Jetson it comes with JetPack "
            "(python3-libnvinfer); on x86-64 install NVIDIA's `tensorrt` wheel for your CUDA") from None
    if version_tuple(trt.__version__)[:2] < MIN_TRT:
        raise TrtNotInstalledError(f"TensorRT {trt.__version__} is too old: hrm-edge needs TensorRT >= 10.0")
    return trt


def import_cudart() -> Any:
    """cuda-python's runtime API module (`cuda.bindings.runtime`, or `cuda.cudart` before 12.6)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            raise TrtNotInstalledError("cuda-python is not installed: pip install 'cuda-python>=12' (its major "
                                       "version must match the CUDA that TensorRT uses)") from None
    return cudart


def cuda_call(result: Any) -> Any:
    """Unpack a cuda-python result tuple (err, *values), raising `CudaError` on failure."""
    if not isinstance(result, tuple):
        result = (result,)
    err, values = result[0], result[1:]
    cudart = import_cudart()
    if err != cudart.cudaError_t.cudaSuccess:
        name = getattr(err, "name", str(err))
        try:
            text = cudart.cudaGetErrorString(err)[1]
            text = text.decode() if isinstance(text, bytes) else str(text)
        except Exception:
            text = ""
        raise CudaError(f"CUDA error {name}{': ' + text if text else ''}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def version_tuple(text: str) -> tuple[int, ...]:
    """'10.3.0.26' -> (10, 3, 0, 26); non-numeric tails are dropped."""
    parts = []
    for p in str(text).split("."):
        m = re.match(r"\d+", p)
        if not m:
            break
        parts.append(int(m.group()))
    return tuple(parts)


def current_device(device: int = 0) -> dict[str, str]:
    """{gpu_name, compute_capability} of CUDA device `device`, from the CUDA runtime."""
    cudart = import_cudart()
    props = cuda_call(cudart.cudaGetDeviceProperties(device))
    name = props.name
    if isinstance(name, bytes | bytearray):
        name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
    return {"gpu_name": str(name).strip(), "compute_capability": f"{props.major}.{props.minor}"}


def current_environment(device: int = 0) -> dict[str, str]:
    """What an engine must match: {tensorrt_version, gpu_name, compute_capability}."""
    trt = import_tensorrt()
    return {"tensorrt_version": trt.__version__, **current_device(device)}


def gpu_slug(gpu_name: str) -> str:
    """'NVIDIA GeForce RTX 4090' -> 'nvidia-geforce-rtx-4090' (engine directory names)."""
    return re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "gpu"


def engine_dir_name(env: dict[str, str]) -> str:
    """Directory for engines of one GPU and TensorRT version: '<gpu-slug>-trt<major.minor.patch>'."""
    version = ".".join(str(v) for v in version_tuple(env["tensorrt_version"])[:3])
    return f"{gpu_slug(env['gpu_name'])}-trt{version}"


# --- sidecar --------------------------------------------------------------------------------------------


def sidecar_path(engine_path: str | Path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def sidecar_mismatch(sidecar: dict[str, Any], current: dict[str, str]) -> str | None:
    """Why an engine described by `sidecar` cannot run here (`current` as from `current_environment`),
    or None when TensorRT version (major.minor.patch), GPU name and compute capability all match."""
    problems = []
    built_v = version_tuple(sidecar.get("tensorrt_version", ""))[:3]
    here_v = version_tuple(current.get("tensorrt_version", ""))[:3]
    if not built_v or built_v != here_v:
        problems.append(f"TensorRT {sidecar.get('tensorrt_version', '?')} (this is {current.get('tensorrt_version')})")
    if str(sidecar.get("compute_capability", "")) != str(current.get("compute_capability")):
        problems.append(f"compute capability {sidecar.get('compute_capability', '?')} "
                        f"(this GPU is {current.get('compute_capability')})")
    if str(sidecar.get("gpu_name", "")).strip() != str(current.get("gpu_name", "")).strip():
        problems.append(f"GPU {sidecar.get('gpu_name', '?')!r} (this is {current.get('gpu_name')!r})")
    if not problems:
        return None
    return "built for " + ", ".join(problems)


def check_sidecar(sidecar: dict[str, Any], current: dict[str, str], engine_path: str | Path = "engine") -> None:
    """Raise `EngineError` (one line, telling to rebuild) unless the engine matches this machine."""
    why = sidecar_mismatch(sidecar, current)
    if why:
        raise EngineError(f"{engine_path}: {why}; TensorRT engines are tied to the GPU and the TensorRT version: "
                          f"{REBUILD_HINT}")


def read_sidecar(engine_path: str | Path) -> dict[str, Any]:
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise EngineError(f"{engine_path}: no {path.name} beside it (hrm-edge writes one per engine); {REBUILD_HINT}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EngineError(f"{path}: not valid JSON ({exc}); {REBUILD_HINT}") from None
    if not isinstance(data, dict):
        raise EngineError(f"{path}: not an hrm-edge engine description; {REBUILD_HINT}")
    return data


# --- engine ---------------------------------------------------------------------------------------------


class _Logger:
    """A tensorrt.ILogger created lazily (the tensorrt module is not imported at module load)."""

    _instance = None

    @classmethod
    def get(cls, trt: Any, verbose: bool = False) -> Any:
        if verbose:
            return trt.Logger(trt.Logger.VERBOSE)
        if cls._instance is None:
            cls._instance = trt.Logger(trt.Logger.WARNING)
        return cls._instance


@dataclass
class LoadedEngine:
    """A deserialized engine with its sidecar; keeps the TensorRT runtime alive as long as the engine."""

    path: Path
    engine: Any
    sidecar: dict[str, Any]
    runtime: Any = field(repr=False, default=None)


def load_engine(engine_path: str | Path, verify_sha256: bool = True, device: int = 0) -> LoadedEngine:
    """Load `engine_path` after checking its sidecar against this TensorRT version and GPU."""
    path = Path(engine_path)
    if not path.is_file():
        raise EngineError(f"{path}: no such engine file; build one with `hrm-edge build BUNDLE --precision fp16`")
    trt = import_tensorrt()
    import_cudart()
    sidecar = read_sidecar(path)
    check_sidecar(sidecar, current_environment(device), path)
    data = path.read_bytes()
    if verify_sha256 and sidecar.get("engine_sha256"):
        import hashlib

        digest = hashlib.sha256(data).hexdigest()
        if digest != sidecar["engine_sha256"]:
            raise EngineError(f"{path}: sha256 {digest[:12]}... differs from the built engine's "
                              f"{sidecar['engine_sha256'][:12]}... (corrupt or truncated); {REBUILD_HINT}")
    runtime = trt.Runtime(_Logger.get(trt))
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise EngineError(f"{path}: TensorRT {trt.__version__} cannot deserialize it (corrupt, or not a TensorRT "
                          f"engine of this version); {REBUILD_HINT}")
    return LoadedEngine(path, engine, sidecar, runtime)


# --- the runner -----------------------------------------------------------------------------------------


class _DeviceBuffer:
    def __init__(self, nbytes: int) -> None:
        cudart = import_cudart()
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(cuda_call(cudart.cudaMalloc(self.nbytes)))

    def free(self) -> None:
        if self.ptr:
            cuda_call(import_cudart().cudaFree(self.ptr))
            self.ptr = 0


class _PinnedArray:
    """Page-locked host memory viewed as a numpy array (async device-to-host copies land here)."""

    def __init__(self, count: int, dtype: np.dtype) -> None:
        cudart = import_cudart()
        self.dtype = np.dtype(dtype)
        nbytes = max(int(count) * self.dtype.itemsize, 1)
        self.ptr = int(cuda_call(cudart.cudaMallocHost(nbytes)))
        raw = (ctypes.c_byte * nbytes).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=np.uint8)[: count * self.dtype.itemsize].view(self.dtype)

    def free(self) -> None:
        if self.ptr:
            self.array = None
            cuda_call(import_cudart().cudaFreeHost(self.ptr))
            self.ptr = 0


class TrtSegmentRunner:
    """`SegmentRunner` (see `hrm_edge.act`) over a TensorRT segment engine.

    Args:
        engine: a `LoadedEngine` (from `load_engine`) or an engine path.
        h_init, l_init: the bundle's initial carry rows, fp32 [D] (converted to the engine's carry type).
        total_len: P, positions of the carry (seq_len + puzzle_emb_len); checked against the engine.
        use_cuda_graph: replay each segment as a captured CUDA graph.
        device: CUDA device index.
    """

    def __init__(self, engine: LoadedEngine | str | Path, h_init: np.ndarray, l_init: np.ndarray, total_len: int,
                 use_cuda_graph: bool = False, device: int = 0) -> None:
        self._trt = import_tensorrt()
        self._rt = import_cudart()
        self._buffers: list[_DeviceBuffer] = []
        self._pinned: list[_PinnedArray] = []
        self._graphs: dict[int, tuple[Any, Any]] = {}
        self._stream = None
        cuda_call(self._rt.cudaSetDevice(device))
        self.loaded = engine if isinstance(engine, LoadedEngine) else load_engine(engine, device=device)
        eng = self.loaded.engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        missing = [n for n in (*INPUTS, *OUTPUTS) if n not in names]
        if missing:
            raise EngineError(f"{self.loaded.path}: not a segment engine: no tensor(s) {', '.join(missing)} "
                              f"(it has {', '.join(names)})")
        trt = self._trt
        for n in INPUTS:
            if eng.get_tensor_mode(n) != trt.TensorIOMode.INPUT:
                raise EngineError(f"{self.loaded.path}: {n} is not an input of the engine")
        try:
            self.dtypes = {n: np.dtype(trt.nptype(eng.get_tensor_dtype(n))) for n in (*INPUTS, *OUTPUTS)}
        except TypeError as exc:  # e.g. BF16 I/O, which numpy has no type for
            raise EngineError(f"{self.loaded.path}: an I/O tensor has a type numpy cannot hold ({exc}); export the "
                              "segment graph with fp32 or fp16 I/O") from None
        zshape = tuple(eng.get_tensor_shape("z_H"))
        tshape = tuple(eng.get_tensor_shape("tokens"))
        lshape = tuple(eng.get_tensor_shape("logits"))
        if len(zshape) != 3 or len(tshape) != 2 or len(lshape) != 3:
            raise EngineError(f"{self.loaded.path}: unexpected ranks z_H {zshape}, tokens {tshape}, logits {lshape}")
        self.positions, self.hidden = int(zshape[1]), int(zshape[2])
        self.seq_len, self.vocab = int(tshape[1]), int(lshape[2])
        h_init = np.asarray(h_init, np.float32).reshape(-1)
        l_init = np.asarray(l_init, np.float32).reshape(-1)
        if self.positions != total_len or self.hidden != h_init.size or l_init.size != h_init.size:
            raise EngineError(f"{self.loaded.path}: the engine's carry is [B, {self.positions}, {self.hidden}], the "
                              f"bundle's is [B, {total_len}, {h_init.size}]; build the engine from this bundle")
        if zshape[0] == -1:
            lo, _, hi = eng.get_tensor_profile_shape("z_H", 0)
            self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        else:
            self.min_batch = self.max_batch = int(zshape[0])
        self.context = eng.create_execution_context()
        if self.context is None:
            raise EngineError(f"{self.loaded.path}: could not create an execution context (out of GPU memory?)")
        self.use_cuda_graph = use_cuda_graph
        self._stream = cuda_call(self._rt.cudaStreamCreate())
        self._stream_handle = int(self._stream)  # TensorRT takes the cudaStream_t as an integer handle
        bmax = self.max_batch
        self._row_bytes = {
            "tokens": self.seq_len * self.dtypes["tokens"].itemsize,
            "puzzle_ids": self.dtypes["puzzle_ids"].itemsize,
            "carry": self.positions * self.hidden * self.dtypes["z_H"].itemsize,
            "logits": self.seq_len * self.vocab * self.dtypes["logits"].itemsize,
        }
        if self.dtypes["z_H"] != self.dtypes["z_H_out"] or self.dtypes["z_L"] != self.dtypes["z_H"]:
            raise EngineError(f"{self.loaded.path}: carry input and output types differ ({self.dtypes['z_H']} vs "
                              f"{self.dtypes['z_H_out']}); the ping-pong carry needs one type")
        alloc = self._alloc
        self._tokens = alloc(bmax * self._row_bytes["tokens"])
        self._pids = alloc(bmax * self._row_bytes["puzzle_ids"])
        self._zH = [alloc(bmax * self._row_bytes["carry"]) for _ in range(2)]
        self._zL = [alloc(bmax * self._row_bytes["carry"]) for _ in range(2)]
        self._logits_dev = alloc(bmax * self._row_bytes["logits"])
        self._qh_dev = alloc(bmax * self.dtypes["q_halt"].itemsize)
        self._qc_dev = alloc(bmax * self.dtypes["q_continue"].itemsize)
        carry_t = self.dtypes["z_H"]
        self._init_rows = []
        for row in (h_init, l_init):  # one initial row [P, D] per carry, kept on the device
            host = np.ascontiguousarray(np.broadcast_to(row.astype(carry_t), (self.positions, self.hidden)))
            buf = alloc(host.nbytes)
            self._copy(buf.ptr, host.ctypes.data, host.nbytes, "HostToDevice", sync=True)
            self._init_rows.append(buf)
        self._qh_host = self._pin(bmax, self.dtypes["q_halt"])
        self._qc_host = self._pin(bmax, self.dtypes["q_continue"])
        self._logits_host = self._pin(bmax * self.seq_len * self.vocab, self.dtypes["logits"])
        self._batch = 0
        self._parity = 0  # carry is in buffer set `parity`; the next segment writes 1 - parity
        self._logits_fresh = False  # device logits hold the last segment's
        self._logits_on_host = False

    # memory

    def _alloc(self, nbytes: int) -> _DeviceBuffer:
        buf = _DeviceBuffer(nbytes)
        self._buffers.append(buf)
        return buf

    def _pin(self, count: int, dtype: np.dtype) -> _PinnedArray:
        arr = _PinnedArray(count, dtype)
        self._pinned.append(arr)
        return arr

    def _copy(self, dst: int, src: int, nbytes: int, kind: str, sync: bool = False) -> None:
        if nbytes <= 0:
            return
        rt = self._rt
        cuda_call(rt.cudaMemcpyAsync(dst, src, nbytes, getattr(rt.cudaMemcpyKind, f"cudaMemcpy{kind}"),
                                     self._stream))
        if sync:
            self.synchronize()

    def synchronize(self) -> None:
        cuda_call(self._rt.cudaStreamSynchronize(self._stream))

    def close(self) -> None:
        """Free device and pinned memory, CUDA graphs and the stream."""
        if self._stream is not None:
            with contextlib.suppress(HrmEdgeError):
                self.synchronize()
        self._drop_graphs()
        for buf in self._buffers:
            buf.free()
        for arr in self._pinned:
            arr.free()
        self._buffers, self._pinned = [], []
        if self._stream is not None:
            cuda_call(self._rt.cudaStreamDestroy(self._stream))
            self._stream = None

    def __enter__(self) -> TrtSegmentRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # shapes and bindings

    def _set_batch(self, batch: int) -> None:
        if not self.min_batch <= batch <= self.max_batch:
            raise EngineError(f"{self.loaded.path}: batch {batch} is outside the engine's profile "
                              f"{self.min_batch}..{self.max_batch}; use a batch size <= {self.max_batch} or rebuild "
                              "with a larger --batch")
        if batch != self._batch:
            self._drop_graphs()
        ctx = self.context
        shapes = {"tokens": (batch, self.seq_len), "puzzle_ids": (batch,),
                  "z_H": (batch, self.positions, self.hidden), "z_L": (batch, self.positions, self.hidden)}
        for name, shape in shapes.items():
            if not ctx.set_input_shape(name, shape):
                raise EngineError(f"{self.loaded.path}: TensorRT rejected input shape {name}{list(shape)}")
        self._batch = batch

    def _bind(self, parity: int) -> None:
        ctx, src, dst = self.context, parity, 1 - parity
        addresses = {"tokens": self._tokens.ptr, "puzzle_ids": self._pids.ptr,
                     "z_H": self._zH[src].ptr, "z_L": self._zL[src].ptr,
                     "z_H_out": self._zH[dst].ptr, "z_L_out": self._zL[dst].ptr,
                     "logits": self._logits_dev.ptr, "q_halt": self._qh_dev.ptr, "q_continue": self._qc_dev.ptr}
        for name, ptr in addresses.items():
            if not ctx.set_tensor_address(name, ptr):
                raise EngineError(f"{self.loaded.path}: TensorRT rejected the address of {name}")

    def _drop_graphs(self) -> None:
        for graph, exec_graph in self._graphs.values():
            cuda_call(self._rt.cudaGraphExecDestroy(exec_graph))
            cuda_call(self._rt.cudaGraphDestroy(graph))
        self._graphs = {}

    def _capture(self, parity: int) -> tuple[Any, Any] | None:
        """Capture one segment (bindings of `parity`) as a CUDA graph; None if capture is not possible."""
        rt = self._rt
        # One ordinary launch first lets TensorRT finish shape-dependent setup outside the capture;
        # it reads the carry set `parity` and writes the other one, so repeating it is harmless.
        if not self.context.execute_async_v3(self._stream_handle):
            raise EngineError(f"{self.loaded.path}: execute_async_v3 failed")
        graph = None
        try:
            cuda_call(rt.cudaStreamBeginCapture(self._stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
            try:
                ok = self.context.execute_async_v3(self._stream_handle)
            finally:
                graph = cuda_call(rt.cudaStreamEndCapture(self._stream))
            if not ok:
                raise CudaError("execute_async_v3 failed while capturing")
            return graph, cuda_call(rt.cudaGraphInstantiate(graph, 0))
        except HrmEdgeError as exc:
            if graph is not None:
                with contextlib.suppress(HrmEdgeError):
                    cuda_call(rt.cudaGraphDestroy(graph))
            warnings.warn(f"TensorRT could not run this engine inside a CUDA graph capture ({exc}); running "
                          "without CUDA graphs", RuntimeWarning, stacklevel=3)
            self.use_cuda_graph = False
            return None

    # SegmentRunner

    def _write_rows(self, first: int, tokens: np.ndarray, puzzle_ids: np.ndarray) -> int:
        """Copy n new rows' inputs to rows first..first+n-1 and give them the initial carry in the
        current carry set; returns n. The caller synchronizes before the host arrays go."""
        tokens = np.ascontiguousarray(tokens, dtype=self.dtypes["tokens"])
        puzzle_ids = np.ascontiguousarray(puzzle_ids, dtype=self.dtypes["puzzle_ids"])
        if tokens.ndim != 2 or tokens.shape[1] != self.seq_len or puzzle_ids.shape != (tokens.shape[0],):
            raise ValueError(f"tokens must be [B, {self.seq_len}] and puzzle_ids [B]; got {tokens.shape} and "
                             f"{puzzle_ids.shape}")
        count = tokens.shape[0]
        self._set_batch(first + count)
        self._copy(self._tokens.ptr + first * self._row_bytes["tokens"], tokens.ctypes.data, tokens.nbytes,
                   "HostToDevice")
        self._copy(self._pids.ptr + first * self._row_bytes["puzzle_ids"], puzzle_ids.ctypes.data,
                   puzzle_ids.nbytes, "HostToDevice")
        row = self._row_bytes["carry"]
        carry = self._parity
        for init, buf in ((self._init_rows[0], self._zH[carry]), (self._init_rows[1], self._zL[carry])):
            # Fill `count` rows from the initial row by doubling: 1, 2, 4, ... rows per copy.
            dest = buf.ptr + first * row
            self._copy(dest, init.ptr, row, "DeviceToDevice")
            filled = 1
            while filled < count:
                n = min(filled, count - filled)
                self._copy(dest + filled * row, dest, n * row, "DeviceToDevice")
                filled += n
        self.synchronize()  # the host arrays above must outlive their copies
        return count

    def start(self, tokens: np.ndarray, puzzle_ids: np.ndarray) -> None:
        self._parity = 0
        self._write_rows(0, tokens, puzzle_ids)
        self._logits_fresh = self._logits_on_host = False

    def admit(self, tokens: np.ndarray, puzzle_ids: np.ndarray) -> None:
        """Append rows with the initial carry after the active ones (`hrm_edge.act.SegmentRunner.admit`);
        their logits are undefined until the next `step`."""
        if self._batch == 0:
            raise RuntimeError("admit() before start()")
        self._write_rows(self._batch, tokens, puzzle_ids)
        self._logits_on_host = False

    def step(self) -> tuple[np.ndarray, np.ndarray]:
        if self._batch == 0:
            raise RuntimeError("step() before start()")
        parity, batch = self._parity, self._batch
        self._bind(parity)
        launched = False
        if self.use_cuda_graph:
            if parity not in self._graphs:
                captured = self._capture(parity)
                if captured is not None:
                    self._graphs[parity] = captured
            if parity in self._graphs:
                cuda_call(self._rt.cudaGraphLaunch(self._graphs[parity][1], self._stream))
                launched = True
        if not launched and not self.context.execute_async_v3(self._stream_handle):
            raise EngineError(f"{self.loaded.path}: execute_async_v3 failed")
        qh, qc = self._qh_host, self._qc_host
        self._copy(qh.ptr, self._qh_dev.ptr, batch * qh.dtype.itemsize, "DeviceToHost")
        self._copy(qc.ptr, self._qc_dev.ptr, batch * qc.dtype.itemsize, "DeviceToHost")
        self.synchronize()
        self._parity = 1 - parity
        self._logits_fresh, self._logits_on_host = True, False
        return qh.array[:batch].astype(np.float32), qc.array[:batch].astype(np.float32)

    def _host_logits(self) -> np.ndarray:
        if not self._logits_fresh:
            raise RuntimeError("no logits yet: call step() first")
        n = self._batch * self.seq_len * self.vocab
        if not self._logits_on_host:
            self._copy(self._logits_host.ptr, self._logits_dev.ptr, n * self._logits_host.dtype.itemsize,
                       "DeviceToHost", sync=True)
            self._logits_on_host = True
        return self._logits_host.array[:n].reshape(self._batch, self.seq_len, self.vocab)

    def predictions(self, rows: np.ndarray) -> np.ndarray:
        return self._host_logits()[np.asarray(rows, np.int64)].argmax(-1).astype(np.int64)

    def logits(self, rows: np.ndarray) -> np.ndarray:
        return self._host_logits()[np.asarray(rows, np.int64)].astype(np.float32)

    def keep(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, np.int64)
        if rows.ndim != 1 or (rows.size and (rows[0] < 0 or rows[-1] >= self._batch or np.any(np.diff(rows) <= 0))):
            raise ValueError(f"keep(rows): rows must be sorted unique indices below {self._batch}")
        if rows.size == self._batch:
            return
        if rows.size == 0:
            self._batch = 0
            self._drop_graphs()
            return
        carry = self._parity
        per_row = [(self._tokens, self._row_bytes["tokens"]), (self._pids, self._row_bytes["puzzle_ids"]),
                   (self._zH[carry], self._row_bytes["carry"]), (self._zL[carry], self._row_bytes["carry"])]
        if self._logits_fresh:
            per_row.append((self._logits_dev, self._row_bytes["logits"]))
        for dst, src, n in compaction_copies(rows):
            for buf, row in per_row:
                self._copy(buf.ptr + dst * row, buf.ptr + src * row, n * row, "DeviceToDevice")
        if self._logits_on_host:
            old = self._host_logits().copy()
            self._logits_host.array[: rows.size * self.seq_len * self.vocab] = old[rows].reshape(-1)
        self._set_batch(int(rows.size))
        self.synchronize()


def compaction_copies(rows: np.ndarray) -> list[tuple[int, int, int]]:
    """Row copies (dst, src, count) that move `rows` (sorted, unique) to the front in place, in order.
    Runs of consecutive rows become one copy; a run is split so that no copy overlaps itself (CUDA
    copies have memcpy, not memmove, semantics). Earlier copies never overwrite later sources."""
    copies: list[tuple[int, int, int]] = []
    i, n = 0, len(rows)
    while i < n:
        j = i
        while j + 1 < n and rows[j + 1] == rows[j] + 1:
            j += 1
        dst, src, count = i, int(rows[i]), j - i + 1
        gap = src - dst
        if gap > 0:
            while count > 0:
                chunk = min(count, gap)
                copies.append((dst, src, chunk))
                dst, src, count = dst + chunk, src + chunk, count - chunk
        i = j + 1
    return copies

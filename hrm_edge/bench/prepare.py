"""The models under test and their graphs: the standard suite's checkpoints, bundles given as
models, and the graphs each runtime configuration needs, exported once per checkpoint (sha256)
into the cache, with their one-segment parity against the standard graph."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hrm_edge.bench import REPO, log
from hrm_edge.errors import HrmEdgeError

# The demo checkpoint of `make bench`. HRM_EDGE_DEMO_CKPT names another one instead (e.g. a run
# still training: a checkpoint outside the repository is snapshotted into the cache first).
DEMO_CHECKPOINT = REPO / "checkpoints" / "sudoku6-demo" / "model.pt"
TRM_DEMO = REPO / "checkpoints" / "trm-sudoku6-demo" / "model.pt"  # the TRM row beside the HRM demo
BIG_PRESET = "sudoku-27m"
PREP_VERSION = 6  # bump when the cached graphs change (new graphs under new keys need no bump)


@dataclasses.dataclass
class Model:
    """One model under test and its prepared graphs."""

    name: str
    checkpoint: Path
    config: Any
    task: str
    trained: bool
    graphs: dict[str, str]  # role -> path
    prep: dict[str, Any]

    @property
    def max_steps(self) -> int:
        return int(self.config.halt_max_steps)


def _sha256(path: Path) -> str:
    from hrm_edge.bundle import sha256_file

    return sha256_file(path)


def resolve_standard_models(cache: Path) -> list[Path]:
    """The standard suite: the Sudoku demo checkpoint (a snapshot), the TRM demo trained on the same
    data (when shipped), and a seeded 27M model."""
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    env = os.environ.get("HRM_EDGE_DEMO_CKPT")
    demo = next((p for p in (Path(env) if env else DEMO_CHECKPOINT,) if p.is_file()), None)
    if demo is None:
        log("bench: no demo checkpoint (checkpoints/sudoku6-demo/model.pt); skipping it")
    elif demo.is_relative_to(REPO):
        out.append(demo)
    else:  # a checkpoint still being trained: freeze the current state for this run
        snap = cache / "sudoku6-demo-snapshot.pt"
        shutil.copyfile(demo, snap)
        out.append(snap)
    if TRM_DEMO.is_file() and not env:
        out.append(TRM_DEMO)
    big = cache / f"{BIG_PRESET}-seed0.pt"
    if not big.is_file():
        log(f"bench: writing seeded {BIG_PRESET} weights to {big}")
        import torch

        from hrm_edge.model import create_model
        from hrm_edge.model.checkpoint import guess_task, save_checkpoint
        from hrm_edge.model.config import preset_config

        config = preset_config(BIG_PRESET)
        torch.manual_seed(0)
        save_checkpoint(big, create_model(config), guess_task(config.seq_len, config.vocab_size),
                        provenance={"init": BIG_PRESET, "seed": 0},
                        card={"weights": "random (seed 0); untrained, for speed tests only"})
    out.append(big)
    return out


@dataclasses.dataclass(frozen=True)
class ShippedInt8:
    """A bundle's INT8 segment graphs: `cpu` (dynamic, ONNX Runtime's rows), `cpu_fused` (that graph fused
    for ORT's CPU EP at export, `segment.int8-cpufused`) and `static` (the tensorrt flavour's static Q/DQ
    graph, OpenVINO's INT8 form: `hrm_edge.runtimes.solver.default_graph`)."""

    cpu: Path | None = None
    static: Path | None = None
    cpu_fused: Path | None = None


def resolve_model_arg(path: Path) -> tuple[Path, ShippedInt8]:
    """(checkpoint, the INT8 graphs shipped beside it) for a checkpoint file or a bundle directory."""
    if not path.is_dir():
        return path, ShippedInt8()
    from hrm_edge.bundle import open_bundle

    b = open_bundle(path, verify_hashes=False)
    src = b.manifest.source_checkpoint.path if b.manifest.source_checkpoint else None
    if not src or not Path(src).is_file():
        raise HrmEdgeError(f"{path}: the bundle's source checkpoint {src!r} is not on this machine; pass the "
                           "checkpoint and --int8-graph <bundle>/segment.int8-cpu.onnx instead")
    def shipped(name: str) -> Path | None:
        return b.graph_path(name) if name in b.graphs else None

    return Path(src).resolve(), ShippedInt8(shipped("segment.int8-cpu"), shipped("segment.int8-tensorrt"),
                                            shipped("segment.int8-cpufused"))


def _parity(a: str, b: str, x_feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """Max-abs output differences of two graphs on the same feeds (one segment)."""
    from hrm_edge.runtimes.ort.loader import make_session

    sa, sb = make_session(a, threads=1), make_session(b, threads=1)
    names = [o.name for o in sa.get_outputs()]
    oa, ob = sa.run(names, x_feeds), sb.run(names, x_feeds)
    return {n: float(np.abs(u.astype(np.float64) - v.astype(np.float64)).max()) for n, u, v in zip(names, oa, ob,
                                                                                                   strict=True)}


def prepare_model(path: Path, cache: Path, unroll: int, shipped: ShippedInt8, need: set[str],
                  log: Callable[[str], None] = log) -> Model:
    """Export (once per checkpoint sha256) the graphs the runtimes in `need` use; `shipped`: the INT8
    graphs of the bundle given (else the bench quantizes the graphs itself, for speed rows)."""
    from hrm_edge.model.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    sha = _sha256(path)
    cfg = ck.config
    trained = "untrained" not in json.dumps(ck.card or {}) and "init" not in (ck.provenance or {})
    stem = path.stem if path.stem not in ("model", "checkpoint") else path.parent.name
    name = f"{stem}"
    work = cache / f"{stem}-{sha[:12]}-p{PREP_VERSION}-k{unroll}"
    work.mkdir(parents=True, exist_ok=True)
    prep_file = work / "prep.json"
    prep: dict[str, Any] = json.loads(prep_file.read_text()) if prep_file.is_file() else {}
    prep.setdefault("sha256", sha)
    prep.setdefault("seconds", {})
    g = {k: str(work / v) for k, v in {
        "seg": "segment.fp32.onnx", "segx": "segment-x.fp32.onnx", "embed": "embed.fp32.onnx",
        "carry": "carry_init.npz", "fused": "segment-x.fp32-cpufused.onnx",
        "unrolled_fused": f"unrolled{unroll}-x.fp32-cpufused.onnx", "loop_fused": "act_loop.fp32-cpufused.onnx",
        "int8": "segment-x.int8-cpufused.onnx", "int8_qf": "segment-x.int8-quantized-then-fused.onnx",
        "int8_std": "segment-x.int8-standard.onnx",
        "unrolled_int8": f"unrolled{unroll}-x.int8-cpufused.onnx", "loop_int8": "act_loop.int8-cpufused.onnx",
        "int8_static": "segment.int8-static.onnx",
    }.items()}
    int8_graph = shipped.cpu

    def step(key: str, fn: Callable[[], Any]) -> None:
        if Path(g[key]).is_file():
            return
        t0 = time.perf_counter()
        log(f"  {name}: building {Path(g[key]).name} ...")
        info = fn()
        prep["seconds"][key] = round(time.perf_counter() - t0, 2)
        if info is not None:
            prep.setdefault("fuse", {})[key] = info
        prep_file.write_text(json.dumps(prep, indent=2))

    from hrm_edge.export import graphs
    from hrm_edge.export.fuse import fuse_graph, fuse_model

    model = ck.model.float().eval()
    wants = {r.split("/")[0] for r in need}

    def save_carry() -> None:
        carry = graphs.export_initial_carry(model)
        np.savez(g["carry"], H_init=carry["H_init"], L_init=carry["L_init"])

    step("carry", save_carry)
    openvino = {w for w in wants if w.startswith("openvino-")}
    if "ort-fp32" in wants or openvino:
        step("seg", lambda: graphs.export_segment(model, g["seg"]) and None)
    ort_x = any(w.startswith("ort-") and w != "ort-fp32" for w in wants)
    if ort_x:
        step("segx", lambda: graphs.export_segment(model, g["segx"], embed_inside=False) and None)
        step("embed", lambda: graphs.export_embed(model, g["embed"]) and None)
        step("fused", lambda: fuse_graph(g["segx"], g["fused"]).to_dict())
    import onnx

    def fuse_to(proto: onnx.ModelProto, dst: str) -> dict[str, Any]:
        fused, report = fuse_model(proto)
        onnx.save(fused, dst)
        return report.to_dict()

    def carry() -> tuple[np.ndarray, np.ndarray]:
        c = np.load(g["carry"])
        return c["H_init"], c["L_init"]

    fp32_variants = {r.split("/")[1] for r in need if r.startswith("ort-fp32-cpufused/")}
    int8_variants = {r.split("/")[1] for r in need if r.startswith("ort-int8/")}
    if any(v.startswith("unrolled") for v in fp32_variants):
        step("unrolled_fused", lambda: fuse_to(graphs.compose_unrolled(g["segx"], unroll), g["unrolled_fused"]))
    if "loop" in fp32_variants:
        step("loop_fused", lambda: fuse_to(graphs.compose_act_loop(g["segx"], *carry(), embed=g["embed"]),
                                           g["loop_fused"]))
    from hrm_edge.quant.quantize import quantize_graph, settings_for

    cpu_dynamic = settings_for("cpu", "dynamic")  # the product's INT8 CPU mode: u8 x s8 per channel, MatMul
    fallback = ("bench fallback: the product's CPU dynamic INT8 mode (u8 activations, s8 per-channel weights, "
                "MatMul only) of the fused graph (fuse, then quantize)")
    if int8_graph is not None:
        g["int8_shipped"] = str(int8_graph)
        prep["int8_shipped_source"] = str(int8_graph)
    if "ort-int8" in wants:
        if shipped.cpu_fused is not None:
            g["int8"] = str(shipped.cpu_fused)
            prep["int8_source"] = f"{shipped.cpu_fused} (the bundle's fused INT8 CPU graph, the one `solve` runs)"
        elif int8_graph is not None:
            g["int8"] = str(work / f"int8-shipped-{_sha256(int8_graph)[:12]}.cpufused.onnx")
            step("int8", lambda: fuse_graph(int8_graph, g["int8"]).to_dict())
            prep["int8_source"] = f"{int8_graph} (the quantizer's graph), fused after quantization"
        else:
            step("int8", lambda: quantize_graph(g["fused"], g["int8"], cpu_dynamic) and None)
            prep["int8_source"] = fallback
    if "ort-int8-qf" in wants or int8_variants:
        def quantize_standard() -> None:
            folded, _ = fuse_model(onnx.load(g["segx"]), rmsnorm=False, attention=False, split_projections=False)
            onnx.save(folded, g["int8_std"])
            quantize_graph(g["int8_std"], g["int8_std"], cpu_dynamic)

        step("int8_std", quantize_standard)  # standard ops only: composable into unrolled/Loop graphs
        prep["int8_variants_source"] = ("bench fallback: the CPU dynamic INT8 mode on the standard x graph (weight "
                                        "transposes folded), composed into the unrolled/Loop graph, then fused")
    if "ort-int8-qf" in wants:
        step("int8_qf", lambda: fuse_graph(g["int8_std"], g["int8_qf"]).to_dict())
    if any(v.startswith("unrolled") for v in int8_variants):
        step("unrolled_int8", lambda: fuse_to(graphs.compose_unrolled(g["int8_std"], unroll), g["unrolled_int8"]))
    if "loop" in int8_variants:
        step("loop_int8", lambda: fuse_to(graphs.compose_act_loop(g["int8_std"], *carry(), embed=g["embed"]),
                                          g["loop_int8"]))
    if "openvino-int8" in wants:  # OpenVINO's INT8 form is the static Q/DQ graph (a dynamic one runs at ~1x fp32)
        if shipped.static is not None:
            g["int8_openvino"] = str(shipped.static)
            prep["int8_openvino_source"] = f"{shipped.static} (the quantizer's static graph, tensorrt flavour)"
        else:
            g["int8_openvino"] = g["int8_static"]
            step("int8_static", lambda: _static_int8_graph(ck, model, g["seg"], g["int8_static"], trained, work))
            prep["int8_openvino_source"] = (
                "bench fallback: hrm-edge's static INT8 (tensorrt flavour: s8 activations, per-channel s8 weights) of "
                f"the standard graph, every site int8, MinMax over {NNCF_CALIB_PUZZLES[trained]} calibration puzzles' "
                "ACT steps (no SmoothQuant, GPTQ or search: speed rows; export --int8 gates what ships)")
    if "openvino-int8-nncf" in wants:
        g["int8_nncf"] = str(work / "segment.int8-nncf.onnx")
        step("int8_nncf", lambda: _nncf_graph(ck, model, g["seg"], g["int8_nncf"], trained))
    if "solve-bundle" in wants:
        g["bundle"] = str(work / "bundle")
        step("bundle", lambda: _export_bundle(ck, Path(g["bundle"])))
    if ort_x and "parity" not in prep:
        x = _parity_inputs(model, ck)
        prep["parity"] = {"fused_vs_standard": _parity(g["segx"], g["fused"], x)}
        for key in ("int8", "int8_qf"):
            if Path(g[key]).is_file() and takes_x(g[key]):
                prep["parity"][f"{key}_vs_standard"] = _parity(g["segx"], g[key], x)
        prep_file.write_text(json.dumps(prep, indent=2))
    return Model(name=name, checkpoint=path, config=cfg, task=ck.task, trained=trained, graphs=g, prep=prep)


def _export_bundle(ck: Any, out: Path) -> dict[str, Any]:
    """The bundle `hrm-edge export CKPT` writes by default (fp32 graphs, the fused CPU graph; no fp16,
    which no CPU row runs), golden outputs of 8 validation puzzles."""
    from hrm_edge.export.bundle_writer import GraphSpec, write_bundle

    specs = [GraphSpec("segment", "fp32"), GraphSpec("segment", "fp32", cpu_fused=True)]
    write_bundle(ck, out, specs, puzzle_set(ck.task, 8), force=True, log=lambda m: None)
    return {"graphs": sorted(p.name for p in out.glob("*.onnx"))}


# Calibration puzzles of the bench's NNCF and static INT8 graphs (the ACT rollout feeds every step):
# trained models, and untrained ones (speed rows only: their ranges do not matter, the PyTorch rollout
# of 27M does).
NNCF_CALIB_PUZZLES = {True: 128, False: 16}


def _calib_puzzles(task: str, trained: bool) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, puzzle_ids) of the first `NNCF_CALIB_PUZZLES[trained]` calibration puzzles of `task`."""
    from hrm_edge.puzzles.datasets import load_puzzle_set

    pset = load_puzzle_set(puzzle_dir(task), split="calib")
    n = NNCF_CALIB_PUZZLES[trained]
    return pset.inputs[:n], pset.puzzle_ids[:n]


def _nncf_graph(ck: Any, model: Any, fp32: str, out: str, trained: bool) -> dict[str, Any]:
    """NNCF INT8 of the portable fp32 graph on hrm-edge's ACT-aware calibration samples."""
    from hrm_edge.quant.openvino_nncf import nncf_int8_graph

    return nncf_int8_graph(fp32, model, *_calib_puzzles(ck.task, trained), out)


def _static_int8_graph(ck: Any, model: Any, fp32: str, out: str, trained: bool, work: Path) -> dict[str, Any]:
    """hrm-edge's static INT8 graph (tensorrt flavour, all sites) of the portable fp32 graph, calibrated
    on the ACT steps of the same puzzles as the NNCF row (`NNCF_CALIB_PUZZLES`)."""
    import onnx

    from hrm_edge.contract import SEGMENT_INPUTS
    from hrm_edge.quant.calibration import ActCalibrationReader, calibrate
    from hrm_edge.quant.quantize import WEIGHT_OPS, fold_weight_transposes, quantize_graph, settings_for

    proto = onnx.load(fp32)
    folded = fold_weight_transposes(proto)
    prepared = work / "segment.fp32.prepared.onnx"
    onnx.save(proto, str(prepared))
    tokens, puzzle_ids = _calib_puzzles(ck.task, trained)
    reader = ActCalibrationReader(model, tokens, puzzle_ids, input_names=SEGMENT_INPUTS, batch_size=16)
    cal = calibrate(prepared, reader, "minmax", op_types=list(WEIGHT_OPS), cache_dir=work / "calibration",
                    progress=False)
    quantize_graph(prepared, out, settings_for("tensorrt"), cal.ranges_path)
    prepared.unlink()
    return {"transposes_folded": folded, "calibration_puzzles": len(tokens),
            "calibration_seconds": round(cal.seconds, 1)}


def takes_x(path: str) -> bool:
    import onnx

    return onnx.load(path, load_external_data=False).graph.input[0].name == "x"


def _parity_inputs(model: Any, ck: Any) -> dict[str, np.ndarray]:
    import torch

    pset = puzzle_set(ck.task, 2)
    with torch.no_grad():
        x = model.embed(torch.from_numpy(pset.inputs), torch.from_numpy(pset.puzzle_ids)).float()
        z_h, z_l = model.initial_carry(len(pset.inputs))
    return {"x": x.numpy(), "z_H": z_h.float().numpy(), "z_L": z_l.float().numpy()}


def puzzle_dir(task: str) -> Path:
    from hrm_edge.puzzles.datasets import calib_data_dir

    return calib_data_dir(task)


def puzzle_set(task: str, limit: int | None) -> Any:
    from hrm_edge.puzzles.datasets import load_puzzle_set

    pset = load_puzzle_set(puzzle_dir(task), split="val")
    if limit:
        pset.inputs, pset.puzzle_ids = pset.inputs[:limit], pset.puzzle_ids[:limit]
        pset.labels = None if pset.labels is None else pset.labels[:limit]
    return pset

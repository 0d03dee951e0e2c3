"""Fixtures shared by the INT8 test modules."""

from __future__ import annotations

import pytest
import torch

DEMO = "checkpoints/sudoku6-demo/model.pt"


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """The trained HRM 6x6 demo, its calibration puzzles, its Int8Pipeline on the first 64 of them (the
    lines it logged) and its all-int8 graphs of both flavours (no search), each also with per-row
    activation scales ("cpu-row", "tensorrt-row"). Built with one torch thread."""
    from hrm_edge.export.graphs import export_segment
    from hrm_edge.model.checkpoint import load_checkpoint
    from hrm_edge.puzzles.datasets import calib_data_dir, load_puzzle_set
    from hrm_edge.quant.quantize import Int8Config, Int8Pipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("fq")
        ck = load_checkpoint(DEMO)
        calib = load_puzzle_set(calib_data_dir(ck.task), split="calib")
        model = ck.model.set_compute_dtype("float32").eval()
        export_segment(model, root / "segment.fp32.onnx")
        logs: list[str] = []
        pipe = Int8Pipeline(root / "segment.fp32.onnx", ck, calib, root / "work",
                            Int8Config(calib_size=64, cache_dir=root / "cache", gptq=True, threads=1), progress=False,
                            log=logs.append, targets=("cpu", "tensorrt"))
        graphs = {t: pipe.build(t, root / f"int8-{t}.onnx", search=False).path for t in ("cpu", "tensorrt")}
        graphs["cpu-row"] = pipe.build("cpu", root / "int8-cpu-row.onnx", search=False, activation_scale="row").path
        graphs["tensorrt-row"] = pipe.build("tensorrt", root / "int8-tensorrt-row.onnx", search=False,
                                            activation_scale="row").path
    finally:
        torch.set_num_threads(threads)
    return {"model": model, "calib": calib, "fp32": pipe.fp32, "graphs": graphs, "pipe": pipe, "logs": logs,
            "root": root, "h_init": model.inner.H_init.numpy(), "l_init": model.inner.L_init.numpy()}

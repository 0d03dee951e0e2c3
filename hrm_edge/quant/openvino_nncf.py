"""INT8 segment graphs for OpenVINO by NNCF post-training quantization, driven by hrm-edge's own
ACT-aware calibration data (`hrm_edge.quant.calibration.ActCalibrationReader`).

`nncf_int8_graph(fp32_graph, model, tokens, puzzle_ids, out)`:
1. `fold_weight_transposes` (the exporter leaves `Transpose(W)` before every Linear; NNCF leaves such
   weights in fp32, so the MatMuls would stay float);
2. the calibration samples: the segment inputs of every ACT step the reference reaches, weighted by
   how many puzzles still run there (the same reader `hrm-edge export --int8` uses);
3. `nncf.quantize` (ONNX backend, transformer preset: SmoothQuant, attention matmuls and norms left
   alone) writes a QDQ ONNX graph, which OpenVINO compiles to int8 kernels.
The graph is then gated like every INT8 graph (`hrm-edge parity --runtime openvino --precision int8`).
This module uses the `onnx` package and, through the reader, the PyTorch reference (export side).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from hrm_edge.contract import SEGMENT_INPUTS
from hrm_edge.quant.calibration import ActCalibrationReader
from hrm_edge.quant.quantize import fold_weight_transposes


def calibration_items(model: Any, tokens: np.ndarray, puzzle_ids: np.ndarray, input_names: tuple[str, ...],
                      policy: str = "q", batch_size: int = 16) -> list[dict[str, np.ndarray]]:
    """Graph feeds for calibration: one dict per batch of `batch_size` samples of one ACT step."""
    reader = ActCalibrationReader(model, tokens, puzzle_ids, policy=policy, batch_size=batch_size,
                                  input_names=input_names)
    return [feeds for _, feeds in reader.batches()]


def nncf_int8_graph(fp32_graph: str | Path, model: Any, tokens: np.ndarray, puzzle_ids: np.ndarray,
                    out: str | Path, subset_size: int = 300, policy: str = "q") -> dict[str, Any]:
    """Write the NNCF INT8 graph of `fp32_graph` (a segment graph) to `out`; returns facts for a report:
    transposes folded, calibration batches, QuantizeLinear nodes, seconds."""
    import nncf

    t0 = time.perf_counter()
    proto = onnx.load(str(fp32_graph))
    folded = fold_weight_transposes(proto)
    names = tuple(i.name for i in proto.graph.input)
    items = calibration_items(model, tokens, puzzle_ids, names if set(names) != set(SEGMENT_INPUTS)
                              else SEGMENT_INPUTS, policy)
    quantized = nncf.quantize(proto, nncf.Dataset(items), subset_size=min(subset_size, len(items)),
                              model_type=nncf.ModelType.TRANSFORMER)
    onnx.save(quantized, str(out))
    q_nodes = sum(n.op_type == "QuantizeLinear" for n in quantized.graph.node)
    return {"transposes_folded": folded, "calibration_batches": len(items), "quantize_nodes": q_nodes,
            "subset_size": min(subset_size, len(items)), "seconds": round(time.perf_counter() - t0, 1)}

"""The repository's segment model on Triton's Python backend (`hrm-edge triton-repo --segment-backend
python`): one ACT segment (model.onnx beside this model's model.py) run by ONNX Runtime inside the
backend's stub process, for a Triton server that has no onnxruntime backend (the one in the
nvidia-pytriton wheel). Inputs and outputs are those of the onnxruntime-backend segment model, so the
solver model's BLS calls cannot tell them apart. Runs inside Triton only (`triton_python_backend_utils`).

Config parameter `threads` (string): ONNX Runtime intra-op threads (empty: physical cores).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hrm_edge.contract import SEGMENT_INPUTS, SEGMENT_OUTPUTS
from hrm_edge.runtimes.ort.loader import make_session

SEGMENT_ONNX = "model.onnx"


def config_parameters(model_config: str) -> dict[str, str]:
    """The string parameters of a model's config (Triton passes the config as JSON)."""
    params = json.loads(model_config).get("parameters", {})
    return {key: value.get("string_value", "") for key, value in params.items()}


def _threads(params: dict[str, str]) -> int | None:
    text = params.get("threads", "").strip()
    return int(text) if text else None


def as_rank(a: np.ndarray, rank: int) -> np.ndarray:
    """`a` with trailing size-1 axes dropped down to `rank` (a per-row scalar arrives as [n] or as
    [n, 1], the config's dims before its reshape)."""
    while a.ndim > rank and a.shape[-1] == 1:
        a = a.reshape(a.shape[:-1])
    return a


class TritonPythonModel:
    """Triton's Python-backend entry points: each request is one batch of n rows, run as one ORT call."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb

        self.pb = pb
        here = Path(args["model_repository"]) / args["model_version"]
        self.session = make_session(here / SEGMENT_ONNX, threads=_threads(config_parameters(args["model_config"])))
        self.ranks = {i.name: len(i.shape) for i in self.session.get_inputs()}

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self.pb
        responses = []
        for request in requests:
            try:
                feeds = {name: as_rank(pb.get_input_tensor_by_name(request, name).as_numpy(), self.ranks[name])
                         for name in SEGMENT_INPUTS}
                outs = self.session.run(list(SEGMENT_OUTPUTS), feeds)
            except Exception as exc:
                responses.append(pb.InferenceResponse(output_tensors=[], error=pb.TritonError(str(exc))))
                continue
            responses.append(pb.InferenceResponse(
                output_tensors=[pb.Tensor(n, np.ascontiguousarray(a)) for n, a in zip(SEGMENT_OUTPUTS, outs,
                                                                                     strict=True)]))
        return responses

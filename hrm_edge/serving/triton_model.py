"""The Triton Python-backend solver model of the repository (`hrm_edge.serving.triton_repo`): one
`SolverService` (the continuous ACT loop shared with `hrm-edge serve`) whose segments are BLS calls
to the segment model, or, in the in-solver variant, run in this model's process on its copy of the
bundle (`hrm_edge.serving.local`). Each request's puzzles share the loop's slots; requests do not: Triton
runs one `execute` at a time per instance of a Python model that is not decoupled, even a coroutine, and
hands it one request (its statistics under 8 clients: 1 request per execution, ~110 ms mean queueing;
bench/latest/session10-iterative/). The iterative variant (`hrm_edge.serving.triton_iterative`) is the
one whose segments mix the puzzles of concurrent requests. Runs inside Triton only
(`triton_python_backend_utils`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hrm_edge.bundle import remap_ids
from hrm_edge.contract import SEGMENT_OUTPUTS
from hrm_edge.serving.bls import BlsSegmentRunner
from hrm_edge.serving.local import local_solver
from hrm_edge.serving.protocol import SOLVER_INPUTS, SOLVER_OUTPUTS
from hrm_edge.serving.service import SolverService
from hrm_edge.serving.triton_repo import SOLVER_FILE


def _bls_call(pb: Any, model: str) -> Any:
    def infer(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # a per-row scalar (puzzle_ids [n]) travels as [n, 1]: the segment config's dims before its reshape
        request = pb.InferenceRequest(model_name=model, requested_output_names=list(SEGMENT_OUTPUTS),
                                      inputs=[pb.Tensor(n, np.ascontiguousarray(a if a.ndim > 1 else a[:, None]))
                                              for n, a in feeds.items()])
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"segment model {model}: {response.error().message()}")
        return {n: pb.get_output_tensor_by_name(response, n).as_numpy() for n in SEGMENT_OUTPUTS}

    return infer


class TritonPythonModel:
    """Triton's Python-backend entry points."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb

        self.pb = pb
        here = Path(args["model_repository"]) / args["model_version"]
        info = json.loads((here / SOLVER_FILE).read_text())
        if info.get("segment") == "in-solver":
            engine = info.get("engine")  # relative to the version directory, or absolute
            self.service = local_solver(here / info["bundle"], info["slots"], info["graph"], info["runtime"],
                                        info.get("threads"), str(here / engine) if engine else None).service
            return
        carry = np.load(here / "carry_init.npz")
        runner = BlsSegmentRunner(_bls_call(pb, info["segment_model"]), carry["H_init"], carry["L_init"],
                                  info["total_len"], info["carry_dtype"])
        kept = info.get("kept_puzzle_ids")
        self.service = SolverService(runner, info["slots"], info["seq_len"], info["vocab_size"],
                                     (lambda ids: remap_ids(ids, kept)) if kept else (lambda ids: ids))

    def execute(self, requests: list[Any]) -> list[Any]:
        # one request per call in practice (module docstring): solved in this thread, no hand-off
        return [self._one(r) for r in requests]

    def _one(self, request: Any) -> Any:
        pb = self.pb
        inputs = {}
        for name in SOLVER_INPUTS:
            tensor = pb.get_input_tensor_by_name(request, name)
            if tensor is not None:
                inputs[name] = tensor.as_numpy()
        try:
            out = self.service.solve(inputs)
        except Exception as exc:
            return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(str(exc)))
        return pb.InferenceResponse(output_tensors=[pb.Tensor(n, out[n]) for n in SOLVER_OUTPUTS])

    def finalize(self) -> None:
        self.service.close()

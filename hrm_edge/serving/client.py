"""A client of the solver model (tritonclient, KServe v2): what `solve --server` and `parity --server`
use. It talks to `hrm-edge serve` and to a Triton server running the repository alike.

URLs: `http://HOST:PORT` (HTTP, the default scheme) or `grpc://HOST:PORT`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import numpy as np

from hrm_edge.act import HaltingPolicy, SolveResult, concat_results, halt_rule
from hrm_edge.errors import HrmEdgeError
from hrm_edge.serving.protocol import BUNDLE_DIGEST, SOLVER_MODEL, SOLVER_OUTPUTS, request_inputs

TRITON_DTYPES = {"int64": "INT64", "float32": "FP32"}


class ServerError(HrmEdgeError):
    """The server cannot be reached or answered with an error."""


def _client_module(scheme: str) -> Any:
    try:
        if scheme == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError as exc:
        raise ServerError(f"tritonclient is not installed ({exc}): pip install 'hrm-edge[serve]'") from None
    return module


class RemoteSolver:
    """Solve puzzles on the solver model at `url`; `timeout` seconds per request."""

    def __init__(self, url: str, model: str = SOLVER_MODEL, timeout: float = 120.0) -> None:
        parsed = urlparse(url if "://" in url else f"http://{url}")
        if parsed.scheme not in ("http", "grpc") or not parsed.hostname or not parsed.port:
            raise ServerError(f"--server {url!r}: expected http://HOST:PORT or grpc://HOST:PORT")
        self.url, self.model, self.scheme, self.timeout = url, model, parsed.scheme, timeout
        self._mod = _client_module(parsed.scheme)
        target = f"{parsed.hostname}:{parsed.port}"
        try:
            if parsed.scheme == "grpc":
                self._client = self._mod.InferenceServerClient(target)
            else:
                self._client = self._mod.InferenceServerClient(target, connection_timeout=timeout,
                                                               network_timeout=timeout)
            ready = self._client.is_model_ready(model)
        except Exception as exc:
            raise ServerError(f"cannot reach {url}: {_first_line(exc)}") from None
        if not ready:
            raise ServerError(f"{url}: model {model!r} is not ready")

    def check_seq_len(self, seq_len: int, bundle: str) -> None:
        """ServerError unless the served model takes sequences of `seq_len` tokens (the last dimension of
        its tokens input, from the model's metadata): a server serving another task fails here, before
        any puzzle is sent."""
        try:
            meta = self._client.get_model_metadata(self.model, **({"as_json": True} if self.scheme == "grpc" else {}))
            shape = next(i["shape"] for i in meta["inputs"] if i["name"] == "tokens")
        except Exception as exc:
            raise ServerError(f"{self.url}: no metadata for model {self.model!r}: {_first_line(exc)}") from None
        if int(shape[-1]) != seq_len:
            raise ServerError(f"{self.url} serves {self.model} for {int(shape[-1])}-token puzzles; {bundle} has "
                              f"seq_len {seq_len}: the server serves another model")

    def served_digest(self) -> str | None:
        """The digest of the bundle the served model says it serves (its config's `BUNDLE_DIGEST`
        parameter, from get_model_config); None where the server does not say (a repository without it)."""
        try:
            config = self._client.get_model_config(self.model, **({"as_json": True} if self.scheme == "grpc" else {}))
        except Exception as exc:
            raise ServerError(f"{self.url}: no configuration for model {self.model!r}: {_first_line(exc)}") from None
        param = config.get("config", config).get("parameters", {}).get(BUNDLE_DIGEST, {})
        return param.get("string_value") or param.get("stringValue") or None

    def check_bundle(self, digest: str | None, seq_len: int, bundle: str) -> str | None:
        """ServerError unless the served model serves the bundle with `digest` (and `seq_len`): a server
        serving another bundle fails here, before any puzzle is sent. Returns a note where the server
        does not say which bundle it serves (then only the sequence length was checked)."""
        self.check_seq_len(seq_len, bundle)
        served = self.served_digest()
        if served is None:
            return (f"{self.url} does not say which bundle it serves (no {BUNDLE_DIGEST} in {self.model}'s "
                    "config); checked its sequence length only")
        if digest is not None and served != digest:
            raise ServerError(f"{self.url} serves bundle {served}; {bundle} is {digest}: the server serves another "
                              "bundle")
        return None

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One raw request (tensors by name; any dtype, for tests of malformed requests)."""
        mod = self._mod
        tensors = []
        for name, value in inputs.items():
            value = np.ascontiguousarray(value)
            t = mod.InferInput(name, list(value.shape), TRITON_DTYPES.get(str(value.dtype), "BYTES"))
            t.set_data_from_numpy(value)
            tensors.append(t)
        outputs = [mod.InferRequestedOutput(n) for n in SOLVER_OUTPUTS]
        try:
            kw = {"client_timeout": self.timeout} if self.scheme == "grpc" else {}
            result = self._client.infer(self.model, tensors, outputs=outputs, **kw)
        except Exception as exc:
            raise ServerError(f"{self.url}: {_first_line(exc)}") from None
        return {n: result.as_numpy(n) for n in SOLVER_OUTPUTS}

    def solve(self, tokens: np.ndarray, puzzle_ids: np.ndarray, policy: HaltingPolicy, max_steps: int,
              batch_size: int = 64) -> SolveResult:
        """Solve N puzzles (original puzzle ids), `batch_size` per request."""
        mode, threshold = halt_rule(policy)
        parts = []
        for i in range(0, len(tokens), batch_size):
            out = self.infer(request_inputs(tokens[i:i + batch_size], puzzle_ids[i:i + batch_size], mode, threshold,
                                            max_steps))
            parts.append(SolveResult(predictions=out["preds"].astype(np.int64), steps=out["steps"].astype(np.int32),
                                     q_halt=out["q_halt"].astype(np.float32),
                                     q_continue=out["q_continue"].astype(np.float32)))
        return concat_results(parts)

    def close(self) -> None:
        self._client.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


"""Fixtures shared by several test modules."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Property-based tests (tests/fuzz): a modest run in the normal suite, a long one for `make fuzz`
# (HRM_EDGE_FUZZ_PROFILE=fuzz). No deadline and no example database: CI's cores are shared, and
# every failure prints the input that reproduces it.
settings.register_profile("ci", max_examples=100, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=5_000, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HRM_EDGE_FUZZ_PROFILE", "ci"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one torch thread is fastest and steady on a shared 2-core machine. Modules opt in
    with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A seeded (seed 1), untrained sudoku-tiny checkpoint written by `hrm-edge init`."""
    from hrm_edge.cli.main import main

    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    with pytest.raises(SystemExit) as exc:
        main(["init", "sudoku-tiny", "-o", str(path), "--seed", "1"])
    assert exc.value.code == 0
    return path


def _weights_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's class, config and every tensor it holds (parameters and buffers)."""
    import hashlib

    h = hashlib.sha256(f"{type(model).__qualname__} {model.config!r}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="session", autouse=True)
def traced_graphs_reused():
    """The dynamo exporter takes 6-8 s per graph even for the tiny test models, and many test modules
    export the same checkpoints (the shipped demos) with the same options: within one test session
    the first trace of a (weights, graph, opset, dtype) is real and later calls get a copy of its
    proto. The exporter is deterministic and only the trace is reused; everything downstream of it
    (fusion, quantization, bundles, gates) runs for every test."""
    import onnx

    from hrm_edge.export import graphs

    real_segment, real_embed = graphs.segment_proto, graphs.embed_proto
    traced: dict[tuple, bytes] = {}

    def reused(real, key: tuple, *args) -> onnx.ModelProto:
        if key not in traced:
            traced[key] = real(*args).SerializeToString()
        proto = onnx.ModelProto()
        proto.ParseFromString(traced[key])
        return proto

    def segment_proto(model, opset=18, dtype="float32", embed_inside=True):
        key = ("segment", _weights_digest(model), opset, dtype, embed_inside)
        return reused(real_segment, key, model, opset, dtype, embed_inside)

    def embed_proto(model, opset=18, dtype="float32"):
        return reused(real_embed, ("embed", _weights_digest(model), opset, dtype), model, opset, dtype)

    graphs.segment_proto, graphs.embed_proto = segment_proto, embed_proto
    yield
    graphs.segment_proto, graphs.embed_proto = real_segment, real_embed

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

"""Hypothesis strategies shared by the fuzz tests, and the one property they all check."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from hrm_edge.errors import HrmEdgeError

# Any JSON document (also what yaml.safe_dump writes and safe_load reads back).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)

# Values a hostile or careless file puts where a size belongs.
hostile_numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-3, max_value=3),
    st.sampled_from([2**31, 2**63, 10**9, 10**18, 10**100, -(2**63)]),
    st.floats(),  # NaN and the infinities included
    st.booleans(),
    st.text(max_size=6),
    st.none(),
    st.lists(st.integers(), max_size=2),
)

# Documents nested deeper than the interpreter's stack, and numbers longer than int() converts.
DEEP_JSON = ["[" * 100_000, '{"a":' * 50_000, "[" * 100_000 + "]" * 100_000, "9" * 5_000, "[" + "9" * 5_000 + "]"]

ONE_MIB = 1 << 20


def parses_or_refuses(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """fn(*args) or None when it raised a one-line HrmEdgeError; any other exception fails the test."""
    try:
        return fn(*args, **kwargs)
    except HrmEdgeError as exc:
        assert "\n" not in str(exc), f"multi-line error: {exc!r}"
        return None


def peak_bytes(fn: Callable[..., Any], *args: Any) -> tuple[Any, int]:
    """(parses_or_refuses(fn, *args), the peak of Python allocations it made, in bytes)."""
    tracemalloc.start()
    try:
        result = parses_or_refuses(fn, *args)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

"""The bundle manifest reader (`hrm_edge.manifest`): a real manifest with any one field replaced,
removed or added, and any bytes as manifest.json, either read into a typed Manifest that writes
back unchanged, or refused with one BundleError line; sizes are compared, never allocated."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from hrm_edge.manifest import Manifest, parse_manifest_json
from tests.fuzz.strategies import DEEP_JSON, ONE_MIB, hostile_numbers, json_values, parses_or_refuses, peak_bytes

REAL = json.loads((Path(__file__).resolve().parents[1] / "data" / "manifest-v1-int8.json").read_text())


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a JSON document (dict keys and list indices), the root excluded."""
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        out.append((*prefix, key))
        out.extend(_paths(child, (*prefix, key)))
    return out


PATHS = _paths(REAL)


@st.composite
def mutated_manifests(draw: st.DrawFn) -> dict[str, Any]:
    """The real manifest with one field replaced by a hostile value, removed, or joined by a new key."""
    data = copy.deepcopy(REAL)
    path = draw(st.sampled_from(PATHS))
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    action = draw(st.sampled_from(["replace", "remove", "add"]))
    if action == "replace":
        parent[path[-1]] = draw(hostile_numbers | json_values)
    elif action == "remove":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[draw(st.text(max_size=8))] = draw(json_values)
    return data


@given(data=mutated_manifests())
def test_any_one_field_changed_is_read_or_refused_in_one_line(data):
    manifest, peak = peak_bytes(Manifest.from_dict, data)
    assert peak < 4 * ONE_MIB  # the real manifest is ~30 kB; a size in a field is never allocated
    if manifest is not None:
        assert Manifest.from_dict(manifest.to_dict()).to_dict() == manifest.to_dict()


@given(text=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
@example(text=b"")
@example(text=b"\x80")
@example(text=b"[]")
@example(text=json.dumps(REAL).replace('"schema_version": 1', '"schema_version": 1, "schema_version": 2').encode())
def test_any_bytes_as_manifest_json_are_read_or_refused_in_one_line(text):
    parses_or_refuses(parse_manifest_json, text, "manifest.json")


def test_deeply_nested_or_huge_number_documents_are_refused_in_one_line():
    for text in DEEP_JSON:
        assert parses_or_refuses(parse_manifest_json, text, "manifest.json") is None

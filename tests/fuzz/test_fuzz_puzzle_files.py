"""The puzzle-file readers: ARC task JSON (`load_arc_tasks`) and puzzle sets (`load_puzzle_set`).
Arbitrary file content either loads into puzzles the model can read or is one PuzzleError line."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

from hrm_edge.puzzles import ArcCodec, get_codec, iter_test_pairs, load_arc_tasks, load_puzzle_set
from tests.fuzz.strategies import DEEP_JSON, hostile_numbers, json_values, parses_or_refuses

grids = st.one_of(st.lists(st.lists(st.integers(-1, 10), min_size=1, max_size=4), min_size=1, max_size=4),
                  json_values)
pairs = st.one_of(st.fixed_dictionaries({"input": grids}, optional={"output": grids}), json_values)
tasks = st.one_of(st.fixed_dictionaries({"test": st.one_of(st.lists(pairs, max_size=3), json_values)},
                                        optional={"train": st.one_of(st.lists(pairs, max_size=3), json_values)}),
                  json_values)
arc_files = st.one_of(st.dictionaries(st.text(max_size=8), tasks, max_size=3), tasks, json_values)


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@given(content=st.one_of(arc_files.map(json.dumps), st.binary(max_size=200), st.text(max_size=200)))
@example(content=b"\xff\xfe not utf-8")
@example(content=DEEP_JSON[0])
@example(content='{"t": {"test": [{"output": [[1]]}]}}')  # a test pair without its input
def test_any_arc_task_file_loads_into_encodable_pairs_or_one_puzzle_error(content):
    with tempfile.TemporaryDirectory() as tmp:
        tasks_found = parses_or_refuses(load_arc_tasks, write(Path(tmp) / "tasks.json", content))
    if tasks_found is not None:
        codec = ArcCodec()
        for _task_id, _k, grid, _answer in iter_test_pairs(tasks_found):
            assert codec.encode_grid(grid).shape == (codec.seq_len,)


@given(task_files=st.lists(st.one_of(tasks.map(json.dumps), st.binary(max_size=40)), min_size=1, max_size=3))
def test_any_directory_of_arc_task_files_loads_or_is_one_puzzle_error(task_files):
    with tempfile.TemporaryDirectory() as tmp:
        for i, content in enumerate(task_files):
            write(Path(tmp) / f"t{i}.json", content)
        parses_or_refuses(load_arc_tasks, tmp)


# ---------------------------------------------------------------------------- puzzle sets

CALIB_DATA = Path(__file__).resolve().parents[2] / "calib_data"
KEEP = 3  # puzzles kept from each shipped set


def first_puzzles(task_dir: str) -> dict[str, Any]:
    """The first KEEP puzzles of a shipped set's calib split: manifest (a dict), data text, meta text."""
    directory = CALIB_DATA / task_dir
    manifest = json.loads((directory / "MANIFEST.json").read_text())
    data_name = manifest["splits"]["calib"]["file"]
    data = (directory / data_name).read_text()
    if data_name.endswith(".json"):
        data = json.dumps(json.loads(data)[:KEEP])
    elif task_dir.startswith("maze"):
        data = "\n\n".join(data.split("\n\n")[:KEEP])
    else:
        data = "\n".join([line for line in data.splitlines() if not line.startswith("#")][:KEEP]) + "\n"
    meta = "\n".join((directory / "calib.meta.jsonl").read_text().splitlines()[:KEEP])
    manifest["splits"] = {"calib": {"file": data_name, "meta": "calib.meta.jsonl", "count": KEEP}}
    return {"manifest": manifest, "data_name": data_name, "data": data, "meta": meta}


SHIPPED = {name: first_puzzles(name) for name in ("sudoku", "sudoku6", "maze11", "arc")}

edits = st.just([]) | st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(["insert", "delete", "replace"]),
                           st.sampled_from([*"0123456789.#SGo |\n[]{},:\"", "\u00e9", "\x00"])), max_size=4)
manifest_overrides = st.just({}) | st.dictionaries(
    st.sampled_from(["task", "files", "splits", "split", "file", "meta", "count"]),
    st.one_of(hostile_numbers, json_values, st.sampled_from(["sudoku", "maze:11", "arc", "../MANIFEST.json",
                                                             "/etc/hostname", "calib.meta.jsonl"])), max_size=2)


def edited(text: str, changes: list[tuple[int, str, str]]) -> str:
    """`text` with each (position, operation, character) change applied in turn."""
    for position, operation, char in changes:
        i = position % (len(text) + 1)
        text = {"insert": text[:i] + char + text[i:], "delete": text[:i] + text[i + 1:],
                "replace": text[:i] + char + text[i + 1:]}[operation]
    return text


@st.composite
def puzzle_sets(draw: st.DrawFn) -> dict[str, str]:
    """{file name: content} of a set directory: a few real puzzles of a shipped set, with edits to the data
    and meta files, fields of the manifest replaced, and (mostly) the manifest's sha256 kept right."""
    base = SHIPPED[draw(st.sampled_from(sorted(SHIPPED)))]
    data = edited(base["data"], draw(edits))
    meta = edited(base["meta"], draw(edits))
    files = {base["data_name"]: data, "calib.meta.jsonl": meta}
    manifest = json.loads(json.dumps(base["manifest"]))
    if draw(st.booleans()):
        manifest["files"] = {name: hashlib.sha256(text.encode()).hexdigest() for name, text in files.items()}
    overrides = draw(manifest_overrides)
    manifest["splits"]["calib"].update({k: v for k, v in overrides.items() if k in ("file", "meta", "count")})
    if "split" in overrides:
        manifest["splits"]["calib"] = overrides["split"]
    manifest.update({k: v for k, v in overrides.items() if k in ("task", "files", "splits")})
    return {"MANIFEST.json": json.dumps(manifest), **files}


@given(files=puzzle_sets())
def test_any_puzzle_set_loads_into_valid_ids_or_one_puzzle_error(files):
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            write(Path(tmp) / name, content)
        pset = parses_or_refuses(load_puzzle_set, tmp, "calib")
    if pset is not None:
        codec = get_codec(pset.task)
        assert len(pset) <= KEEP + 1
        assert pset.inputs.shape == (len(pset), codec.seq_len) and pset.inputs.dtype == np.int64
        assert len(pset.names) == len(pset.meta) == len(pset) == pset.difficulty.shape[0]
        assert pset.inputs.size == 0 or 0 <= pset.inputs.min() <= pset.inputs.max() < codec.vocab_size


@given(manifest=st.one_of(st.binary(max_size=60), st.sampled_from(DEEP_JSON)))
def test_an_unreadable_manifest_is_one_puzzle_error(manifest):
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp) / "MANIFEST.json", manifest)
        assert parses_or_refuses(load_puzzle_set, tmp) is None

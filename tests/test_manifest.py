"""The typed manifest: one reader that names the bad field in one line, one writer that keeps the
schema_version 1 JSON, and bundles exported before the typed manifest still open."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from hrm_edge.bundle import open_bundle
from hrm_edge.errors import BundleError
from hrm_edge.manifest import MANIFEST, ORT_CPU, Manifest, read_manifest, write_manifest
from hrm_edge.model.checkpoint import save_checkpoint
from tests.cli_helpers import run_cli
from tests.model_helpers import q_model

# manifest.json of `hrm-edge export checkpoints/sudoku6-demo/model.pt --no-fp16 --int8 --int8-target cpu
# --int8-target tensorrt --unroll 2 --act-loop --golden 4 ...`, written by hrm-edge before this module existed
OLD_INT8_MANIFEST = Path(__file__).parent / "data" / "manifest-v1-int8.json"


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("manifest")
    ckpt = save_checkpoint(root / "tiny.pt", q_model(halt_max_steps=3), "sudoku")
    out = root / "bundle"
    with pytest.raises(SystemExit) as exc:
        from hrm_edge.cli.main import main

        main(["export", str(ckpt), "-o", str(out), "--no-fp16", "--golden", "4"])
    assert exc.value.code == 0
    return out


@pytest.fixture
def copy_of(bundle_dir, tmp_path) -> Path:
    return Path(shutil.copytree(bundle_dir, tmp_path / "copy"))


def _edit(bundle: Path, change) -> None:
    data = json.loads((bundle / MANIFEST).read_text())
    change(data)
    (bundle / MANIFEST).write_text(json.dumps(data, indent=2))


def test_an_old_manifest_reads_into_types_and_writes_back_byte_for_byte():
    text = OLD_INT8_MANIFEST.read_text()
    m = read_manifest(OLD_INT8_MANIFEST)
    assert list(m.graphs) == ["segment.fp32", "unrolled2.fp32", "act_loop.fp32", "segment.int8-cpu",
                              "segment.int8-tensorrt"]
    assert m.graphs["unrolled2.fp32"].k == 2 and m.graphs["segment.fp32"].k is None
    assert m.graphs["segment.int8-tensorrt"].target == "tensorrt"
    assert m.graphs["segment.int8-cpu"].report == {"json": "quant_report.json", "png": "quant_report-cpu.png"}
    assert m.graphs["segment.fp32"].inputs["z_H"].shape == ["batch", 37, 128]
    assert m.halting.max_steps == 8 and m.reference.puzzles == 4 and m.task.name == "sudoku6"
    assert m.model.total_len == 37 and m.model.parameters == 1050882
    assert all(g.only_on is None and g.embed_graph is None for g in m.graphs.values())
    assert json.dumps(m.to_dict(), indent=2) == text


def test_write_then_read_gives_the_same_manifest(tmp_path):
    m = read_manifest(OLD_INT8_MANIFEST)
    m.graphs["segment.fp32"] = dataclasses.replace(m.graphs["segment.fp32"], only_on=ORT_CPU)
    again = read_manifest(write_manifest(m, tmp_path / MANIFEST))
    assert again == m and again.graphs["segment.fp32"].only_on == "ort-cpu"


def test_the_writer_refuses_what_the_reader_refuses(tmp_path):
    m = read_manifest(OLD_INT8_MANIFEST)
    m.graphs["segment.fp32"].precision = "fp8"
    with pytest.raises(BundleError, match="precision' is 'fp8', not one of fp32, fp16, int8"):
        write_manifest(m, tmp_path / MANIFEST)
    assert not (tmp_path / MANIFEST).exists()


def test_a_bundle_exported_before_the_fused_graph_opens_verifies_and_solves_on_segment_fp32(capsys, copy_of):
    def as_before(data):  # the graphs and the fields a bundle had before the fused CPU graph
        for name in ("segment.fp32-cpufused", "embed.fp32"):
            del data["files"][data["graphs"].pop(name)["file"]]
            (copy_of / f"{name}.onnx").unlink()

    _edit(copy_of, as_before)
    b = open_bundle(copy_of)
    assert list(b.graphs) == ["segment.fp32"] and b.manifest.halting.max_steps == 3
    code, out, err = run_cli(capsys, "verify", str(copy_of))
    assert code == 0, err
    assert out.count("PASS") == 1 and "PASS segment.fp32:" in out
    puzzle = "4...3.......6..8..........1....5..9..8....6...7.2........1.27..5.3....4.9........"
    code, out, err = run_cli(capsys, "solve", str(copy_of), "--puzzle", puzzle, "--json")
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["summary"]["runtime"] == "ort segment.fp32"


BAD_FIELDS = {
    "files as a list": (lambda m: m.update(files=list(m["files"])),
                        "field 'files' must be an object, not an array"),
    "no reference": (lambda m: m.pop("reference"), "missing field 'reference' (the golden outputs; re-export "
                                                   "the bundle)"),
    "a graph with no kind": (lambda m: m["graphs"]["segment.fp32"].pop("kind"),
                             "missing field 'graphs[\"segment.fp32\"].kind'"),
    "an unknown precision": (lambda m: m["graphs"]["segment.fp32"].update(precision="fp8"),
                             "field 'graphs[\"segment.fp32\"].precision' is 'fp8', not one of fp32, fp16, int8"),
    "an unknown runtime restriction": (lambda m: m["graphs"]["segment.fp32-cpufused"].update(only_on="cuda"),
                                       "field 'graphs[\"segment.fp32-cpufused\"].only_on' is 'cuda', not one of "
                                       "ort-cpu"),
    "an embed graph that is not one": (
        lambda m: m["graphs"]["segment.fp32-cpufused"].update(embed_graph="segment.fp32"),
        "field 'graphs[\"segment.fp32-cpufused\"].embed_graph' is 'segment.fp32', not an embed graph of this bundle"),
    "a text segment cap": (lambda m: m["halting"].update(max_steps="3"),
                           "field 'halting.max_steps' must be an integer, not a string"),
    "a gate's left-out graphs as text": (
        lambda m: m.update(gates=[{"name": "parity", "precision": "int8", "data": "sudoku val", "puzzles": 4,
                                   "policy": "q", "max_steps": 3, "passed": True, "graphs": {},
                                   "dropped": "segment.int8-cpu"}]),
        "field 'gates[0].dropped' must be an array, not a string"),
    "a digest that is not sha256": (lambda m: m["files"].update({"reference.npz": "abc"}),
                                    "field 'files' must map file names to hex sha256 digests; 'reference.npz' has "
                                    "'abc'"),
}


@pytest.mark.parametrize("case", list(BAD_FIELDS))
def test_a_malformed_field_is_one_error_line_naming_it(capsys, copy_of, case):
    change, message = BAD_FIELDS[case]
    _edit(copy_of, change)
    code, _, err = run_cli(capsys, "verify", str(copy_of))
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [f"error: {copy_of / MANIFEST}: {message}"]


def test_from_dict_names_the_source_it_is_given():
    data = json.loads(OLD_INT8_MANIFEST.read_text())
    data["model"] = []
    with pytest.raises(BundleError, match=r"^the device copy: field 'model' must be an object, not an array$"):
        Manifest.from_dict(data, "the device copy")

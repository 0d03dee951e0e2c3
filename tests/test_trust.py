"""Bundles a device can trust: one digest names the exact bundle exported (and signed), the reader
refuses names that leave the bundle, symbolic links and oversized fields before allocating, and
`solve` runs under the bundle's own halting defaults."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from hrm_edge.act import parse_policy
from hrm_edge.bundle import open_bundle
from hrm_edge.cli.main import main
from hrm_edge.files import sha256_file
from hrm_edge.manifest import (
    MANIFEST,
    SIGNATURE,
    GateRun,
    Manifest,
    canonical_json,
    manifest_digest,
    read_manifest,
)
from hrm_edge.model.checkpoint import save_checkpoint
from tests.cli_helpers import one_line_error, run_cli
from tests.model_helpers import q_model

REPO = Path(__file__).resolve().parents[1]
HAS_CRYPTOGRAPHY = importlib.util.find_spec("cryptography") is not None
needs_cryptography = pytest.mark.skipif(not HAS_CRYPTOGRAPHY,
                                        reason="signing needs the optional 'cryptography' package (hrm-edge[sign])")
PUZZLE = "4...3.......6..8..........1....5..9..8....6...7.2........1.27..5.3....4.9........"
FP32 = ("--graph", "segment.fp32")


@dataclass
class Exported:
    """A bundle exported with `--policy fixed --max-steps 3` (signed when cryptography is installed)."""

    path: Path
    digest: str
    stdout: str
    private_key: Path | None
    public_key: Path | None


def _main(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exc:
        main(list(argv))
    return exc.value.code, out.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Exported:
    root = tmp_path_factory.mktemp("trust")
    ckpt = save_checkpoint(root / "tiny.pt", q_model(halt_max_steps=4), "sudoku")
    private = public = None
    if HAS_CRYPTOGRAPHY:
        code, _ = _main("keygen", "-o", str(root / "keys"))
        assert code == 0
        private, public = root / "keys" / "bundle-signing.key.pem", root / "keys" / "bundle-signing.pub.pem"
    out = root / "bundle"
    code, stdout = _main("export", str(ckpt), "-o", str(out), "--no-fp16", "--no-cpu-fused", "--golden", "4",
                         "--policy", "fixed", "--max-steps", "3", *(("--sign", str(private)) if private else ()))
    assert code == 0
    digest = re.search(r"^bundle digest: (sha256:[0-9a-f]{64})$", stdout, re.M).group(1)
    return Exported(out, digest, stdout, private, public)


@pytest.fixture
def copy_of(exported, tmp_path) -> Path:
    return Path(shutil.copytree(exported.path, tmp_path / "copy"))


def _edit(bundle: Path, change) -> None:
    data = json.loads((bundle / MANIFEST).read_text())
    change(data)
    (bundle / MANIFEST).write_text(json.dumps(data, indent=2))


def _digest_line(stdout: str) -> str:
    return re.search(r"^bundle digest: (sha256:[0-9a-f]{64})$", stdout, re.M).group(1)


# ---------------------------------------------------------------------------------------------- the digest


def test_the_digest_is_sha256_of_the_canonical_manifest(exported):
    data = json.loads((exported.path / MANIFEST).read_text())
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert canonical_json(data) == canonical
    assert exported.digest == manifest_digest(data) == "sha256:" + __import__("hashlib").sha256(canonical).hexdigest()
    assert read_manifest(exported.path / MANIFEST).digest == exported.digest


def test_reformatting_the_manifest_keeps_the_digest(capsys, copy_of, exported):
    data = json.loads((copy_of / MANIFEST).read_text())
    (copy_of / MANIFEST).write_text(json.dumps(dict(reversed(list(data.items())))))  # other order, no indent
    code, out, err = run_cli(capsys, "verify", str(copy_of), *FP32, "--expect", exported.digest)
    assert code == 0, err
    assert _digest_line(out) == exported.digest and "digest matches --expect" in out


def test_verify_prints_the_digest_export_printed_and_accepts_it(capsys, exported):
    code, out, err = run_cli(capsys, "verify", str(exported.path), *FP32, "--expect", exported.digest)
    assert code == 0, err
    assert _digest_line(out) == exported.digest and "PASS segment.fp32" in out
    bare = exported.digest.removeprefix("sha256:").upper()  # bare hex, any case
    assert run_cli(capsys, "verify", str(exported.path), *FP32, "--expect", bare)[0] == 0


def test_a_tampered_halting_field_changes_the_digest_and_fails_expect(capsys, copy_of, exported):
    _edit(copy_of, lambda m: m["halting"].update(max_steps=1))
    code, out, _ = run_cli(capsys, "verify", str(copy_of), *FP32)  # files match: integrity alone passes
    assert code == 0 and _digest_line(out) != exported.digest
    line = one_line_error(capsys, "verify", str(copy_of), "--expect", exported.digest)
    assert line == (f"error: {copy_of}: bundle digest {_digest_line(out)}, expected {exported.digest}: "
                    "not the bundle that was exported")


def test_a_rehashed_tampered_graph_is_caught_by_expect_before_it_runs(capsys, copy_of, exported):
    import onnx

    graph = copy_of / "segment.fp32.onnx"
    model = onnx.load(str(graph))
    model.doc_string = "altered after the gate"  # a graph that still loads, runs and passes the golden puzzles
    onnx.save(model, str(graph))
    _edit(copy_of, lambda m: m["files"].update({"segment.fp32.onnx": sha256_file(graph)}))
    assert run_cli(capsys, "verify", str(copy_of), *FP32)[0] == 0  # the hashes match the rewritten manifest
    line = one_line_error(capsys, "verify", str(copy_of), *FP32, "--expect", exported.digest)
    assert f"expected {exported.digest}" in line
    assert "PASS" not in capsys.readouterr().out


def test_a_malformed_expected_digest_is_one_line(capsys, exported):
    line = one_line_error(capsys, "verify", str(exported.path), "--expect", "sha256:1234")
    assert line == "error: --expect 'sha256:1234' is not a bundle digest (sha256:<64 hex digits>)"


def test_a_gate_run_at_export_is_recorded_and_covered_by_the_digest(tmp_path):
    from hrm_edge.export.bundle_writer import GraphSpec, write_bundle
    from hrm_edge.model.checkpoint import load_checkpoint
    from hrm_edge.puzzles.datasets import PuzzleSet

    ck = load_checkpoint(save_checkpoint(tmp_path / "m.pt", q_model(halt_max_steps=2), "sudoku"))
    golden = PuzzleSet(task="sudoku", split="val", inputs=np.ones((2, 81), np.int64), labels=None,
                       puzzle_ids=np.zeros(2, np.int64), difficulty=np.zeros(2, np.int64))
    seen = []

    def gate(tmp: Path, manifest: Manifest) -> list[GateRun]:
        seen.append(open_bundle(tmp).verified)  # the gate sees the complete, hashed bundle
        return [GateRun(name="parity", precision="fp32", data="sudoku val", puzzles=2, policy="q", max_steps=2,
                        passed=True, graphs={"segment.fp32": [{"name": "halting_agreement", "value": 1.0,
                                                              "threshold": 1.0, "passed": True}]})]

    out = write_bundle(ck, tmp_path / "b", [GraphSpec("segment", "fp32")], golden, gate=gate, log=lambda m: None)
    m = read_manifest(out / MANIFEST)
    assert seen == [True]
    assert [(g.name, g.passed, g.puzzles) for g in m.gates] == [("parity", True, 2)]
    assert json.loads((out / MANIFEST).read_text())["gates"][0]["graphs"]["segment.fp32"][0]["value"] == 1.0
    assert open_bundle(out).verified  # the gate record sits in the manifest, not in any hashed file


def test_verify_reports_the_gate_recorded_at_export(capsys, copy_of):
    record = {"name": "parity", "precision": "int8", "data": "sudoku val", "puzzles": 256, "policy": "q",
              "max_steps": 3, "passed": False, "graphs": {"segment.int8-cpu": []}}
    _edit(copy_of, lambda m: m.update(gates=[record]))
    code, out, err = run_cli(capsys, "verify", str(copy_of), *FP32)
    assert code == 0, err
    assert "gate at export: parity int8 on 256 sudoku val puzzles (segment.int8-cpu): FAIL" in out


# ---------------------------------------------------------------------------------------------- signatures


@needs_cryptography
def test_export_signs_and_verify_checks_the_signature(capsys, exported):
    assert (exported.path / SIGNATURE).stat().st_size == 64
    assert f"signed: {exported.path / SIGNATURE} (Ed25519" in exported.stdout
    code, out, err = run_cli(capsys, "verify", str(exported.path), *FP32, "--public-key", str(exported.public_key))
    assert code == 0, err
    assert f"signature OK: {SIGNATURE} signed by {exported.public_key}" in out
    assert "warning" not in err  # the signature is an expected file, not an unlisted one


@needs_cryptography
def test_another_key_is_refused(capsys, exported, tmp_path):
    assert _main("keygen", "-o", str(tmp_path))[0] == 0
    other = tmp_path / "bundle-signing.pub.pem"
    line = one_line_error(capsys, "verify", str(exported.path), "--public-key", str(other))
    assert line == f"error: bad signature: not a signature of {exported.digest} by the key in {other}"


@needs_cryptography
def test_a_tampered_signed_manifest_is_refused(capsys, copy_of, exported):
    _edit(copy_of, lambda m: m["halting"].update(default_policy="q"))
    line = one_line_error(capsys, "verify", str(copy_of), "--public-key", str(exported.public_key))
    assert line.startswith("error: bad signature: not a signature of sha256:")


@needs_cryptography
def test_a_missing_signature_is_one_line(capsys, copy_of, exported):
    (copy_of / SIGNATURE).unlink()
    line = one_line_error(capsys, "verify", str(copy_of), "--public-key", str(exported.public_key))
    assert line == f"error: {copy_of}: no {SIGNATURE}; the bundle is not signed (export --sign KEY.pem)"


@needs_cryptography
def test_keygen_never_overwrites_a_key(capsys, exported):
    keys = exported.private_key.parent
    before = exported.private_key.read_bytes()
    line = one_line_error(capsys, "keygen", "-o", str(keys))
    assert line == f"error: {exported.private_key}: already exists; not overwriting a key"
    assert exported.private_key.read_bytes() == before
    assert exported.private_key.stat().st_mode & 0o777 == 0o600


@needs_cryptography
def test_an_openssl_style_key_of_another_algorithm_is_refused(capsys, tmp_path, exported):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "ec.pem").write_bytes(pem)
    line = one_line_error(capsys, "verify", str(exported.path), "--public-key", str(tmp_path / "ec.pem"))
    assert line.endswith("ec.pem: a _EllipticCurvePublicKey, not an Ed25519 public key") or "not an Ed25519" in line


# ---------------------------------------------------------------------------------------------- file names


ESCAPES = {
    "a parent directory": "../x",
    "an absolute path": "/etc/passwd",
    "a subdirectory": "a/b",
    "a hidden name": ".hidden",
}


@pytest.mark.parametrize("case", list(ESCAPES))
def test_a_listed_file_outside_the_bundle_is_refused_without_reading_it(capsys, copy_of, case):
    name = ESCAPES[case]
    _edit(copy_of, lambda m: m["files"].update({name: "0" * 64}))
    line = one_line_error(capsys, "verify", str(copy_of))
    assert line == (f"error: {copy_of / MANIFEST}: field 'files[\"{name}\"]' is {name!r}, not a plain file name "
                    "inside the bundle (letters, digits, '.', '_', '+', '-'; no path separator, no leading dot)")
    assert "sha256" not in line


def test_a_graph_in_another_directory_is_refused(capsys, copy_of, tmp_path):
    (tmp_path / "other").mkdir()
    shutil.copy(copy_of / "segment.fp32.onnx", tmp_path / "other" / "segment.fp32.onnx")
    _edit(copy_of, lambda m: m["graphs"]["segment.fp32"].update(file="../other/segment.fp32.onnx"))
    line = one_line_error(capsys, "verify", str(copy_of))
    assert "field 'graphs[\"segment.fp32\"].file' is '../other/segment.fp32.onnx', not a plain file name" in line


def test_a_graph_file_the_manifest_does_not_hash_is_refused(capsys, copy_of):
    shutil.copy(copy_of / "segment.fp32.onnx", copy_of / "twin.onnx")
    _edit(copy_of, lambda m: m["graphs"]["segment.fp32"].update(file="twin.onnx"))
    assert one_line_error(capsys, "verify", str(copy_of)) == (
        f"error: {copy_of}: graph 'segment.fp32' file twin.onnx has no recorded sha256")


def test_a_symlink_in_the_bundle_is_refused_whatever_it_points_to(capsys, copy_of):
    (copy_of / "alias.onnx").symlink_to("segment.fp32.onnx")  # inside the bundle, identical bytes
    line = one_line_error(capsys, "verify", str(copy_of))
    assert line == f"error: {copy_of}: alias.onnx is a symbolic link; a bundle holds plain files only"


def test_a_listed_file_replaced_by_a_symlink_is_refused(capsys, copy_of, tmp_path):
    real = tmp_path / "carry.npz"
    (copy_of / "carry_init.npz").rename(real)
    (copy_of / "carry_init.npz").symlink_to(real)  # same bytes, same sha256
    line = one_line_error(capsys, "verify", str(copy_of))
    assert line == f"error: {copy_of}: carry_init.npz is a symbolic link; a bundle holds plain files only"


def test_an_unlisted_file_is_a_warning_and_an_error_with_strict(capsys, copy_of):
    (copy_of / "notes.txt").write_text("hello")
    code, _, err = run_cli(capsys, "verify", str(copy_of), *FP32)
    assert code == 0
    assert err.strip() == (f"warning: 1 file(s) in {copy_of} not listed in the manifest: notes.txt "
                           "(not covered by the digest; --strict fails on them)")
    assert one_line_error(capsys, "verify", str(copy_of), "--strict") == (
        f"error: 1 file(s) in {copy_of} not listed in the manifest: notes.txt")


def test_a_duplicate_key_is_refused(capsys, copy_of):
    text = (copy_of / MANIFEST).read_text()
    (copy_of / MANIFEST).write_text(text.replace('"halting": {', '"halting": {"max_steps": 1, ', 1))
    line = one_line_error(capsys, "verify", str(copy_of))
    assert line == f"error: {copy_of / MANIFEST}: not valid JSON (duplicate key 'max_steps')"


def test_an_unparsable_default_policy_is_named(capsys, copy_of):
    _edit(copy_of, lambda m: m["halting"].update(default_policy="threshold:7"))
    line = one_line_error(capsys, "verify", str(copy_of))
    assert line.startswith(f"error: {copy_of / MANIFEST}: field 'halting.default_policy': halting policy")


# ---------------------------------------------------------------------------------------------- caps


CAPS = {
    "a huge halting cap": (lambda m: m["halting"].update(max_steps=10**12),
                           "field 'halting.max_steps' is 1000000000000, above the cap 1024"),
    "a float segment cap": (lambda m: m["reference"].update(max_steps=1e12),
                            "field 'reference.max_steps' must be an integer, not a number"),
    "a huge golden set": (lambda m: m["reference"].update(puzzles=10**9),
                          "field 'reference.puzzles' is 1000000000, above the cap 4096"),
    "a huge shape": (lambda m: m["graphs"]["segment.fp32"]["inputs"][0].update(shape=["batch", 10**9]),
                     "has a dimension outside 0..1048576: ['batch', 1000000000]"),
    "a huge seq_len": (lambda m: m["task"].update(seq_len=10**7), "field 'task.seq_len' is 10000000, above the cap"),
    "a huge hidden size": (lambda m: m["model"]["config"].update(hidden_size=10**8),
                           "field 'model.config.hidden_size' is 100000000, above the cap 1048576"),
    "too many files": (lambda m: m["files"].update({f"f{i}": "0" * 64 for i in range(300)}),
                       "field 'files' has 303 entries, above the cap 256"),
    "a reference too large": (lambda m: m["reference"].update(max_steps=1024, puzzles=4096),
                              "field 'reference' step_logits would be 14256 MiB"),
}


@pytest.mark.parametrize("case", list(CAPS))
def test_an_oversized_field_is_one_line_naming_it(capsys, copy_of, case):
    change, message = CAPS[case]
    _edit(copy_of, change)
    assert message in one_line_error(capsys, "verify", str(copy_of))


def test_an_oversized_reference_is_refused_before_anything_is_allocated(copy_of):
    # Before the caps, this manifest made verify allocate 3.4 GiB of per-step logits.
    _edit(copy_of, lambda m: m["reference"].update(max_steps=200000))
    script = ("import resource\nfrom hrm_edge.cli.main import main\n"
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              f"try:\n    main(['verify', {str(copy_of)!r}])\nexcept SystemExit as exc:\n    code = exc.code\n"
              "print(code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    code, grown_kib = map(int, proc.stdout.split())
    assert code == 1
    assert proc.stderr.strip() == (f"error: {copy_of / MANIFEST}: field 'reference.max_steps' is 200000, "
                                   "above the cap 1024")
    assert grown_kib < 32 * 1024, f"peak RSS grew {grown_kib / 1024:.0f} MiB during verify"


def test_reference_arrays_that_disagree_with_the_manifest_are_refused_before_loading(copy_of, monkeypatch):
    _edit(copy_of, lambda m: m["reference"].update(puzzles=3))  # the file holds 4 golden puzzles
    b = open_bundle(copy_of)
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("np.load before the shapes were checked"))
    with pytest.raises(Exception, match=r"reference.npz: inputs has shape \[4, 81\]; the manifest's reference "
                                        r"says puzzles 3"):
        b.reference()


# ---------------------------------------------------------------------------------------------- solve


def test_solve_uses_the_bundles_halting_defaults(capsys, exported):
    code, out, err = run_cli(capsys, "solve", str(exported.path), "--puzzle", PUZZLE, "--json")
    assert code == 0, err
    summary = json.loads(out.splitlines()[-1])["summary"]
    assert summary["policy"] == str(parse_policy("fixed")) and summary["max_steps"] == 3
    assert summary["mean_segments"] == 3.0


def test_explicit_solve_options_win_over_the_bundles_defaults(capsys, exported):
    code, out, err = run_cli(capsys, "solve", str(exported.path), "--puzzle", PUZZLE, "--json", "--policy", "fixed",
                             "--max-steps", "2")
    assert code == 0, err
    summary = json.loads(out.splitlines()[-1])["summary"]
    assert summary["max_steps"] == 2 and summary["mean_segments"] == 2.0
    code, out, _ = run_cli(capsys, "solve", str(exported.path), "--puzzle", PUZZLE, "--json", "--policy", "q")
    assert json.loads(out.splitlines()[-1])["summary"]["policy"] == str(parse_policy("q"))

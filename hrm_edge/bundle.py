"""The deployable bundle: a directory of ONNX graphs, `manifest.json`, the initial carry and
golden reference outputs. Reading and verifying a bundle needs only numpy (no torch).

Layout (every file but the manifest is listed with its sha256 in `Manifest.files`):

    manifest.json       schema_version, model config, task, graphs, halting defaults, versions
                        (`hrm_edge.manifest.Manifest`: the typed reader and writer)
    carry_init.npz      H_init, L_init: fp32 [hidden_size]
    reference.npz       golden outputs of the PyTorch reference (see `REFERENCE_FIELDS`)
    gate_set.npz        with FP16 or INT8 graphs: the puzzles of the export's parity gate and the
                        fp32 reference's run on them (`GATE_SET`), for `verify` to re-run the gate
    <graph>.onnx        one file per graph, described by `Manifest.graphs[<name>]` (`GraphEntry`)
    manifest.sig        optional: Ed25519 signature of the bundle digest (`hrm_edge.signing`)
    engines/            optional: TensorRT engines built on the device (`hrm-edge build`); not covered

Trust: `Manifest.digest` (sha256 of the canonical manifest, which holds every file's sha256) is the
bundle's identity. `verify_files` proves the files match the manifest; `check_digest` (a pinned
digest) or `check_signature` (a pinned public key) prove the manifest is the one that was exported.
No file is followed through a symbolic link, and arrays are sized from their headers, against the
manifest's capped sizes, before they are loaded.
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hrm_edge.act import parse_policy
from hrm_edge.errors import BundleError, PolicyError
from hrm_edge.files import sha256_file
from hrm_edge.manifest import (
    MANIFEST,
    MAX_DIM,
    MAX_REFERENCE_BYTES,
    SIGNATURE,
    GateRun,
    GraphEntry,
    Manifest,
    read_manifest,
)

CARRY_INIT = "carry_init.npz"
REFERENCE = "reference.npz"
# reference.npz: inputs int64 [N, S], puzzle_ids int64 [N], labels int64 [N, S] (0 = none),
# predictions int64 [N, S] and steps int32 [N] under the manifest's reference policy,
# step_predictions int64 [T, N, S], step_q_halt / step_q_continue fp32 [T, N] and
# step_logits fp32 [T, N, S, V] of a `fixed` run to T = max_steps.
REFERENCE_FIELDS = ("inputs", "puzzle_ids", "labels", "predictions", "steps", "step_predictions", "step_q_halt",
                    "step_q_continue", "step_logits")
# Fields of reference.npz whose first dimension is the puzzle count N, and those whose first is T.
_PER_PUZZLE = ("inputs", "puzzle_ids", "labels", "predictions", "steps")
_PER_STEP = ("step_predictions", "step_q_halt", "step_q_continue", "step_logits")
# gate_set.npz (`GateRun.file` of the export's FP16 and INT8 gates): the first five fields of reference.npz,
# same shapes and types, over the gate's puzzles (`GateRun.puzzles`; the whole validation set by default).
# Bundles exported before FP16 was gated name it int8_gate.npz; `verify` reads whatever `GateRun.file` names.
GATE_SET = "gate_set.npz"
# Where `hrm-edge build` writes engines inside a bundle (not listed in the manifest).
ENGINES = "engines"
_DIGEST = re.compile(r"(?:sha256:)?([0-9a-f]{64})")


@dataclass
class Bundle:
    """An opened bundle: its directory and parsed manifest (hashes already checked if `verified`)."""

    path: Path
    manifest: Manifest
    verified: bool = False
    _carry: dict[str, np.ndarray] | None = field(default=None, repr=False)

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.model.config

    @property
    def task(self) -> str:
        return self.manifest.task.name

    @property
    def graphs(self) -> dict[str, GraphEntry]:
        return self.manifest.graphs

    def graph(self, name: str) -> GraphEntry:
        """The manifest entry of graph `name` (a one-line error naming the available ones otherwise)."""
        if name not in self.graphs:
            raise BundleError(f"{self.path}: no graph {name!r}; available: {', '.join(sorted(self.graphs))}")
        return self.graphs[name]

    def graph_path(self, name: str) -> Path:
        return self.path / self.graph(name).file

    def carry_init(self) -> tuple[np.ndarray, np.ndarray]:
        """(H_init, L_init), fp32 [hidden_size] each."""
        if self._carry is None:
            name = self.manifest.carry_init or CARRY_INIT
            headers = npz_headers(self.path / name)
            for key in ("H_init", "L_init"):
                shape = headers.get(key, (None,))[0]
                if shape is None or len(shape) != 1 or shape[0] > MAX_DIM:
                    raise BundleError(f"{self.path}: {name} {key} has shape {shape}, not [hidden_size <= {MAX_DIM}]")
            with np.load(self.path / name) as f:
                self._carry = {k: f[k].astype(np.float32) for k in ("H_init", "L_init")}
        return self._carry["H_init"], self._carry["L_init"]

    def model_puzzle_ids(self, puzzle_ids: np.ndarray) -> np.ndarray:
        """Original puzzle identifiers -> the ids this bundle's graphs take (pruned tables remap)."""
        rows = self.manifest.puzzle_rows
        return np.asarray(puzzle_ids, np.int64) if rows is None else remap_ids(puzzle_ids, rows.kept_original_ids)

    def reference(self) -> dict[str, np.ndarray]:
        """The golden outputs (`REFERENCE_FIELDS`); their shapes are checked against the manifest's
        puzzle count and segment cap, and their size against MAX_REFERENCE_BYTES, before loading."""
        info = self.manifest.need_reference()
        path = self.path / info.file
        headers = npz_headers(path)
        total = 0
        for key in REFERENCE_FIELDS:
            if key not in headers:
                raise BundleError(f"{path}: no array {key!r}")
            shape, dtype = headers[key]
            first = info.puzzles if key in _PER_PUZZLE else info.max_steps
            if not shape or shape[0] != first:
                raise BundleError(f"{path}: {key} has shape {list(shape)}; the manifest's reference says "
                                  f"{'puzzles' if key in _PER_PUZZLE else 'max_steps'} {first}")
            total += int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        if total > MAX_REFERENCE_BYTES:
            raise BundleError(f"{path}: {total / 2**20:.0f} MiB of arrays, above the cap "
                              f"{MAX_REFERENCE_BYTES >> 20} MiB")
        with np.load(path) as f:
            return {k: f[k] for k in REFERENCE_FIELDS}

    def gate_set(self, run: GateRun) -> dict[str, np.ndarray]:
        """The puzzles of a gate that export ran (`run.file`, `GATE_SET`) and the fp32 reference's run on
        them: inputs, puzzle_ids, labels (all 0: none), predictions, steps. Shapes, integer types, token ids
        (below the vocabulary) and halting steps (1..run.max_steps) are checked: the file is untrusted."""
        path = self.path / str(run.file)
        headers = npz_headers(path)
        seq = self.manifest.task.seq_len if self.manifest.task is not None else None
        want = {"inputs": (run.puzzles, seq), "puzzle_ids": (run.puzzles,), "labels": (run.puzzles, seq),
                "predictions": (run.puzzles, seq), "steps": (run.puzzles,)}
        for key, shape in want.items():
            if key not in headers:
                raise BundleError(f"{path}: no array {key!r}")
            got, dtype = headers[key]
            if len(got) != len(shape) or any(w is not None and g != w for g, w in zip(got, shape, strict=True)) \
                    or dtype.kind not in "iu":
                raise BundleError(f"{path}: {key} is {dtype} {list(got)}; expected integers of shape "
                                  f"{['seq_len' if w is None else w for w in shape]} ({run.puzzles} puzzles)")
        total = sum(int(np.prod(headers[k][0], dtype=np.float64)) * headers[k][1].itemsize for k in want)
        if total > MAX_REFERENCE_BYTES:
            raise BundleError(f"{path}: {total / 2**20:.0f} MiB of arrays, above the cap "
                              f"{MAX_REFERENCE_BYTES >> 20} MiB")
        with np.load(path) as f:
            out = {k: f[k] for k in want}
        vocab = self.manifest.task.vocab_size if self.manifest.task is not None else None
        for key in ("inputs", "labels", "predictions"):
            if out[key].size and (out[key].min() < 0 or (vocab is not None and out[key].max() >= vocab)):
                raise BundleError(f"{path}: {key} holds token ids outside 0..{vocab - 1 if vocab else '?'}")
        if out["steps"].size and (out["steps"].min() < 1 or out["steps"].max() > run.max_steps):
            raise BundleError(f"{path}: steps outside 1..{run.max_steps}")
        return out


def npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array of an .npz file, read from the .npy headers (nothing loaded)."""
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                    else:
                        raise ValueError(f"npy format version {version}")
                out[info.filename[:-4]] = (tuple(shape), dtype)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise BundleError(f"{path}: not a readable .npz file ({str(exc).splitlines()[0]})") from None
    return out


def remap_ids(puzzle_ids: np.ndarray, kept: list[int]) -> np.ndarray:
    """Original puzzle identifiers -> rows of a pruned puzzle-embedding table (kept[i] -> i)."""
    lookup = {orig: row for row, orig in enumerate(kept)}
    missing = sorted({int(i) for i in np.asarray(puzzle_ids).ravel()} - set(lookup))
    if missing:
        raise BundleError(f"puzzle id {missing[0]} was not kept in this bundle (kept: {len(kept)} ids; "
                          "re-export with --puzzle-ids / --arc-tasks)")
    return np.array([lookup[int(i)] for i in np.asarray(puzzle_ids).ravel()], np.int64)


def open_bundle(path: str | Path, verify_hashes: bool = True) -> Bundle:
    """Open a bundle directory, checking the schema, caps and halting policies and (by default)
    every file's sha256 (`verify_files`)."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: not a bundle directory")
    mpath = path / MANIFEST
    if mpath.is_symlink():
        raise BundleError(f"{path}: {MANIFEST} is a symbolic link; a bundle holds plain files only")
    if not mpath.is_file():
        raise BundleError(f"{path}: no {MANIFEST}; not an hrm-edge bundle")
    bundle = Bundle(path, read_manifest(mpath))
    _check_policies(bundle.manifest)
    if verify_hashes:
        verify_files(bundle)
    return bundle


def _check_policies(manifest: Manifest) -> None:
    for name, part in (("halting.default_policy", manifest.halting), ("reference.policy", manifest.reference)):
        if part is not None:
            text = part.default_policy if name.startswith("halting") else part.policy
            try:
                parse_policy(text)
            except PolicyError as exc:
                raise BundleError(f"{manifest.where}: field '{name}': {exc}") from None


def _symlinks(root: Path) -> list[str]:
    """Paths (relative to `root`) of the symbolic links anywhere inside `root`, never followed."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            if os.path.islink(os.path.join(dirpath, name)):
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


def verify_files(bundle: Bundle) -> None:
    """The bundle holds no symbolic link, and every file named in the manifest is a regular file
    with its recorded sha256; every file the manifest points to (graphs, carry, reference, device
    files, reports) is one of those."""
    links = _symlinks(bundle.path)
    if links:
        raise BundleError(f"{bundle.path}: {links[0]} is a symbolic link; a bundle holds plain files only")
    files = bundle.manifest.files
    for name, digest in files.items():
        f = bundle.path / name
        if not stat.S_ISREG(os.lstat(f).st_mode if os.path.lexists(f) else 0):
            raise BundleError(f"{bundle.path}: missing file {name}")
        actual = sha256_file(f)
        if actual != digest:
            raise BundleError(f"{bundle.path}: {name} has sha256 {actual[:12]}..., the manifest says {digest[:12]}... "
                              "(tampered or truncated)")
    for what, name in referenced_files(bundle.manifest):
        if name not in files:
            raise BundleError(f"{bundle.path}: {what} file {name} has no recorded sha256")
    bundle.verified = True


def referenced_files(manifest: Manifest) -> list[tuple[str, str]]:
    """(what, file name) of every file the manifest's fields point to."""
    refs = [(f"graph {name!r}", entry.file) for name, entry in manifest.graphs.items()]
    refs += [(f"graph {name!r} report", f) for name, entry in manifest.graphs.items()
             for f in (entry.report or {}).values()]
    if manifest.carry_init is not None:
        refs.append(("carry_init", manifest.carry_init))
    if manifest.reference is not None:
        refs.append(("reference", manifest.reference.file))
    if manifest.device is not None:
        refs += [("device runtime_wheel", manifest.device.runtime_wheel), ("device readme", manifest.device.readme)]
    return refs


def unlisted_files(bundle: Bundle) -> list[str]:
    """Names in the bundle directory that the manifest does not list (besides the manifest, its
    signature and the engines/ directory of `hrm-edge build`), sorted."""
    known = {*bundle.manifest.files, MANIFEST, SIGNATURE, ENGINES}
    return sorted(name for name in os.listdir(bundle.path) if name not in known)


def parse_digest(text: str) -> str:
    """ "sha256:<64 hex>" from a digest given as that or as 64 hex digits (a one-line error otherwise)."""
    match = _DIGEST.fullmatch(text.strip().lower())
    if match is None:
        raise BundleError(f"--expect {text!r} is not a bundle digest (sha256:<64 hex digits>)")
    return f"sha256:{match.group(1)}"


def check_digest(bundle: Bundle, expected: str) -> None:
    """The bundle's digest is `expected` ("sha256:<hex>" or bare hex): the manifest, and through its
    hashes every file, is exactly the one that was exported."""
    want = parse_digest(expected)
    if bundle.manifest.digest != want:
        raise BundleError(f"{bundle.path}: bundle digest {bundle.manifest.digest}, expected {want}: not the bundle "
                          "that was exported")


def check_signature(bundle: Bundle, public_key: str | Path) -> None:
    """manifest.sig is a valid Ed25519 signature of the bundle's digest by the key in `public_key`."""
    from hrm_edge.signing import SignatureError, verify_digest

    path = bundle.path / SIGNATURE
    if not os.path.lexists(path) or not stat.S_ISREG(os.lstat(path).st_mode):
        raise SignatureError(f"{bundle.path}: no {SIGNATURE}; the bundle is not signed (export --sign KEY.pem)")
    if os.lstat(path).st_size > 1024:
        raise SignatureError(f"{path}: {os.lstat(path).st_size} bytes, not an Ed25519 signature")
    verify_digest(public_key, bundle.manifest.digest or "", path.read_bytes())

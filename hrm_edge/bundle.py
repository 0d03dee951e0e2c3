"""The deployable bundle: a directory of ONNX graphs, `manifest.json`, the initial carry and
golden reference outputs. Reading and verifying a bundle needs only numpy (no torch).

Layout (every file but the manifest is listed with its sha256 in `Manifest.files`):

    manifest.json       schema_version, model config, task, graphs, halting defaults, versions
                        (`hrm_edge.manifest.Manifest`: the typed reader and writer)
    carry_init.npz      H_init, L_init: fp32 [hidden_size]
    reference.npz       golden outputs of the PyTorch reference (see `REFERENCE_FIELDS`)
    <graph>.onnx        one file per graph, described by `Manifest.graphs[<name>]` (`GraphEntry`)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hrm_edge.errors import BundleError
from hrm_edge.files import sha256_file
from hrm_edge.manifest import MANIFEST, GraphEntry, Manifest, read_manifest

CARRY_INIT = "carry_init.npz"
REFERENCE = "reference.npz"
# reference.npz: inputs int64 [N, S], puzzle_ids int64 [N], labels int64 [N, S] (0 = none),
# predictions int64 [N, S] and steps int32 [N] under the manifest's reference policy,
# step_predictions int64 [T, N, S], step_q_halt / step_q_continue fp32 [T, N] and
# step_logits fp32 [T, N, S, V] of a `fixed` run to T = max_steps.
REFERENCE_FIELDS = ("inputs", "puzzle_ids", "labels", "predictions", "steps", "step_predictions", "step_q_halt",
                    "step_q_continue", "step_logits")


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
            with np.load(self.path / CARRY_INIT) as f:
                self._carry = {k: f[k].astype(np.float32) for k in ("H_init", "L_init")}
        return self._carry["H_init"], self._carry["L_init"]

    def model_puzzle_ids(self, puzzle_ids: np.ndarray) -> np.ndarray:
        """Original puzzle identifiers -> the ids this bundle's graphs take (pruned tables remap)."""
        rows = self.manifest.puzzle_rows
        return np.asarray(puzzle_ids, np.int64) if rows is None else remap_ids(puzzle_ids, rows.kept_original_ids)

    def reference(self) -> dict[str, np.ndarray]:
        with np.load(self.path / REFERENCE) as f:
            return {k: f[k] for k in f.files}


def remap_ids(puzzle_ids: np.ndarray, kept: list[int]) -> np.ndarray:
    """Original puzzle identifiers -> rows of a pruned puzzle-embedding table (kept[i] -> i)."""
    lookup = {orig: row for row, orig in enumerate(kept)}
    missing = sorted({int(i) for i in np.asarray(puzzle_ids).ravel()} - set(lookup))
    if missing:
        raise BundleError(f"puzzle id {missing[0]} was not kept in this bundle (kept: {len(kept)} ids; "
                          "re-export with --puzzle-ids / --arc-tasks)")
    return np.array([lookup[int(i)] for i in np.asarray(puzzle_ids).ravel()], np.int64)


def open_bundle(path: str | Path, verify_hashes: bool = True) -> Bundle:
    """Open a bundle directory, checking the schema and (by default) every file's sha256."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: not a bundle directory")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{path}: no {MANIFEST}; not an hrm-edge bundle")
    bundle = Bundle(path, read_manifest(mpath))
    if verify_hashes:
        verify_files(bundle)
    return bundle


def verify_files(bundle: Bundle) -> None:
    """Every file named in the manifest exists and has its recorded sha256."""
    files = bundle.manifest.files
    for name, digest in files.items():
        f = bundle.path / name
        if not f.is_file():
            raise BundleError(f"{bundle.path}: missing file {name}")
        actual = sha256_file(f)
        if actual != digest:
            raise BundleError(f"{bundle.path}: {name} has sha256 {actual[:12]}..., the manifest says {digest[:12]}... "
                              "(tampered or truncated)")
    for gname, entry in bundle.graphs.items():
        if entry.file not in files:
            raise BundleError(f"{bundle.path}: graph {gname!r} file {entry.file} has no recorded sha256")
    bundle.verified = True

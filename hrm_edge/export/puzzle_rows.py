"""Keep only the puzzle-embedding rows a deployment needs (ARC checkpoints carry ~1M rows).

The pruned model sees remapped identifiers: row i of the new table is original identifier
`kept[i]`. The bundle manifest records `kept`, and bundle runtimes map original ids to rows.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from hrm_edge.errors import HrmEdgeError
from hrm_edge.model.hrm import HRM
from hrm_edge.puzzles.datasets import PuzzleSet


def select_ids(num_ids: int, puzzle_ids: Iterable[int] = (), arc_tasks: Iterable[str] = (),
               identifiers: str | Path | None = None) -> list[int]:
    """Sorted original identifiers to keep: 0 (the blank identifier), the given ids, and every
    identifier whose name in the official `identifiers.json` is an ARC task or its augmentation
    (`<task>` or `<task>_t<k>_<colours>`)."""
    keep = {0, *puzzle_ids}
    tasks = list(arc_tasks)
    if tasks:
        if identifiers is None:
            raise HrmEdgeError("--arc-tasks needs --identifiers (the dataset's identifiers.json)")
        try:
            names = json.loads(Path(identifiers).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise HrmEdgeError(f"{identifiers}: cannot read identifiers ({exc})") from None
        for task in tasks:
            found = [i for i, n in enumerate(names) if n == task or str(n).startswith(f"{task}_")]
            if not found:
                raise HrmEdgeError(f"{identifiers}: no identifier for ARC task {task!r}")
            keep.update(found)
    bad = sorted(i for i in keep if not 0 <= i < num_ids)
    if bad:
        raise HrmEdgeError(f"puzzle id {bad[0]} is outside the checkpoint's 0..{num_ids - 1}")
    return sorted(keep)


def prune_puzzle_embeddings(model: HRM, kept: list[int]) -> HRM:
    """A new model whose puzzle-embedding table holds only rows `kept` (in that order)."""
    from hrm_edge.model import create_model

    if model.config.puzzle_emb_ndim == 0:
        raise HrmEdgeError("this model has no puzzle embedding to prune")
    state = model.state_dict()
    state["inner.puzzle_emb.weights"] = state["inner.puzzle_emb.weights"][torch.tensor(kept)].clone()
    pruned = create_model(dataclasses.replace(model.config, num_puzzle_identifiers=len(kept)))
    pruned.load_state_dict(state, strict=True)
    return pruned.set_compute_dtype(model.compute_dtype).eval()


def calib_for_kept_ids(pset: PuzzleSet, kept: list[int]) -> PuzzleSet:
    """The puzzles of `pset` whose original puzzle id was kept, with ids remapped to the pruned rows
    (what a pruned model is calibrated on)."""
    from hrm_edge.bundle import remap_ids

    mask = np.isin(pset.puzzle_ids, kept)
    if not mask.any():
        raise HrmEdgeError(f"no {pset.task} {pset.split} puzzle uses a kept puzzle id: pass --calib-data with "
                           "puzzles of the kept tasks")
    return dataclasses.replace(
        pset, inputs=pset.inputs[mask], labels=None if pset.labels is None else pset.labels[mask],
        puzzle_ids=remap_ids(pset.puzzle_ids[mask], kept), difficulty=pset.difficulty[mask],
        names=[n for n, m in zip(pset.names, mask, strict=False) if m],
        meta=[d for d, m in zip(pset.meta, mask, strict=False) if m])

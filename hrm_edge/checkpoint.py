"""Load HRM checkpoints in every layout users have, and write hrm-edge's own single file.

Accepted by `load_checkpoint(path)`:
- the official training layout (github sapientinc/HRM): a `step_<N>` (or `checkpoint`) file,
  or the directory holding it, with `all_config.yaml` beside it and optionally a
  `dataset.json` (beside it, in `train/`, or under the config's `data_path`);
- hrm-edge's single file `*.pt`: {"format": "hrm-edge", config, state_dict, task, provenance};
- a `*.safetensors` file with a `*.json` config of the same stem beside it.

Every torch file is read with `torch.load(..., weights_only=True)`: no arbitrary code is
ever unpickled. Every problem raises `CheckpointError` with one line naming the key or field.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickletools
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from hrm_edge.errors import CheckpointError
from hrm_edge.model.config import HRM_ARCH_NAME, HRMConfig
from hrm_edge.model.hrm import HRM

FORMAT = "hrm-edge"
FORMAT_VERSION = 1

# seq_len and vocab of each task's official encoding (used when no dataset.json is at hand).
TASK_SHAPES: dict[str, tuple[int, int]] = {
    "sudoku": (81, 11),
    "sudoku6": (36, 8),
    "maze": (900, 6),
    "arc": (900, 12),
}

_CONFIG_FIELDS = {f for f in HRMConfig.__dataclass_fields__}
_ARCH_META_FIELDS = {"name", "loss"}


@dataclass
class Checkpoint:
    """A loaded model with what is known about it."""

    model: HRM
    config: HRMConfig
    task: str | None
    provenance: dict[str, Any] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pickle_bytes(path: Path) -> bytes | None:
    """The pickle stream of a torch file (zip: its data.pkl; legacy: the file), or None."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("data.pkl")]
            return zf.read(names[0]) if names else None
    data = path.read_bytes()
    return data if data[:1] == b"\x80" else None


def _references_code(path: Path) -> bool:
    """Whether the pickle names any global (class or function) torch's weights-only loader refused.

    Scans opcodes with pickletools (nothing is executed)."""
    stream = _pickle_bytes(path)
    if stream is None:
        return False
    try:
        return any(op.name in ("GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE")
                   for op, _, _ in pickletools.genops(stream))
    except Exception:
        return False


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        if "Unsupported global" in str(exc) or _references_code(path):
            raise CheckpointError(
                f"{path}: refusing to unpickle: the file references Python code, not only tensors and "
                "plain containers (weights_only=True)") from None
        raise CheckpointError(f"{path}: not a readable torch checkpoint (corrupt, truncated or another format)"
                              ) from None


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the `_orig_mod.` (torch.compile) and `model.` (loss-head wrapper) prefixes."""
    out = {}
    for key, value in state_dict.items():
        name = key
        for prefix in ("_orig_mod.", "model."):
            if name.startswith(prefix):
                name = name[len(prefix):]
        out[name] = value
    return out


def guess_task(seq_len: int, vocab_size: int) -> str | None:
    """The task whose official encoding has this seq_len and vocab (mazes of any square size)."""
    for task, shape in TASK_SHAPES.items():
        if shape == (seq_len, vocab_size):
            return task
    if vocab_size == 6 and int(seq_len**0.5) ** 2 == seq_len:
        return f"maze:{int(seq_len**0.5)}"
    return None


def _check_tensors(state_dict: dict[str, Any], where: Path) -> None:
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{where}: entry {key!r} is a {type(value).__name__}, not a tensor")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"{where}: weight {key!r} contains NaN or Inf values")


def build_model(config: HRMConfig, state_dict: dict[str, torch.Tensor], where: Path) -> HRM:
    """An HRM in eval mode with `state_dict` loaded strictly; mismatches name the key."""
    _check_tensors(state_dict, where)
    model = HRM(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing:
        raise CheckpointError(f"{where}: checkpoint is missing {len(missing)} weight(s), first {missing[0]!r}")
    if unexpected:
        raise CheckpointError(
            f"{where}: checkpoint has {len(unexpected)} unexpected key(s), first {unexpected[0]!r}")
    for key, tensor in expected.items():
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{where}: weight {key!r} has shape {tuple(state_dict[key].shape)}, "
                                  f"the config implies {tuple(tensor.shape)}")
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


# ---------------------------------------------------------------------------- official layout

def _find_official_file(path: Path) -> Path:
    if path.is_file():
        return path
    steps = []
    for child in path.iterdir():
        m = re.fullmatch(r"step_(\d+)", child.name)
        if m and child.is_file():
            steps.append((int(m.group(1)), child))
    if steps:
        return max(steps)[1]
    if (path / "checkpoint").is_file():
        return path / "checkpoint"
    raise CheckpointError(f"{path}: no step_<N>, checkpoint, *.pt or *.safetensors file in this directory")


def _find_dataset_json(ckpt_dir: Path, data_path: str | None) -> Path | None:
    candidates = [ckpt_dir / "dataset.json", ckpt_dir / "train" / "dataset.json"]
    if data_path:
        candidates += [Path(data_path) / "train" / "dataset.json", ckpt_dir / data_path / "train" / "dataset.json"]
    return next((c for c in candidates if c.is_file()), None)


def _load_official(file: Path, seq_len: int | None, task: str | None) -> Checkpoint:
    cfg_path = file.parent / "all_config.yaml"
    if not cfg_path.is_file():
        raise CheckpointError(f"{file}: official checkpoint without all_config.yaml beside it ({cfg_path})")
    try:
        all_config = yaml.safe_load(cfg_path.read_text())
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{cfg_path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    arch = (all_config or {}).get("arch") if isinstance(all_config, dict) else None
    if not isinstance(arch, dict):
        raise CheckpointError(f"{cfg_path}: no 'arch:' section")
    name = arch.get("name")
    if name != HRM_ARCH_NAME:
        raise CheckpointError(f"{cfg_path}: unsupported arch.name {name!r} (supported: {HRM_ARCH_NAME})")

    raw = _torch_load(file)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{file}: expected a state_dict, found a {type(raw).__name__}")
    state_dict = strip_prefixes(raw)
    emb = state_dict.get("inner.embed_tokens.embedding_weight")
    if emb is None:
        raise CheckpointError(f"{file}: checkpoint is missing weight 'inner.embed_tokens.embedding_weight'")
    vocab_size = int(emb.shape[0])
    pz = state_dict.get("inner.puzzle_emb.weights")

    data_path = all_config.get("data_path")
    if data_path is None and isinstance(all_config.get("data_paths"), list) and all_config["data_paths"]:
        data_path = all_config["data_paths"][0]
    ds_path = _find_dataset_json(file.parent, data_path)
    dataset: dict[str, Any] = {}
    if ds_path is not None:
        try:
            dataset = json.loads(ds_path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{ds_path}: not valid JSON ({exc.msg})") from None

    if "seq_len" in dataset:
        seq, seq_from = int(dataset["seq_len"]), str(ds_path)
    elif seq_len is not None:
        seq, seq_from = seq_len, "--seq-len"
    elif task is not None and task.split(":")[0] in TASK_SHAPES:
        seq = int(task.split(":")[1]) ** 2 if ":" in task else TASK_SHAPES[task][0]
        seq_from = f"task preset {task!r}"
    else:
        raise CheckpointError(
            f"{file}: cannot tell seq_len: no dataset.json found (looked beside the checkpoint, in train/ "
            f"and under data_path {data_path!r}); pass --seq-len or --task")
    if "vocab_size" in dataset and int(dataset["vocab_size"]) != vocab_size:
        raise CheckpointError(f"{ds_path}: vocab_size {dataset['vocab_size']} disagrees with "
                              f"inner.embed_tokens.embedding_weight rows ({vocab_size})")
    num_ids = int(pz.shape[0]) if pz is not None else int(dataset.get("num_puzzle_identifiers", 1))

    fields = {k: v for k, v in arch.items() if k in _CONFIG_FIELDS}
    ignored = sorted(k for k in arch if k not in _CONFIG_FIELDS and k not in _ARCH_META_FIELDS)
    fields.update(seq_len=seq, vocab_size=vocab_size, num_puzzle_identifiers=num_ids)
    if "expansion" in fields:
        fields["expansion"] = float(fields["expansion"])
    config = HRMConfig.from_dict(fields)
    model = build_model(config, state_dict, file)
    step = re.fullmatch(r"step_(\d+)", file.name)
    return Checkpoint(
        model=model, config=config, task=task or guess_task(seq, vocab_size),
        provenance={
            "format": "official", "path": str(file), "sha256": sha256_file(file),
            "step": int(step.group(1)) if step else None, "config_file": str(cfg_path),
            "dataset_json": str(ds_path) if ds_path else None, "seq_len_from": seq_from,
            "ignored_arch_fields": ignored, "loss": arch.get("loss"),
        })


# ---------------------------------------------------------------------------- hrm-edge formats

def _load_single_file(file: Path, task: str | None) -> Checkpoint:
    raw = _torch_load(file)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{file}: expected a dict, found a {type(raw).__name__}")
    if raw.get("format") != FORMAT:
        if any(k.startswith(("_orig_mod.", "model.", "inner.")) for k in raw):
            return _load_official(file, None, task)
        raise CheckpointError(f"{file}: not an hrm-edge checkpoint (no 'format': 'hrm-edge' entry)")
    version = raw.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{file}: checkpoint format_version {version!r} is newer than this hrm-edge "
                              f"reads ({FORMAT_VERSION}); upgrade hrm-edge")
    for key in ("config", "state_dict"):
        if not isinstance(raw.get(key), dict):
            raise CheckpointError(f"{file}: hrm-edge checkpoint has no {key!r} dict")
    config = HRMConfig.from_dict(raw["config"])
    model = build_model(config, raw["state_dict"], file)
    provenance = dict(raw.get("provenance") or {})
    provenance.update(format="hrm-edge", path=str(file), sha256=sha256_file(file))
    return Checkpoint(model=model, config=config, task=task or raw.get("task"), provenance=provenance,
                      card=dict(raw.get("card") or {}))


def _load_safetensors(file: Path, task: str | None) -> Checkpoint:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg_path = file.with_suffix(".json")
    if not cfg_path.is_file():
        raise CheckpointError(f"{file}: safetensors weights need a config {cfg_path.name} beside them")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({exc.msg})") from None
    try:
        state_dict = load_file(str(file))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{file}: not a readable safetensors file ({str(exc).splitlines()[0]})") from None
    config = HRMConfig.from_dict(meta.get("config", meta))
    model = build_model(config, strip_prefixes(state_dict), file)
    provenance = dict(meta.get("provenance") or {})
    provenance.update(format="safetensors", path=str(file), sha256=sha256_file(file))
    return Checkpoint(model=model, config=config, task=task or meta.get("task"), provenance=provenance,
                      card=dict(meta.get("card") or {}))


def load_checkpoint(path: str | Path, seq_len: int | None = None, task: str | None = None) -> Checkpoint:
    """Load any supported checkpoint layout (see module docstring) into an eval-mode HRM on CPU."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_dir():
        singles = sorted(path.glob("*.pt")) + sorted(path.glob("*.safetensors"))
        if len(singles) == 1 and not (path / "all_config.yaml").exists():
            path = singles[0]
        else:
            return _load_official(_find_official_file(path), seq_len, task)
    if path.suffix == ".safetensors":
        return _load_safetensors(path, task)
    if path.suffix == ".pt":
        return _load_single_file(path, task)
    return _load_official(path, seq_len, task)


def save_checkpoint(path: str | Path, model: HRM, task: str | None, provenance: dict[str, Any] | None = None,
                    card: dict[str, Any] | None = None) -> Path:
    """Write hrm-edge's single file (`.pt`) or a `.safetensors` + `.json` pair, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "family": "hrm",
            "config": model.config.to_dict(), "task": task, "provenance": provenance or {}, "card": card or {}}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state_dict, tmp)
            cfg_tmp = tmp + ".json"
            Path(cfg_tmp).write_text(json.dumps(meta, indent=2))
            os.replace(cfg_tmp, path.with_suffix(".json"))
        else:
            torch.save({**meta, "state_dict": state_dict}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_official_layout(directory: str | Path, model: HRM, step: int, data_path: str = "data",
                          extra_config: dict[str, Any] | None = None, compiled: bool = True) -> Path:
    """Write `step_<N>` + `all_config.yaml` as the official trainer does (keys under
    `_orig_mod.model.` when compiled, else `model.`; H_init/L_init in bf16), plus the dataset's
    `dataset.json`, which the official builder keeps in `<data_path>/train/`, beside them."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    prefix = "_orig_mod.model." if compiled else "model."
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        if key in ("inner.H_init", "inner.L_init"):
            value = value.to(torch.bfloat16)
        state[prefix + key] = value
    torch.save(state, directory / f"step_{step}")
    arch = {k: v for k, v in cfg.to_dict().items()
            if k not in ("seq_len", "vocab_size", "num_puzzle_identifiers", "batch_size")}
    arch.update(name=HRM_ARCH_NAME, loss={"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"})
    all_config = {"arch": arch, "data_path": data_path, "global_batch_size": cfg.batch_size,
                  **(extra_config or {})}
    (directory / "all_config.yaml").write_text(yaml.safe_dump(all_config, sort_keys=True))
    dataset = {"pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": cfg.vocab_size,
               "seq_len": cfg.seq_len, "num_puzzle_identifiers": cfg.num_puzzle_identifiers,
               "total_groups": 0, "mean_puzzle_examples": 1.0, "sets": ["all"]}
    (directory / "dataset.json").write_text(json.dumps(dataset))
    return directory / f"step_{step}"

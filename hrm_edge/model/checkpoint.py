"""Load HRM and TRM checkpoints in every layout users have, and write hrm-edge's own single file.

Accepted by `load_checkpoint(path)`:
- the official training layouts (github sapientinc/HRM for HRM, github
  SamsungSAILMontreal/TinyRecursiveModels for TRM): a `step_<N>` (or `checkpoint`) file, or
  the directory holding it, with `all_config.yaml` beside it and optionally a `dataset.json`
  (beside it, in `train/`, or under the config's `data_path` / first of `data_paths`);
- hrm-edge's single file `*.pt`: {"format": "hrm-edge", family, config, state_dict, task, provenance};
- a `*.safetensors` file with a `*.json` config of the same stem beside it.

The model family ("hrm" / "trm") comes from `arch.name` in the official layout, from the
"family" field of hrm-edge's formats, and otherwise from the weight names (TRM has
`inner.L_level.*` but no `inner.H_level.*`); `provenance["family"]` and
`provenance["family_from"]` say which and how.

Every torch file is read with `torch.load(..., weights_only=True)`: no arbitrary code is
ever unpickled. Every problem raises `CheckpointError` with one line naming the key or field.
"""

from __future__ import annotations

import json
import os
import pickletools
import re
import tempfile
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml

from hrm_edge.errors import CheckpointError
from hrm_edge.files import sha256_file
from hrm_edge.model import create_model
from hrm_edge.model.config import CONFIG_CLASSES, FAMILIES, HRM_ARCH_NAME, TRM_ARCH_NAME, HRMConfig, TRMConfig
from hrm_edge.model.hrm import HRM
from hrm_edge.model.trm import TRM
from hrm_edge.puzzles.base import PuzzleError
from hrm_edge.puzzles.codecs import get_codec

FORMAT = "hrm-edge"
FORMAT_VERSION = 1

# seq_len and vocab of each task's official encoding (used when no dataset.json is at hand).
TASK_SHAPES: dict[str, tuple[int, int]] = {
    "sudoku": (81, 11),
    "sudoku6": (36, 8),
    "maze": (900, 6),
    "arc": (900, 12),
}

# The HRM copy shipped in the TRM repository; identical to the original HRM when `mlp_t` is off.
TRM_REPO_HRM_ARCH_NAME = "recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1"
# arch.name of each supported official model -> family.
ARCH_FAMILIES: dict[str, str] = {HRM_ARCH_NAME: "hrm", TRM_ARCH_NAME: "trm", TRM_REPO_HRM_ARCH_NAME: "hrm"}
# arch.name the official layout is written with, per family.
FAMILY_ARCH_NAMES: dict[str, str] = {"hrm": HRM_ARCH_NAME, "trm": TRM_ARCH_NAME}
_ARCH_META_FIELDS = {"name", "loss"}


@dataclass
class Checkpoint:
    """A loaded model with what is known about it."""

    model: HRM | TRM
    config: HRMConfig | TRMConfig
    task: str | None
    provenance: dict[str, Any] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)


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
    try:
        stream = _pickle_bytes(path)
        if stream is None:
            return False
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


def _check_names(state_dict: dict[Any, Any], where: Path | None) -> None:
    """Every key of a state dict is a string (a pickle may hold any key); else CheckpointError."""
    for key in state_dict:
        if not isinstance(key, str):
            raise CheckpointError(f"{where or 'checkpoint'}: weight name {_show(key)} is not a string")


def strip_prefixes(state_dict: dict[str, torch.Tensor], where: Path | None = None) -> dict[str, torch.Tensor]:
    """Remove the `_orig_mod.` (torch.compile) and `model.` (loss-head wrapper) prefixes.
    A key that is not a string raises CheckpointError (`where` names the file)."""
    _check_names(state_dict, where)
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


def _show(value: Any) -> str:
    """repr of a value read from a file, cut to 40 characters for a one-line message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _read_structured(path: Path, kind: str) -> Any:
    """The parsed content of a JSON or YAML (`kind`) file; anything unreadable is one CheckpointError line."""
    try:
        text = path.read_text()
        return json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.__class__.__name__}: {str(exc).splitlines()[0]})"
                              ) from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc.msg})") from None
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of 5000 digits, nesting 10,000 deep
        raise CheckpointError(f"{path}: not valid {kind} ({exc.__class__.__name__})") from None


def _optional_dict(where: Path, meta: dict[str, Any], key: str) -> dict[str, Any]:
    value = meta.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CheckpointError(f"{where}: {key!r} must be a mapping, got {type(value).__name__}")
    return dict(value)


def _optional_str(where: Path, meta: dict[str, Any], key: str) -> str | None:
    value = meta.get(key)
    if value is not None and not isinstance(value, str):
        raise CheckpointError(f"{where}: {key!r} must be a string, got {_show(value)}")
    return value


def _check_tensors(state_dict: dict[str, Any], where: Path) -> None:
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{where}: entry {key!r} is a {type(value).__name__}, not a tensor")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"{where}: weight {key!r} contains NaN or Inf values")


def family_from_keys(state_dict: dict[str, Any]) -> str | None:
    """"hrm" if any `inner.H_level.` key, "trm" if `inner.L_level.` keys only, else None."""
    if any(k.startswith("inner.H_level.") for k in state_dict):
        return "hrm"
    if any(k.startswith("inner.L_level.") for k in state_dict):
        return "trm"
    return None


_KEYS_EVIDENCE = {"hrm": "it has inner.H_level.* weights",
                  "trm": "it has inner.L_level.* weights and no inner.H_level.*"}


def _check_family_of_keys(where: Path, family: str, state_dict: dict[str, Any]) -> None:
    found = family_from_keys(state_dict)
    if found is not None and found != family:
        raise CheckpointError(f"{where}: the config is for model family {family!r} but the weights are "
                              f"{found!r} ({_KEYS_EVIDENCE[found]})")


def _resolve_family(where: Path, state_dict: dict[str, Any], *declared: Any) -> tuple[str, str]:
    """(family, how it was found) from the declared "family" fields (None = absent), else from the keys."""
    if any(d is not None and not isinstance(d, str) for d in declared):
        raise CheckpointError(f"{where}: the model family field must be a string like 'hrm' or 'trm'")
    values = {d for d in declared if d is not None}
    if len(values) > 1:
        raise CheckpointError(f"{where}: conflicting model family fields {sorted(map(str, values))}")
    if values:
        family = values.pop()
        if family not in FAMILIES:
            raise CheckpointError(f"{where}: unknown model family {family!r}; known: {', '.join(FAMILIES)}")
        return family, "family field"
    found = family_from_keys(state_dict)
    return (found, "keys") if found else ("hrm", "default")


def build_model(config: HRMConfig | TRMConfig, state_dict: dict[str, torch.Tensor], where: Path) -> HRM | TRM:
    """An HRM or TRM (by the config's family) in eval mode with `state_dict` loaded strictly;
    mismatches name the key."""
    _check_tensors(state_dict, where)
    _check_family_of_keys(where, config.family, state_dict)
    # Names and shapes from a model on the meta device (no memory); the real one is created only
    # once every weight is known to fit, so its size is bounded by the file's.
    with torch.device("meta"):
        expected = create_model(config).state_dict()
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
    model = create_model(config)
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


def _is_file(path: Path) -> bool:
    """Path.is_file that is False, not an exception, for names the OS refuses (too long, NUL bytes)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _find_dataset_json(ckpt_dir: Path, data_path: Any) -> Path | None:
    """dataset.json beside the checkpoint, in its train/, or under `data_path` (ignored unless a string)."""
    candidates = [ckpt_dir / "dataset.json", ckpt_dir / "train" / "dataset.json"]
    if isinstance(data_path, str) and data_path:
        candidates += [Path(data_path) / "train" / "dataset.json", ckpt_dir / data_path / "train" / "dataset.json"]
    return next((c for c in candidates if _is_file(c)), None)


def _dataset_int(ds_path: Path | None, dataset: dict[str, Any], key: str) -> int | None:
    """An integer field of dataset.json, None when absent; any other type is a CheckpointError."""
    value = dataset.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise CheckpointError(f"{ds_path}: {key!r} must be an integer, got {_show(value)}")
    return value


def _weight_2d(file: Path, state_dict: dict[str, Any], key: str) -> torch.Tensor | None:
    """The 2-D tensor `key` of a state dict (None when absent); any other value is a CheckpointError."""
    value = state_dict.get(key)
    if value is not None and not (isinstance(value, torch.Tensor) and value.ndim == 2):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise CheckpointError(f"{file}: weight {key!r} must be a 2-D tensor, got {shape}")
    return value


def _seq_len_of_task(task: str | None) -> int | None:
    """seq_len of a task name's official encoding ("maze:15" -> 225), None for no or an unknown task."""
    if task is None:
        return None
    try:
        return get_codec(task).seq_len
    except PuzzleError:
        return None


def _load_official(file: Path, seq_len: int | None, task: str | None) -> Checkpoint:
    cfg_path = file.parent / "all_config.yaml"
    if not cfg_path.is_file():
        raise CheckpointError(f"{file}: official checkpoint without all_config.yaml beside it ({cfg_path})")
    all_config = _read_structured(cfg_path, "YAML")
    arch = all_config.get("arch") if isinstance(all_config, dict) else None
    if not isinstance(arch, dict):
        raise CheckpointError(f"{cfg_path}: no 'arch:' section")
    name = arch.get("name")
    if name is not None and (not isinstance(name, str) or name not in ARCH_FAMILIES):
        shown = repr(name) if isinstance(name, str) else _show(name)
        raise CheckpointError(f"{cfg_path}: unsupported arch.name {shown} (supported: {', '.join(ARCH_FAMILIES)})")
    if name == TRM_REPO_HRM_ARCH_NAME and arch.get("mlp_t"):
        raise CheckpointError(f"{cfg_path}: arch {name!r} with mlp_t: true is not supported (its HRM "
                              "without mlp_t is)")

    raw = _torch_load(file)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{file}: expected a state_dict, found a {type(raw).__name__}")
    state_dict = strip_prefixes(raw, file)
    if name is not None:
        family, family_from = ARCH_FAMILIES[name], "arch.name"
        _check_family_of_keys(file, family, state_dict)
    else:
        family, family_from = family_from_keys(state_dict), "keys"
        if family is None:
            raise CheckpointError(f"{cfg_path}: no arch.name, and the weights have neither inner.H_level.* (HRM) "
                                  "nor inner.L_level.* (TRM) keys")
    cls = CONFIG_CLASSES[family]
    emb = _weight_2d(file, state_dict, "inner.embed_tokens.embedding_weight")
    if emb is None:
        raise CheckpointError(f"{file}: checkpoint is missing weight 'inner.embed_tokens.embedding_weight'")
    vocab_size = int(emb.shape[0])
    pz = _weight_2d(file, state_dict, "inner.puzzle_emb.weights")

    data_path = all_config.get("data_path")
    if data_path is None and isinstance(all_config.get("data_paths"), list) and all_config["data_paths"]:
        data_path = all_config["data_paths"][0]
    ds_path = _find_dataset_json(file.parent, data_path)
    dataset: dict[str, Any] = {}
    if ds_path is not None:
        dataset = _read_structured(ds_path, "JSON")
        if not isinstance(dataset, dict):
            raise CheckpointError(f"{ds_path}: expected a JSON object, got {type(dataset).__name__}")
    ds_seq, ds_vocab = _dataset_int(ds_path, dataset, "seq_len"), _dataset_int(ds_path, dataset, "vocab_size")
    ds_ids = _dataset_int(ds_path, dataset, "num_puzzle_identifiers")

    field_names = {f.name for f in fields(cls)}
    arch_fields = {k: v for k, v in arch.items() if k in field_names}
    # The official default is 0 (no puzzle embedding); the table's width is the ground truth.
    arch_fields.setdefault("puzzle_emb_ndim", int(pz.shape[1]) if pz is not None else 0)
    seq_weights = _seq_len_from_weights(cls, arch_fields, state_dict)
    task_seq = _seq_len_of_task(task)

    if ds_seq is not None:
        seq, seq_from = ds_seq, str(ds_path)
    elif seq_len is not None:
        seq, seq_from = seq_len, "--seq-len"
    elif seq_weights is not None:
        seq, seq_from = seq_weights
    elif task_seq is not None:
        seq, seq_from = task_seq, f"task preset {task!r}"
    else:
        raise CheckpointError(
            f"{file}: cannot tell seq_len: no dataset.json found (looked beside the checkpoint, in train/ "
            f"and under data_path {data_path!r}); pass --seq-len or --task")
    if ds_vocab is not None and ds_vocab != vocab_size:
        raise CheckpointError(f"{ds_path}: vocab_size {ds_vocab} disagrees with "
                              f"inner.embed_tokens.embedding_weight rows ({vocab_size})")
    num_ids = int(pz.shape[0]) if pz is not None else (1 if ds_ids is None else ds_ids)

    ignored = sorted(str(k) for k in arch if k not in field_names and k not in _ARCH_META_FIELDS)
    arch_fields.update(seq_len=seq, vocab_size=vocab_size, num_puzzle_identifiers=num_ids)
    config = cls.from_dict(arch_fields)
    model = build_model(config, state_dict, file)
    step = re.fullmatch(r"step_(\d+)", file.name)
    return Checkpoint(
        model=model, config=config, task=task or guess_task(seq, vocab_size),
        provenance={
            "format": "official", "family": family, "family_from": family_from, "arch_name": name,
            "path": str(file), "sha256": sha256_file(file),
            "step": int(step.group(1)) if step else None, "config_file": str(cfg_path),
            "dataset_json": str(ds_path) if ds_path else None, "seq_len_from": seq_from,
            "ignored_arch_fields": ignored, "loss": arch.get("loss"),
        })


def _seq_len_from_weights(cls: type[HRMConfig] | type[TRMConfig], arch_fields: dict[str, Any],
                          state_dict: dict[str, torch.Tensor]) -> tuple[int, str] | None:
    """(seq_len, the key it came from) when a weight's shape spans the positions: learned position
    embeddings [P, D] (both families) or TRM's token-mixing MLP [P, inter]; seq_len = P - prefix."""
    for key in ("inner.embed_pos.embedding_weight", "inner.L_level.layers.0.mlp_t.down_proj.weight"):
        w = state_dict.get(key)
        if isinstance(w, torch.Tensor) and w.ndim == 2:
            break
    else:
        return None
    defaults = {f.name: f.default for f in fields(cls)}
    hidden = arch_fields.get("hidden_size", defaults["hidden_size"])
    ndim = arch_fields["puzzle_emb_ndim"]
    prefix = arch_fields.get("puzzle_emb_len", 0) if cls is TRMConfig else 0
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (hidden, ndim, prefix)) \
            or hidden == 0:
        return None  # the config check names the bad field
    if prefix == 0:  # HRM always, TRM when 0: ceil(puzzle_emb_ndim / hidden_size)
        prefix = -(-ndim // hidden)
    seq = int(w.shape[0]) - prefix
    return (seq, f"weight {key!r}") if seq > 0 else None


# ---------------------------------------------------------------------------- hrm-edge formats

def _load_single_file(file: Path, task: str | None) -> Checkpoint:
    raw = _torch_load(file)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{file}: expected a dict, found a {type(raw).__name__}")
    if raw.get("format") != FORMAT:
        if any(isinstance(k, str) and k.startswith(("_orig_mod.", "model.", "inner.")) for k in raw):
            return _load_official(file, None, task)
        raise CheckpointError(f"{file}: not an hrm-edge checkpoint (no 'format': 'hrm-edge' entry)")
    version = raw.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{file}: checkpoint format_version {version!r} is newer than this hrm-edge "
                              f"reads ({FORMAT_VERSION}); upgrade hrm-edge")
    for key in ("config", "state_dict"):
        if not isinstance(raw.get(key), dict):
            raise CheckpointError(f"{file}: hrm-edge checkpoint has no {key!r} dict")
    state_dict = raw["state_dict"]
    _check_names(state_dict, file)
    return _checkpoint(file, file, state_dict, raw, raw["config"], "hrm-edge", task)


def _checkpoint(file: Path, meta_file: Path, state_dict: dict[str, Any], meta: dict[str, Any],
                config_dict: dict[str, Any], fmt: str, task: str | None) -> Checkpoint:
    """A hrm-edge file's checkpoint (`.pt`, or `.safetensors` with `meta_file` its `.json`): the
    family, config, provenance, card and task from `meta`, the model built from `state_dict`."""
    family, family_from = _resolve_family(meta_file, state_dict, meta.get("family"), config_dict.get("family"))
    config = CONFIG_CLASSES[family].from_dict({k: v for k, v in config_dict.items() if k != "family"})
    provenance, card = _optional_dict(meta_file, meta, "provenance"), _optional_dict(meta_file, meta, "card")
    saved_task = _optional_str(meta_file, meta, "task")
    model = build_model(config, state_dict, file)
    provenance.update(format=fmt, family=family, family_from=family_from, path=str(file), sha256=sha256_file(file))
    return Checkpoint(model=model, config=config, task=task or saved_task, provenance=provenance, card=card)


def _load_safetensors(file: Path, task: str | None) -> Checkpoint:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg_path = file.with_suffix(".json")
    if not cfg_path.is_file():
        raise CheckpointError(f"{file}: safetensors weights need a config {cfg_path.name} beside them")
    meta = _read_structured(cfg_path, "JSON")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object, got {type(meta).__name__}")
    try:
        state_dict = load_file(str(file))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{file}: not a readable safetensors file ({str(exc).splitlines()[0]})") from None
    state_dict = strip_prefixes(state_dict, file)
    cfg = meta.get("config", meta)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path}: 'config' is not a dict")
    return _checkpoint(file, cfg_path, state_dict, meta, cfg, "safetensors", task)


def load_checkpoint(path: str | Path, seq_len: int | None = None, task: str | None = None) -> Checkpoint:
    """Load any supported checkpoint layout (see module docstring) into an eval-mode HRM or TRM on CPU."""
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


def save_checkpoint(path: str | Path, model: HRM | TRM, task: str | None, provenance: dict[str, Any] | None = None,
                    card: dict[str, Any] | None = None) -> Path:
    """Write hrm-edge's single file (`.pt`) or a `.safetensors` + `.json` pair, atomically.
    The model family is recorded at the top level and in the config dict."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "family": model.config.family,
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


def write_official_layout(directory: str | Path, model: HRM | TRM, step: int, data_path: str = "data",
                          extra_config: dict[str, Any] | None = None, compiled: bool = True) -> Path:
    """Write `step_<N>` + `all_config.yaml` as the official trainer of the model's family does
    (keys under `_orig_mod.model.` when compiled, else `model.`; H_init/L_init in the forward
    dtype, bf16 by default, as both official models create them; HRM: `data_path`; TRM:
    `data_paths: [data_path]`), plus the dataset's `dataset.json`, which the official builder
    keeps in `<data_path>/train/`, beside them. TRM runs with `ema=True` save the EMA copy
    under the same names, so one writer serves both."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    prefix = "_orig_mod.model." if compiled else "model."
    init_dtype = getattr(torch, cfg.forward_dtype)
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        if key in ("inner.H_init", "inner.L_init"):
            value = value.to(init_dtype)
        state[prefix + key] = value
    torch.save(state, directory / f"step_{step}")
    arch = {k: v for k, v in cfg.to_dict().items()
            if k not in ("family", "seq_len", "vocab_size", "num_puzzle_identifiers", "batch_size")}
    arch.update(name=FAMILY_ARCH_NAMES[cfg.family],
                loss={"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"})
    if cfg.family == "trm":
        data = {"data_paths": [data_path], "data_paths_test": [], "ema": False}
    else:
        data = {"data_path": data_path}
    all_config = {"arch": arch, **data, "global_batch_size": cfg.batch_size, **(extra_config or {})}
    (directory / "all_config.yaml").write_text(yaml.safe_dump(all_config, sort_keys=True))
    dataset = {"pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": cfg.vocab_size,
               "seq_len": cfg.seq_len, "num_puzzle_identifiers": cfg.num_puzzle_identifiers,
               "total_groups": 0, "mean_puzzle_examples": 1.0, "sets": ["all"]}
    (directory / "dataset.json").write_text(json.dumps(dataset))
    return directory / f"step_{step}"

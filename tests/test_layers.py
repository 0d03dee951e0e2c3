"""The package's structure: folders are pipeline stages, imports point one way, and the device side
never needs torch. Read from the source with `ast` (every import, also those inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hrm_edge"

# Lowest first. A module may import its own layer and those below it, never one above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("hrm_edge", "hrm_edge.errors", "hrm_edge.files", "hrm_edge.contract", "hrm_edge.progress"),
    ("hrm_edge.puzzles", "hrm_edge.act", "hrm_edge.continuous", "hrm_edge.manifest", "hrm_edge.signing"),
    ("hrm_edge.bundle", "hrm_edge.parity"),
    ("hrm_edge.model",),
    ("hrm_edge.runtimes",),
    ("hrm_edge.export",),
    ("hrm_edge.quant",),
    ("hrm_edge.train", "hrm_edge.quant.qat", "hrm_edge.quant.distill"),  # QAT fine-tunes with the trainer
    ("hrm_edge.serving",),
    ("hrm_edge.bench",),
    ("hrm_edge.cli",),
)
# Modules a device without torch imports (the bundle side): none of them may reach torch, not even
# through a lazy import inside a function.
TORCH_FREE = ("hrm_edge.errors", "hrm_edge.files", "hrm_edge.contract", "hrm_edge.progress", "hrm_edge.puzzles",
              "hrm_edge.act", "hrm_edge.continuous", "hrm_edge.manifest", "hrm_edge.signing", "hrm_edge.bundle",
              "hrm_edge.parity", "hrm_edge.runtimes", "hrm_edge.serving", "hrm_edge.model.config")
# The TensorRT checker and builder read ONNX files with the `onnx` package; nothing else on the
# device side does.
ONNX_FREE = ("hrm_edge.progress", "hrm_edge.puzzles", "hrm_edge.act", "hrm_edge.continuous", "hrm_edge.manifest",
             "hrm_edge.bundle", "hrm_edge.parity", "hrm_edge.serving", "hrm_edge.runtimes.ort",
             "hrm_edge.runtimes.openvino", "hrm_edge.runtimes.solver",
             "hrm_edge.runtimes.trt.runner")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names; `from a import b` counts a.b when it is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        graph[name] = {m for m in _imports(path) if m in files or not m.startswith("hrm_edge")}
    return graph


GRAPH = _graph()


def _layer(module: str) -> int:
    best, index = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            package = prefix != "hrm_edge"  # the root package's own __init__, not everything under it
            if (module == prefix or (package and module.startswith(prefix + "."))) and len(prefix) > best:
                best, index = len(prefix), i
    return index


def test_every_module_has_a_layer():
    assert [m for m in GRAPH if _layer(m) < 0] == []


def test_imports_never_point_to_a_higher_layer():
    upward = [f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets
              if t.startswith("hrm_edge") and _layer(t) > _layer(m)]
    assert upward == []


def test_no_import_cycle_between_files():
    internal = {m: {t for t in ts if t in GRAPH and t != m} for m, ts in GRAPH.items()}
    # A package's __init__ importing its own submodules is how a package re-exports; not a cycle.
    internal = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in internal.items()}
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(internal[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join([*stack[stack.index(t):], t]))
            elif t not in state:
                visit(t, [*stack, t])
        state[m] = 2

    for m in sorted(internal):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_bench_is_imported_only_by_the_cli():
    importers = sorted(m for m, ts in GRAPH.items() if any(t.startswith("hrm_edge.bench") for t in ts)
                       and not m.startswith(("hrm_edge.bench", "hrm_edge.cli")))
    assert importers == []


def _reaches(root: str, packages: tuple[str, ...]) -> dict[str, str]:
    """Modules under `root`, or reached from it through hrm_edge imports, that import one of `packages`."""
    seen, todo, hits = set(), [m for m in GRAPH if m == root or m.startswith(root + ".")], {}
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        for t in GRAPH.get(m, ()):
            if t.split(".")[0] in packages:
                hits[m] = t
            elif t in GRAPH:
                todo.append(t)
    return hits


@pytest.mark.parametrize("root", TORCH_FREE)
def test_device_side_never_reaches_torch(root):
    assert _reaches(root, ("torch", "onnxscript", "safetensors")) == {}


@pytest.mark.parametrize("root", ONNX_FREE)
def test_solving_side_needs_only_onnxruntime(root):
    """The `onnx` package is for writing and checking graphs; solving a bundle needs onnxruntime alone."""
    assert _reaches(root, ("onnx",)) == {}

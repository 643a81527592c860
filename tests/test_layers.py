"""The direction of the imports, read from the source (every import statement, function-local ones included):
modeling/ (the Hub remote code) imports only torch, transformers, the standard library and its own files; the
`evaluate` metric modules import nothing of the project beyond their own folder; training's layers (data <
callbacks < stages < recipe < commands and the evaluation runners) import only downwards; no private name crosses
a module; no module imports itself through others; and an import inside a function says why it is there."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("modeling", "training", "eval", "space")
METRIC_FOLDERS = ("eval/entropy_allocation", "eval/asr_error_rate")


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = _modules()


def _imports(module: str) -> list[str]:
    """Absolute names of what `module` imports (for `from X import y`: X, and X.y where that is a module)."""
    path = MODULES[module]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.append(target)
            names += [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in MODULES]
    return names


def _project(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def test_the_hub_code_imports_only_torch_transformers_and_the_standard_library():
    """(One exception, part of transformers' own config idiom: transformers 5 configs are `@strict` dataclasses
    from `huggingface_hub.dataclasses`, a package transformers always installs, imported there the same way.)"""
    allowed = {"torch", "transformers"} | set(sys.stdlib_module_names)
    for module in (m for m in MODULES if m.startswith("modeling")):
        for name in _imports(module):
            top = name.split(".")[0]
            ok = top == "modeling" or top in allowed or name == "huggingface_hub.dataclasses"
            assert ok, f"{module} imports {name}"


@pytest.mark.parametrize("folder", METRIC_FOLDERS)
def test_the_metric_modules_import_nothing_of_the_project_beyond_their_folder(folder):
    package = folder.replace("/", ".")
    for module in (m for m in MODULES if m == package or m.startswith(package + ".")):
        for name in _imports(module):
            assert not _project(name) or name.startswith(package), f"{module} imports {name}"


# training's layers, lowest first: each imports only from the layers below it (and from modeling and the metric
# modules); the config, model-building and pipeline modules at the top of training/ sit below all of them
LAYERS = (
    ("training.data",),
    ("training.callbacks",),
    ("training.stages",),
    ("training.recipe",),
    ("training.commands", "eval.runners"),
)


@pytest.mark.parametrize("layer", range(len(LAYERS) - 1))
def test_each_training_layer_imports_only_the_layers_below_it(layer):
    above = tuple(p for upper in LAYERS[layer + 1 :] for p in upper)
    for module in (m for m in MODULES if m.startswith(LAYERS[layer])):
        for name in _imports(module):
            assert not name.startswith(above), f"{module} imports {name}"


def test_the_base_modules_import_no_layer():
    base = ("training.config", "training.build", "training.inference")
    layers = tuple(p for layer in LAYERS for p in layer if p != "training.data")
    for module in base:
        for name in _imports(module):
            assert not name.startswith(layers), f"{module} imports {name}"


def test_no_private_name_crosses_a_module():
    """`from X import _name` of a project module X: a name private to X used elsewhere."""
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and _project(node.module or ""):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{module} imports {private} from {node.module}"


def test_no_import_cycle():
    graph = {m: {n for n in _imports(m) if n in MODULES and n != m} for m in MODULES}
    # Tarjan's strongly connected components: any with more than one module is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_scan_sees_what_it_checks():
    """The checks above would pass on an empty scan: the scan finds the modules and their imports."""
    assert {"modeling.generation_entropy_asr", "training.commands.train", "training.stages.lifecycle"} <= set(
        MODULES
    )
    assert "training.stages.lifecycle" in _imports("training.commands.train")
    assert "training.callbacks.hot_swap" in _imports("training.stages.sft")
    assert "modeling.phonemizer_entropy_asr" in _imports("modeling.generation_entropy_asr")
    assert "torch" in _imports("modeling.generation_entropy_asr")


def _function_local_imports(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found |= {n.lineno for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return sorted(found)


def _gives_a_reason(lines: list[str], lineno: int) -> bool:
    """`# lazy: why` on the import's line, or on the comment line above the run of imports it belongs to."""
    if "# lazy:" in lines[lineno - 1]:
        return True
    i = lineno - 2
    while i >= 0 and lines[i].strip().startswith(("import ", "from ")):
        i -= 1
    return i >= 0 and lines[i].strip().startswith("# lazy:")


def test_a_function_local_import_gives_its_reason():
    """Imports belong at the top of a module; one inside a function (to keep `--help` fast, to set something up
    before a library loads, to leave an optional or slow library out of the paths that do not need it) says why
    with a `# lazy:` comment."""
    missing = []
    for module, path in MODULES.items():
        lines = path.read_text(encoding="utf-8").splitlines()
        missing += [f"{module}:{n}" for n in _function_local_imports(path) if not _gives_a_reason(lines, n)]
    assert missing == []


def test_the_reason_check_finds_function_local_imports(tmp_path):
    source = "import os\n\n\ndef f():\n    import json\n\n    # lazy: slow\n    import csv\n    import re\n"
    path = tmp_path / "m.py"
    path.write_text(source)
    lines = source.splitlines()
    assert _function_local_imports(path) == [5, 8, 9]
    assert [_gives_a_reason(lines, n) for n in (5, 8, 9)] == [False, True, True]

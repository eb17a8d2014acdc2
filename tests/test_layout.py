"""The package is layered: each subpackage imports only from the layers below it, and there is no import circle."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import lightning_unlearn

PACKAGE = Path(lightning_unlearn.__file__).parent

# Bottom to top: a module may import from its own layer and the ones before it, never from a later one.
LAYERS = [
    ["utilities"],
    ["functional"],
    ["distributed"],
    ["integrations", "data"],
    ["evaluation"],
    ["metrics"],
    ["callbacks"],
    ["testbed"],  # a fixture: the model, its records and the testbed-tuned settings (data), no method or demo
    ["modules"],
    ["methods"],
    ["unlearning", "verification", "planning"],
    ["demo"],  # an application, as the CLI is
    ["cli"],
]
LAYER = {part: depth for depth, parts in enumerate(LAYERS) for part in parts}


def modules() -> list[str]:
    return sorted(
        name for _, name, _ in pkgutil.walk_packages([str(PACKAGE)], "lightning_unlearn.") if not name.endswith("__")
    )


def part(module: str) -> str:
    """The layer part a module belongs to: its subpackage or top-level module (``lightning_unlearn.x.y`` -> ``x``)."""
    return module.split(".")[1]


def imports(module: str, top_level_only: bool = False) -> set[str]:
    """The ``lightning_unlearn`` modules ``module`` imports (``from a.b import c`` counts as ``a.b``); with
    ``top_level_only``, only the imports that run when it is imported (not those inside functions)."""
    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lightning_unlearn"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("lightning_unlearn")}
    return found


def test_every_subpackage_and_module_has_a_layer_and_a_docstring():
    parts = {part(module) for module in modules()}
    assert parts <= set(LAYER), f"put {sorted(parts - set(LAYER))} in a layer of tests/test_layout.py"
    for module in modules():
        assert ast.get_docstring(ast.parse(Path(importlib.util.find_spec(module).origin).read_text())), module


@pytest.mark.parametrize("module", modules())
def test_no_module_imports_from_a_higher_layer(module):
    higher = [
        imported
        for imported in imports(module)
        if imported != "lightning_unlearn" and LAYER[part(imported)] > LAYER[part(module)]
    ]
    assert not higher, f"{module} (layer {LAYER[part(module)]}) imports from a higher layer: {higher}"
    assert "lightning_unlearn" not in imports(module), f"{module} imports the package's top: import the module itself"


def test_no_import_circle():
    known = set(modules())

    def with_parents(module: str) -> set[str]:  # importing a.b.c runs a.b's __init__ first
        parts = module.split(".")
        return {".".join(parts[:n]) for n in range(2, len(parts) + 1)} & known

    # A module's own packages are being imported already when it runs: importing their other modules is no circle.
    graph = {
        module: {p for i in imports(module, top_level_only=True) for p in with_parents(i)} - with_parents(module)
        for module in modules()
    }
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import circle: " + " -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        for imported in graph[module]:
            visit(imported, [*path, module])
        done.add(module)

    for module in graph:
        visit(module, [])


#: The one function allowed past 80 lines: the CLI's argument declarations, one call per flag.
LONG_FUNCTIONS_ALLOWED = {("lightning_unlearn.cli.main", "parser")}


def test_functions_are_short_and_the_base_class_file_small():
    long = []
    for module in modules():
        tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
        for node in ast.walk(tree):
            function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            if function and node.end_lineno - node.lineno >= 80 and (module, node.name) not in LONG_FUNCTIONS_ALLOWED:
                long.append(f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, long
    assert len((PACKAGE / "modules" / "base.py").read_text().splitlines()) <= 300

"""The house's import rules, checked on the source: no arrow from db/, messaging/
or storage/ up to the domain or the application layer, and no import by name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TOOLKIT = Path(__file__).resolve().parents[1] / "toolkit"

# What each layer may import from the toolkit (besides itself).
# toolkit.aio.X is layer X: the async twin obeys the same rules; the
# concurrency primitives (sync and async) sit under every layer.
ALLOWED = {
    "toolkit.concurrency": set(),
    "toolkit.errors": set(),
    "toolkit.config": {"toolkit.errors", "toolkit.concurrency"},
    "toolkit.records": {"toolkit.errors", "toolkit.concurrency"},
    "toolkit.db": {"toolkit.errors", "toolkit.config", "toolkit.records", "toolkit.concurrency"},
    "toolkit.cache": {"toolkit.errors", "toolkit.config", "toolkit.concurrency"},
    "toolkit.messaging": {
        "toolkit.errors",
        "toolkit.config",
        "toolkit.records",
        "toolkit.db",
        "toolkit.concurrency",
    },
    "toolkit.storage": {
        "toolkit.errors",
        "toolkit.config",
        "toolkit.records",
        "toolkit.db",
        "toolkit.concurrency",
    },
}


def layer_of(module: str) -> str:
    if module.startswith("toolkit.aio."):
        module = "toolkit." + module.removeprefix("toolkit.aio.")
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return module


def toolkit_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name == "toolkit" or name.startswith("toolkit.")}


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(TOOLKIT.rglob("*.py")):
        parts = path.relative_to(TOOLKIT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append((name, path))
    return found


@pytest.mark.parametrize(("module", "path"), modules(), ids=[m for m, _ in modules()])
def test_lower_layers_never_import_upward(module: str, path: Path) -> None:
    layer = layer_of(module)
    if layer not in ALLOWED:
        return  # the top of the house (repositories, workflows, integrations, cli) may import down
    upward = {
        name
        for name in toolkit_imports(path)
        if layer_of(name) != layer and layer_of(name) not in ALLOWED[layer]
    }
    assert upward == set(), f"{module} ({layer}) imports {sorted(upward)}"


def test_no_module_imports_another_by_name_except_the_catalog_of_the_applications() -> None:
    by_name = [
        module
        for module, path in modules()
        if "import_module" in path.read_text(encoding="utf-8") and module != "toolkit.catalog"
    ]
    # storage loads its own submodules lazily (same layer); the worker loads the
    # application's handlers named on its command line (the top of the house)
    assert by_name == ["toolkit.storage", "toolkit.workflows.handlers"]


def test_settings_do_not_import_the_database_driver() -> None:
    tree = ast.parse((TOOLKIT / "config.py").read_text(encoding="utf-8"))
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not {name for name in imported if name.split(".")[0] == "psycopg"}

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


def is_toolkit_module(name: str) -> bool:
    """True if ``name`` is a module or package of the toolkit's source tree."""
    relative = Path(*name.split("."))
    return (TOOLKIT.parent / relative.with_suffix(".py")).is_file() or (
        TOOLKIT.parent / relative / "__init__.py"
    ).is_file()


def absolute_imports(node: ast.ImportFrom, module: str, is_package: bool) -> set[str]:
    """What ``from ... import ...`` in ``module`` names, as absolute module names.

    A relative import resolves as Python resolves it: against the module's
    package (the module itself for an ``__init__``), one package up per extra
    dot. ``from . import x`` names the submodule ``x`` when there is one, else
    the package (``x`` is then one of its attributes).
    """
    if node.level == 0:
        return {node.module} if node.module else set()
    package = module.split(".") if is_package else module.split(".")[:-1]
    if node.level > len(package):
        raise AssertionError(f"{module}: 'from {'.' * node.level}' goes above the toolkit")
    base = ".".join(package[: len(package) - (node.level - 1)])
    if node.module:
        return {f"{base}.{node.module}"}
    return {
        f"{base}.{alias.name}" if is_toolkit_module(f"{base}.{alias.name}") else base
        for alias in node.names
    }


def toolkit_imports(source: str, module: str, is_package: bool = False) -> set[str]:
    """The toolkit modules that ``module`` (whose text is ``source``) imports, relative
    imports resolved to absolute names."""
    tree = ast.parse(source)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.update(absolute_imports(node, module, is_package))
    return {name for name in found if name == "toolkit" or name.startswith("toolkit.")}


def upward_imports(module: str, source: str, is_package: bool = False) -> set[str]:
    """The imports of ``module`` that its layer does not allow (none above the layers)."""
    layer = layer_of(module)
    if layer not in ALLOWED:
        return set()  # the top of the house (repositories, workflows, integrations, cli)
    return {
        name
        for name in toolkit_imports(source, module, is_package)
        if layer_of(name) != layer and layer_of(name) not in ALLOWED[layer]
    }


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(TOOLKIT.rglob("*.py")):
        parts = path.relative_to(TOOLKIT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append((name, path))
    return found


@pytest.mark.parametrize(("module", "path"), modules(), ids=[m for m, _ in modules()])
def test_lower_layers_never_import_upward(module: str, path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    upward = upward_imports(module, source, is_package=path.name == "__init__.py")
    assert upward == set(), f"{module} ({layer_of(module)}) imports {sorted(upward)}"


@pytest.mark.parametrize(
    ("module", "is_package", "statement", "resolved"),
    [
        ("toolkit.db.fake", False, "from ..workflows import service", {"toolkit.workflows"}),
        ("toolkit.db.fake", False, "from .. import workflows", {"toolkit.workflows"}),
        ("toolkit.db.fake", False, "from . import database", {"toolkit.db.database"}),
        ("toolkit.db.fake", False, "from . import not_a_module", {"toolkit.db"}),
        ("toolkit.db", True, "from .database import connect", {"toolkit.db.database"}),
        ("toolkit.aio.db.fake", False, "from ...workflows import x", {"toolkit.workflows"}),
        ("toolkit.aio.db.fake", False, "from ..messaging import x", {"toolkit.aio.messaging"}),
    ],
)
def test_relative_imports_resolve_to_absolute_names(
    module: str, is_package: bool, statement: str, resolved: set[str]
) -> None:
    assert toolkit_imports(statement, module, is_package) == resolved


def test_an_upward_relative_import_is_caught_like_an_absolute_one() -> None:
    relative = "from ..workflows import service\nfrom . import database\n"
    absolute = "from toolkit.workflows import service\nfrom toolkit.db import database\n"
    assert upward_imports("toolkit.db.fake", relative) == {"toolkit.workflows"}
    assert upward_imports("toolkit.db.fake", absolute) == {"toolkit.workflows"}
    assert upward_imports("toolkit.aio.storage.fake", "from ..repositories import x") == {
        "toolkit.aio.repositories"
    }
    with pytest.raises(AssertionError, match="goes above the toolkit"):
        toolkit_imports("from .... import x", "toolkit.db.fake")


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

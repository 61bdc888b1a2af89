"""The house's import rules, checked on the source: no arrow from db/, messaging/
or storage/ up to the domain or the application layer, a closed async tree, no
circle, and no import by name.

Every import statement counts, wherever it is: at module level, inside a
function (a deferred import is still an arrow) and under ``TYPE_CHECKING``
(so is a type). ``from package import name`` is an arrow to the submodule
``package.name`` when there is one, else to the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TOOLKIT = Path(__file__).resolve().parents[1] / "toolkit"

# What each layer may import from the toolkit (besides itself).
# toolkit.aio.X is layer X: the async twin obeys the same rules; the
# concurrency primitives (sync and async) sit under every layer, and the one
# lease keeper just above them.
ALLOWED = {
    "toolkit.concurrency": set(),
    "toolkit.leases": {"toolkit.concurrency"},
    "toolkit.errors": set(),
    "toolkit.tenants": {"toolkit.errors"},
    "toolkit.config": {"toolkit.errors", "toolkit.concurrency"},
    "toolkit.records": {"toolkit.errors", "toolkit.concurrency"},
    "toolkit.db": {
        "toolkit.errors",
        "toolkit.config",
        "toolkit.records",
        "toolkit.concurrency",
        "toolkit.tenants",
    },
    "toolkit.cache": {
        "toolkit.errors",
        "toolkit.config",
        "toolkit.concurrency",
        "toolkit.leases",
        "toolkit.tenants",
    },
    "toolkit.messaging": {
        "toolkit.errors",
        "toolkit.config",
        "toolkit.records",
        "toolkit.db",
        "toolkit.concurrency",
        "toolkit.tenants",
        "toolkit.leases",
    },
    "toolkit.storage": {
        "toolkit.errors",
        "toolkit.config",
        "toolkit.records",
        "toolkit.db",
        "toolkit.concurrency",
        "toolkit.tenants",
    },
}


TOP_LAYERS = (
    "toolkit.commands",
    "toolkit.cli",
    "toolkit.__main__",
    "toolkit.workflows",
    "toolkit.integrations",
    "toolkit.pytest_plugin",  # an entry point (pytest's), like the command line
)
"""The top of the house: besides toolkit/aio/ itself, only these may import toolkit.aio."""


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
        if node.module is None:
            return set()
        base = node.module
    else:
        package = module.split(".") if is_package else module.split(".")[:-1]
        if node.level > len(package):
            raise AssertionError(f"{module}: 'from {'.' * node.level}' goes above the toolkit")
        base = ".".join(package[: len(package) - (node.level - 1)])
        if node.module:
            base = f"{base}.{node.module}"
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
        (
            "toolkit.db.fake",
            False,
            "from ..workflows import service",
            {"toolkit.workflows.service"},
        ),
        ("toolkit.db.fake", False, "from ..workflows import not_a_module", {"toolkit.workflows"}),
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
    assert upward_imports("toolkit.db.fake", relative) == {"toolkit.workflows.service"}
    assert upward_imports("toolkit.db.fake", absolute) == {"toolkit.workflows.service"}
    assert upward_imports("toolkit.aio.storage.fake", "from ..repositories import x") == {
        "toolkit.aio.repositories"
    }
    with pytest.raises(AssertionError, match="goes above the toolkit"):
        toolkit_imports("from .... import x", "toolkit.db.fake")


def test_records_hold_building_blocks_and_the_entities_are_the_repositories() -> None:
    """Every layer builds on toolkit.records; none below the repositories knows an entity."""
    entities = {"User", "Agent", "Workflow", "Execution", "Checkpoint", "Session", "AuditEvent"}
    defined = {
        node.name
        for node in ast.parse((TOOLKIT / "records.py").read_text(encoding="utf-8")).body
        if isinstance(node, ast.ClassDef)
    }
    assert defined and not defined & entities
    assert upward_imports("toolkit.db.patterns", "from toolkit.records import Page") == set()
    entity = "from toolkit.repositories.records import AuditEvent"
    for below in ("toolkit.aio.db.patterns", "toolkit.storage.fake", "toolkit.messaging.fake"):
        assert upward_imports(below, entity) == {"toolkit.repositories.records"}


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


def import_graph() -> dict[str, set[str]]:
    """Each toolkit module and the toolkit modules it imports (every import statement)."""
    graph: dict[str, set[str]] = {}
    for module, path in modules():
        imported = toolkit_imports(
            path.read_text(encoding="utf-8"), module, is_package=path.name == "__init__.py"
        )
        graph[module] = {_module_of(name) for name in imported} - {module}
    return graph


def _module_of(name: str) -> str:
    """``name`` if it is a module, else the module it is an attribute of."""
    while "." in name and not is_toolkit_module(name):
        name = name.rsplit(".", 1)[0]
    return name


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each circle of imports, as a path that starts and ends at the same module.

    One per strongly connected component of more than one module (Tarjan's
    algorithm, iterative), found inside it by a breadth-first walk back to its
    first module.
    """
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = lowlink[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next((c for c in children if c in graph), None)
            if child is not None:
                if child not in index:
                    index[child] = lowlink[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    lowlink[node] = min(lowlink[node], index[child])
                continue
            work.pop()
            if work:
                lowlink[work[-1][0]] = min(lowlink[work[-1][0]], lowlink[node])
            if lowlink[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)
    return [_path_round(graph, component) for component in components]


def _path_round(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    start = min(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if child not in came_from:
                    came_from[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{sorted(component)} is not a circle")


def test_circles_are_found_and_named_as_a_path() -> None:
    graph = {
        "a": {"b"},
        "b": {"c", "x"},
        "c": {"a"},
        "d": {"a", "e"},
        "e": {"d"},
        "x": set(),
        "y": {"outside"},
    }
    assert sorted(circles(graph)) == [["a", "b", "c", "a"], ["d", "e", "d"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_every_kind_of_import_is_an_arrow() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from toolkit.db.bind import Binding\n"
        "def later() -> None:\n"
        "    from toolkit.storage.pipeline import put_stream\n"
        "from toolkit.aio.storage import repository\n"
    )
    assert toolkit_imports(source, "toolkit.fake") == {
        "toolkit.db.bind",
        "toolkit.storage.pipeline",
        "toolkit.aio.storage.repository",
    }


def test_no_import_circles() -> None:
    found = circles(import_graph())
    assert found == [], "import circles: " + "; ".join(" -> ".join(c) for c in found)


def test_the_bindings_circle_is_gone() -> None:
    """Bindings are values: bind imports no driver, so the drivers may import bind."""
    graph = import_graph()
    assert not {"toolkit.db.drivers", "toolkit.aio.db.drivers"} & graph["toolkit.db.bind"]
    assert "toolkit.db.bind" in graph["toolkit.db.drivers"]
    assert "toolkit.db.bind" in graph["toolkit.aio.db.drivers"]


def _in(module: str, layers: tuple[str, ...]) -> bool:
    return any(module == layer or module.startswith(layer + ".") for layer in layers)


def _below_the_top() -> list[str]:
    return [m for m, _ in modules() if not _in(m, ("toolkit.aio", *TOP_LAYERS))]


@pytest.mark.parametrize("module", _below_the_top())
def test_the_async_tree_is_closed(module: str) -> None:
    into_aio = into_the_async_tree(module, import_graph()[module])
    assert into_aio == [], f"{module} is below the top layers and imports {into_aio}"


def into_the_async_tree(module: str, imported: set[str]) -> list[str]:
    """The modules under toolkit.aio that ``module`` may not import (it is below the top)."""
    if _in(module, ("toolkit.aio", *TOP_LAYERS)):
        return []
    return sorted(name for name in imported if _in(name, ("toolkit.aio",)))


def test_the_closed_tree_rule_allows_only_the_top_and_aio_itself() -> None:
    deferred = "def f() -> None:\n    from toolkit.aio.storage import async_io\n"
    imported = {_module_of(n) for n in toolkit_imports(deferred, "toolkit.storage.fake")}
    assert into_the_async_tree("toolkit.storage.fake", imported) == ["toolkit.aio.storage.async_io"]
    assert into_the_async_tree("toolkit.db.fake", {"toolkit.aiox", "toolkit.db"}) == []
    for allowed in ("toolkit.aio.db.x", "toolkit.commands.migrate", "toolkit.workflows.x"):
        assert into_the_async_tree(allowed, {"toolkit.aio.db.database"}) == []

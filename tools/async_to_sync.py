#!/usr/bin/env python3
"""Generate the toolkit's sync modules from their async sources.

Every I/O-facing module is written once, async, under ``toolkit/aio/``; its
sync twin at the same path under ``toolkit/`` is generated from it by this
AST transform (psycopg's approach: only the async side is edited by hand)::

    toolkit/aio/db/database.py      ->  toolkit/db/database.py
    toolkit/aio/repositories/x.py   ->  toolkit/repositories/x.py

The transform parses the source and edits the text at the nodes it finds,
so comments, docstrings and layout survive; then ``ruff`` sorts the imports
and formats the result. What it changes:

* ``async def`` / ``async with`` / ``async for`` lose ``async``, and
  ``await x`` becomes ``x``;
* names in :data:`RENAMES` (and any ``AsyncName``) become their sync names,
  ``toolkit.aio.x`` imports become ``toolkit.x`` and ``redis.asyncio``
  becomes ``redis``;
* ``Awaitable[X]`` becomes ``X``;
* ``if ASYNC: ... else: ...`` keeps only the ``else`` branch (or nothing),
  for the few lines that differ (``ASYNC`` comes from ``toolkit.aio.concurrency``
  and is dropped from the generated imports).

Async comprehensions are refused (their ``async`` keyword has no position to
edit), as is any ``await`` or ``async`` left in the output.

Usage::

    python tools/async_to_sync.py            # regenerate every sync module
    python tools/async_to_sync.py --check    # exit 1 naming stale ones (lint)
    python tools/async_to_sync.py toolkit/aio/db/database.py   # just these

A run over every source also keeps the tool's own tables honest: it fails
(exit 2, naming it) on a rename rule that matched nothing or an async-only
path that does not exist, and it writes the block of ``.gitattributes``
that marks every generated module ``linguist-generated`` (``--check`` fails
if that block is not exactly the generated modules).

Hand-written sync modules live beside generated ones (``toolkit/db/bind.py``,
``toolkit/repositories/records.py``): only a path with an async source is
generated, and a source whose twin would overwrite a module without the
generated header fails the run (exit 2, naming both).
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASYNC_ROOT = ROOT / "toolkit" / "aio"
SYNC_ROOT = ROOT / "toolkit"

PACKAGE_FILE = "__init__.py"
"""Package files are never generated: each side's package says what it exports."""

ASYNC_ONLY = frozenset(
    {
        "concurrency.py",  # sleep, Event, spawn/stop as tasks; the sync ones are threads
        "storage/async_io.py",  # the awaited facade over a back end; the sync API calls it
    }
)
"""Hand-written modules under toolkit/aio/ with no sync twin, by path relative to it
(a path, not a file name: a new ``concurrency.py`` elsewhere is a source like any other)."""

RENAMES = {
    "AbstractAsyncContextManager": "AbstractContextManager",
    "asynccontextmanager": "contextmanager",
    "aclose": "close",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "__aiter__": "__iter__",
    "aiter": "iter",
}
"""Async names and their sync counterparts (besides ``AsyncX`` -> ``X``). Only what the
sources use: a run over every source fails on a rule that matches nothing, or one that
only repeats ``AsyncX`` -> ``X``, so the table says what the code needs."""

MODULES = {"redis.asyncio": "redis"}

GITATTRIBUTES = ROOT / ".gitattributes"
_BEGIN = "# BEGIN generated modules (tools/async_to_sync.py writes this block)"
_END = "# END generated modules"

_matched_rules: set[str] = set()
"""The keys of :data:`RENAMES` and :data:`MODULES` the transform has applied so far."""

ASYNC_PREFIX = re.compile(r"^Async(?=[A-Z])")

HEADER = (
    "# Generated from {source} by tools/async_to_sync.py: do not edit.\n"
    "# Edit the async source and run `tox -e generate`.\n"
)


GENERATED_MARK = HEADER.split("{", 1)[0]
"""How every generated module starts; a module without it is hand-written."""


class TransformError(Exception):
    """The async source uses something the transform cannot turn into sync code."""


def sync_name(name: str) -> str:
    """The sync spelling of an identifier."""
    if name in RENAMES:
        _matched_rules.add(name)
        return RENAMES[name]
    return ASYNC_PREFIX.sub("", name)


def sync_module(module: str) -> str:
    """The sync module an import of ``module`` becomes."""
    if module == "toolkit.aio":
        return "toolkit"
    if module.startswith("toolkit.aio."):
        return "toolkit." + module.removeprefix("toolkit.aio.")
    for async_module, sync in MODULES.items():
        if module == async_module or module.startswith(async_module + "."):
            _matched_rules.add(async_module)
            return sync + module.removeprefix(async_module)
    return module


_TEXT_RULES = (
    (re.compile(r"\bAsync(?=[A-Z])"), ""),
    (re.compile(r"\btoolkit\.aio\."), "toolkit."),
    (re.compile(r"\bawait "), ""),
    (re.compile(r"\basync (?=with |for |def )"), ""),
)


def sync_text(text: str) -> str:
    """A docstring or ``__all__`` entry as the sync module says it."""
    for pattern, replacement in _TEXT_RULES:
        text = pattern.sub(replacement, text)
    return text


@dataclass(frozen=True)
class Edit:
    """Replace the text from ``start`` to ``end`` (offsets into the source) with ``text``."""

    start: int
    end: int
    text: str


class _Offsets:
    """(line, column) positions of the AST as offsets into the source text."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.line_starts = [0]
        for line in source.splitlines(keepends=True):
            self.line_starts.append(self.line_starts[-1] + len(line))
        self._encoded = [line.encode() for line in source.splitlines(keepends=True)]

    def at(self, line: int, col: int) -> int:
        # ast columns are UTF-8 byte offsets.
        prefix = self._encoded[line - 1][:col].decode()
        return self.line_starts[line - 1] + len(prefix)

    def start(self, node: ast.AST) -> int:
        return self.at(node.lineno, node.col_offset)  # type: ignore[attr-defined]

    def end(self, node: ast.AST) -> int:
        return self.at(node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined]


def _is_async_flag(test: ast.expr) -> bool:
    return isinstance(test, ast.Name) and test.id == "ASYNC"


class _Collector(ast.NodeVisitor):
    def __init__(self, offsets: _Offsets, path: Path) -> None:
        self.offsets = offsets
        self.path = path
        self.edits: list[Edit] = []

    def fail(self, node: ast.AST, message: str) -> TransformError:
        return TransformError(f"{self.path}:{getattr(node, 'lineno', '?')}: {message}")

    def _drop_keyword(self, node: ast.AST, keyword: str) -> None:
        start = self.offsets.start(node)
        text = self.offsets.source[start:]
        match = re.match(rf"{keyword}\s+", text)
        if not match:
            raise self.fail(node, f"expected {keyword!r} here")
        self.edits.append(Edit(start, start + match.end(), ""))

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._drop_keyword(node, "async")
        self._rename_def(node)
        self.generic_visit(node)

    def visit_AsyncWith(self, node: ast.AsyncWith) -> None:
        self._drop_keyword(node, "async")
        self.generic_visit(node)

    def visit_AsyncFor(self, node: ast.AsyncFor) -> None:
        self._drop_keyword(node, "async")
        self.generic_visit(node)

    def visit_comprehension(self, node: ast.comprehension) -> None:
        if node.is_async:
            raise self.fail(node.target, "async comprehensions are not transformed; use a loop")
        self.generic_visit(node)

    def visit_Await(self, node: ast.Await) -> None:
        start = self.offsets.start(node)
        value_start = self.offsets.start(node.value)
        self.edits.append(Edit(start, value_start, ""))
        self.visit(node.value)

    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            self._rewrite_text(node.value)  # a docstring: its examples read right in sync
        else:
            self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
        if targets == ["__all__"] and isinstance(node.value, (ast.List, ast.Tuple)):
            for element in node.value.elts:
                if isinstance(element, ast.Constant) and isinstance(element.value, str):
                    self._rewrite_text(element)
            return
        self.generic_visit(node)

    def _rewrite_text(self, node: ast.Constant) -> None:
        start, end = self.offsets.start(node), self.offsets.end(node)
        old = self.offsets.source[start:end]
        new = sync_text(old)
        if new != old:
            self.edits.append(Edit(start, end, new))

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if isinstance(node.value, ast.Name) and node.value.id == "Awaitable":
            # Awaitable[X] -> X: what the sync form returns instead.
            self.edits.append(Edit(self.offsets.start(node), self.offsets.start(node.slice), ""))
            self.edits.append(Edit(self.offsets.end(node.slice), self.offsets.end(node), ""))
            self.visit(node.slice)
            return
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        new = sync_name(node.id)
        if new != node.id:
            self.edits.append(Edit(self.offsets.start(node), self.offsets.end(node), new))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.visit(node.value)
        new = sync_name(node.attr)
        if new != node.attr:
            end = self.offsets.end(node)
            self.edits.append(Edit(end - len(node.attr), end, new))

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._rename_def(node)
        self.generic_visit(node)

    def _rename_def(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        new = sync_name(node.name)
        if new == node.name:
            return
        start = self.offsets.start(node)
        text = self.offsets.source[start:]
        match = re.search(rf"\b{re.escape(node.name)}\b", text)
        if match is None:
            raise self.fail(node, f"cannot find the name {node.name}")
        self.edits.append(Edit(start + match.start(), start + match.end(), new))

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._rename_def(node)
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            new = sync_module(alias.name)
            if new != alias.name:
                start = self.offsets.start(alias)
                self.edits.append(Edit(start, start + len(alias.name), new))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        new_module = sync_module(module)
        start = self.offsets.start(node)
        if all(alias.name == "ASYNC" for alias in node.names):
            self.edits.append(Edit(start, self.offsets.end(node), ""))  # only ASYNC: drop it
            return
        if new_module != module:
            match = re.match(rf"from\s+{re.escape(module)}\b", self.offsets.source[start:])
            if match is None:
                raise self.fail(node, f"cannot find the module {module}")
            self.edits.append(Edit(start, start + match.end(), f"from {new_module}"))
        kept = [alias for alias in node.names if alias.name != "ASYNC"]
        if len(kept) != len(node.names):
            names = ", ".join(
                f"{sync_name(a.name)} as {a.asname}" if a.asname else sync_name(a.name)
                for a in kept
            )
            name_start = self.offsets.start(node.names[0])
            name_end = self.offsets.end(node.names[-1])
            self.edits.append(Edit(name_start, name_end, names))
            return
        for alias in node.names:
            new = sync_name(alias.name)
            if new != alias.name:
                alias_start = self.offsets.start(alias)
                self.edits.append(Edit(alias_start, alias_start + len(alias.name), new))

    def visit_If(self, node: ast.If) -> None:
        if not _is_async_flag(node.test):
            self.generic_visit(node)
            return
        # Replace the whole statement with its else branch, dedented one level.
        line_start = self.offsets.line_starts[node.lineno - 1]
        end = self.offsets.end(node)
        indent = self.offsets.source[line_start : self.offsets.start(node)]
        replacement = ""
        if node.orelse:
            first = node.orelse[0]
            first_line = getattr(first, "lineno", node.lineno)
            decorators = getattr(first, "decorator_list", [])
            if decorators:
                first_line = min(first_line, *(d.lineno for d in decorators))
            body_start = self.offsets.line_starts[first_line - 1]
            body = self.offsets.source[body_start:end]
            inner = _Collector(self.offsets, self.path)
            for statement in node.orelse:
                inner.visit(statement)
            body = _apply(self.offsets.source, inner.edits, body_start, end)
            replacement = textwrap.indent(textwrap.dedent(body), indent).lstrip()
            replacement = indent + replacement
        self.edits.append(Edit(line_start, end, replacement.rstrip() or f"{indent}pass"))


def _apply(source: str, edits: list[Edit], start: int = 0, end: int | None = None) -> str:
    """``source[start:end]`` with the edits inside it applied."""
    end = len(source) if end is None else end
    out: list[str] = []
    position = start
    for edit in sorted(edits, key=lambda e: (e.start, e.end)):
        if edit.start < position:
            if edit.start >= start:
                raise TransformError(f"overlapping edits at offset {edit.start}")
            continue
        if edit.end > end:
            continue
        out.append(source[position : edit.start])
        out.append(edit.text)
        position = edit.end
    out.append(source[position:end])
    return "".join(out)


def _ruff(code: str, filename: Path) -> str:
    """Sort imports, drop ones left unused, and format, as the lint env will check."""
    for args in (
        ["check", "--fix", "--quiet", "--select", "I,F401", "--exit-zero"],
        ["format", "--quiet"],
    ):
        done = subprocess.run(  # noqa: S603 - this interpreter's ruff, fixed arguments
            [sys.executable, "-m", "ruff", *args, "--stdin-filename", str(filename), "-"],
            input=code,
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        if done.returncode != 0:
            raise TransformError(f"ruff {args[0]} failed on {filename}: {done.stderr.strip()}")
        code = done.stdout
    return code


def transform(source: str, path: Path) -> str:
    """The sync module for the async ``source`` read from ``path``."""
    tree = ast.parse(source, str(path))
    offsets = _Offsets(source)
    collector = _Collector(offsets, path)
    collector.visit(tree)
    code = _apply(source, collector.edits)
    try:
        generated = ast.parse(code, str(path))
    except SyntaxError as exc:
        raise TransformError(f"{path}: the generated code does not parse: {exc}") from None
    for node in ast.walk(generated):
        if isinstance(node, (ast.Await, ast.AsyncFunctionDef, ast.AsyncWith, ast.AsyncFor)) or (
            isinstance(node, ast.Name) and node.id == "ASYNC"
        ):
            raise TransformError(f"{path}:{node.lineno}: async code left in the sync output")
    relative = path.resolve().relative_to(ROOT)
    target = sync_path(path)
    return _ruff(HEADER.format(source=relative) + code, target)


def sync_path(source: Path) -> Path:
    """Where the sync module generated from ``source`` lives."""
    return SYNC_ROOT / source.resolve().relative_to(ASYNC_ROOT)


def generated_twin(source: Path, target: Path) -> str | None:
    """The text of ``source``'s sync twin ``target`` (None if there is none yet);
    TransformError if ``target`` is hand-written, which a run never overwrites."""
    if not target.exists():
        return None
    current = target.read_text(encoding="utf-8")
    if not current.startswith(GENERATED_MARK):
        raise TransformError(
            f"{source.relative_to(ROOT)} would overwrite the hand-written "
            f"{target.relative_to(ROOT)}; rename one of them"
        )
    return current


def is_source(path: Path) -> bool:
    """True for a module under toolkit/aio/ that has a generated sync twin."""
    path = path.resolve()
    if not path.is_relative_to(ASYNC_ROOT) or path.name == PACKAGE_FILE:
        return False
    return path.relative_to(ASYNC_ROOT).as_posix() not in ASYNC_ONLY


def sources() -> list[Path]:
    """Every async source under toolkit/aio/."""
    return sorted(p for p in ASYNC_ROOT.rglob("*.py") if is_source(p))


def stale_rules(root: Path = ASYNC_ROOT) -> list[str]:
    """What in the tool's tables matches nothing: call after transforming every source."""
    problems = [
        f"rename rule {name!r} -> {new!r} matches nothing under toolkit/aio/; remove it"
        for table in (RENAMES, MODULES)
        for name, new in table.items()
        if name not in _matched_rules
    ]
    problems += [
        f"rename rule {name!r} -> {new!r} repeats the AsyncX -> X rule; remove it"
        for name, new in RENAMES.items()
        if ASYNC_PREFIX.sub("", name) == new
    ]
    problems += [
        f"async-only module {path!r} (ASYNC_ONLY) does not exist under toolkit/aio/"
        for path in sorted(ASYNC_ONLY)
        if not (root / path).is_file()
    ]
    return problems


def gitattributes(current: str, generated: list[Path]) -> str:
    """``current`` (the text of .gitattributes) with its generated block listing ``generated``."""
    block = [_BEGIN]
    block += [f"/{p.relative_to(ROOT).as_posix()} linguist-generated=true" for p in generated]
    block.append(_END)
    lines = current.splitlines()
    if _BEGIN in lines and _END in lines:
        start, end = lines.index(_BEGIN), lines.index(_END)
        lines[start : end + 1] = block
    else:
        lines += ([""] if lines else []) + block
    return "\n".join(lines) + "\n"


def _report_stale(stale: list[Path]) -> None:
    """Name each stale file and how to bring it up to date."""
    for target in stale:
        what = (
            "its list of generated modules is not the generated modules"
            if target == GITATTRIBUTES
            else "its async source changed"
        )
        shown = target.relative_to(ROOT) if target.is_relative_to(ROOT) else target
        print(
            f"{shown} is stale: {what}; run `tox -e generate` (python tools/async_to_sync.py)",
            file=sys.stderr,
        )


def _write_gitattributes(generated_from: list[Path], *, check: bool) -> bool:
    """Bring .gitattributes' generated block up to date (with ``check``, only compare);
    False if it was stale."""
    current = GITATTRIBUTES.read_text(encoding="utf-8") if GITATTRIBUTES.exists() else ""
    wanted = gitattributes(current, [sync_path(source) for source in generated_from])
    if wanted == current:
        return True
    if not check:
        GITATTRIBUTES.write_text(wanted, encoding="utf-8")
        print("generated the block of .gitattributes")
    return not check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a generated file is stale")
    parser.add_argument("files", nargs="*", type=Path, help="async sources (default: all)")
    args = parser.parse_args(argv)
    every = not args.files
    chosen = sources() if every else [f.resolve() for f in args.files]
    for source in chosen:
        if not is_source(source):
            print(f"error: {source} is not an async source under toolkit/aio/", file=sys.stderr)
            return 2
    _matched_rules.clear()
    stale = []
    for source in chosen:
        target = sync_path(source)
        try:
            current = generated_twin(source, target)
            code = transform(source.read_text(encoding="utf-8"), source)
        except TransformError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if current == code:
            continue
        if args.check:
            stale.append(target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(code, encoding="utf-8")
            print(f"generated {target.relative_to(ROOT)}")
    if every:
        problems = stale_rules()
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        if problems:
            return 2
        if not _write_gitattributes(chosen, check=args.check):
            stale.append(GITATTRIBUTES)
    if stale:
        _report_stale(stale)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

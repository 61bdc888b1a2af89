"""The query registry: named SQL queries loaded from ``sql/*.sql``.

A file holds one or more queries, each introduced by a header in the
sqlc/PugSQL keyword style::

    -- name: agents.get :one
    -- Fetch one agent by id.
    SELECT id, name FROM agents WHERE id = :id;

The first header line gives the query's name and result kind; the next
comment line is its one-line doc. Optional further header lines:

``-- sort: created_at timestamptz, name text``
    the columns a caller may sort by, with their types. The SQL then holds
    the markers ``{keyset}`` (the keyset condition) and ``{order}`` (the
    ORDER BY list), which the registry composes with
    :class:`psycopg.sql.Identifier` from this whitelist only.

Parameters are written ``:name`` (``::type`` casts are left alone) or in
psycopg's own ``%(name)s`` style. Loading is loud: a malformed header, a
duplicate name, an unknown kind or a missing doc line raises
:class:`~toolkit.errors.QueryDefinitionError` naming the file and line.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from psycopg import sql

from toolkit.errors import InvalidInput, QueryDefinitionError


class Kind(enum.Enum):
    """What executing a query returns."""

    ONE = "one"
    """Exactly one row, as a record; none raises NotFound."""
    OPTIONAL = "optional"
    """One row as a record, or None."""
    MANY = "many"
    """A list of records."""
    SCALAR = "scalar"
    """The first column of the first row."""
    EXEC = "exec"
    """The number of rows affected."""
    RETURNING = "returning"
    """The row a write returned (INSERT/UPDATE/DELETE ... RETURNING), or None."""
    COPY = "copy"
    """A ``COPY ... FROM STDIN`` statement fed rows by the caller."""


KEYSET_MARKER = "{keyset}"
ORDER_MARKER = "{order}"
CURSOR_PARAMS = ("after_value", "after_id")

_HEADER = re.compile(r"^--\s*name:\s*(?P<name>\S+)\s+:(?P<kind>\w+)\s*$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
_SORT = re.compile(r"^--\s*sort:\s*(?P<spec>.+)$")
_SORT_ITEM = re.compile(r"^(?P<column>[a-z_][a-z0-9_]*)\s+(?P<type>[a-z][a-z0-9_ ]*)$")
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class SortColumn:
    """A column a list query may be sorted by, with its SQL type."""

    column: str
    sql_type: str


@dataclass(frozen=True)
class NamedQuery:
    """One query as loaded from a ``.sql`` file."""

    name: str
    kind: Kind
    doc: str
    source: str
    """The SQL as written in the file (for ``toolkit queries show``)."""
    text: str
    """The SQL in psycopg's ``%(name)s`` style, ``%`` escaped, still with markers."""
    params: tuple[str, ...]
    """Parameter names in order of first use."""
    path: str
    line: int
    sort_columns: tuple[SortColumn, ...] = ()

    @property
    def location(self) -> str:
        """``file:line`` of the query's header."""
        return f"{self.path}:{self.line}"

    @property
    def sortable(self) -> bool:
        """Whether the query takes a sort column and keyset cursor."""
        return bool(self.sort_columns)

    def sort_column(self, column: str) -> SortColumn:
        """The whitelisted sort column named ``column``; InvalidInput otherwise."""
        for candidate in self.sort_columns:
            if candidate.column == column:
                return candidate
        allowed = ", ".join(c.column for c in self.sort_columns) or "none"
        raise InvalidInput(
            f"cannot sort {self.name} by {column!r}; allowed: {allowed}",
            field="sort",
            value=column,
        )

    def statement(self, sort: str | None = None, descending: bool = False) -> sql.Composed:
        """The executable statement, tagged with the query name.

        For a sortable query the ``{keyset}`` and ``{order}`` markers are
        composed from the whitelist; ``sort`` defaults to its first column.
        """
        tag = sql.SQL("/* " + self.name + " */ ")
        if not self.sort_columns:
            return tag + sql.SQL(self.text)
        chosen = self.sort_column(sort) if sort else self.sort_columns[0]
        column = sql.Identifier(chosen.column)
        direction = sql.SQL("DESC" if descending else "ASC")
        comparison = sql.SQL("<" if descending else ">")
        keyset = sql.SQL(
            "(%(after_id)s::uuid IS NULL OR ({column}, id) {comparison} "
            "(%(after_value)s::{type}, %(after_id)s::uuid))"
        ).format(
            column=column,
            comparison=comparison,
            type=sql.SQL(chosen.sql_type),  # from the header whitelist, never input
        )
        order = sql.SQL("{column} {direction}, id {direction}").format(
            column=column, direction=direction
        )
        before, rest = self.text.split(KEYSET_MARKER, 1)
        middle, after = rest.split(ORDER_MARKER, 1)
        return sql.Composed(
            [
                tag,
                sql.SQL(before),
                keyset,
                sql.SQL(middle),
                order,
                sql.SQL(after),
            ]
        )


@dataclass
class _Converted:
    text: str
    params: list[str] = field(default_factory=list)


def _verbatim_end(source: str, i: int) -> int | None:
    """Where the literal, quoted identifier, comment or dollar body at ``i`` ends.

    None when nothing of the kind starts at ``i``.
    """
    ch = source[i]
    if ch in {"'", '"'}:
        end = i + 1
        while end < len(source):
            if source[end] == ch:
                if source.startswith(ch * 2, end):
                    end += 2
                    continue
                return end + 1
            end += 1
        return len(source)
    if source.startswith("--", i):
        end = source.find("\n", i)
        return len(source) if end == -1 else end
    if source.startswith("/*", i):
        end = source.find("*/", i + 2)
        return len(source) if end == -1 else end + 2
    if ch == "$" and (match := _DOLLAR_TAG.match(source, i)):
        end = source.find(match.group(0), match.end())
        return len(source) if end == -1 else end + len(match.group(0))
    return None


_DOLLAR_TAG = re.compile(r"\$([A-Za-z_]\w*)?\$")
_PSYCOPG_PARAM = re.compile(r"%\((\w+)\)s")


def convert_parameters(source: str) -> _Converted:
    """Turn ``:name`` parameters into ``%(name)s`` and escape literal ``%``.

    String literals, quoted identifiers, dollar-quoted bodies and comments are
    copied untouched (but for ``%`` escaping); ``::`` casts are kept.
    """
    out: list[str] = []
    params: list[str] = []
    i = 0
    while i < len(source):
        verbatim_end = _verbatim_end(source, i)
        if verbatim_end is not None:
            out.append(source[i:verbatim_end].replace("%", "%%"))
            i = verbatim_end
            continue
        if source.startswith("::", i):
            out.append("::")
            i += 2
            continue
        match = (_PARAM_NAME.match(source, i + 1) if source[i] == ":" else None) or (
            _PSYCOPG_PARAM.match(source, i) if source[i] == "%" else None
        )
        if match:
            name = match.group(1) if match.re is _PSYCOPG_PARAM else match.group(0)
            if name not in params:
                params.append(name)
            out.append(f"%({name})s")
            i = match.end()
            continue
        out.append("%%" if source[i] == "%" else source[i])
        i += 1
    return _Converted("".join(out), params)


def _parse_sort(spec: str, where: str) -> tuple[SortColumn, ...]:
    columns = []
    for item in spec.split(","):
        match = _SORT_ITEM.match(item.strip())
        if not match:
            raise QueryDefinitionError(
                f"{where}: bad sort item {item.strip()!r}; want 'column type'"
            )
        columns.append(SortColumn(match.group("column"), match.group("type").strip()))
    return tuple(columns)


def parse_file(text: str, path: str) -> list[NamedQuery]:
    """Parse the queries of one ``.sql`` file; raises QueryDefinitionError."""
    lines = text.splitlines()
    headers = [i for i, line in enumerate(lines) if re.match(r"^--\s*name:", line)]
    first = headers[0] if headers else len(lines)
    for number, line in enumerate(lines[:first], start=1):
        if line.strip() and not line.lstrip().startswith("--"):
            raise QueryDefinitionError(f"{path}:{number}: SQL outside any '-- name:' query")
    queries = []
    for position, start in enumerate(headers):
        end = headers[position + 1] if position + 1 < len(headers) else len(lines)
        queries.append(_parse_query(lines[start:end], path, start + 1))
    return queries


def _parse_query(block: list[str], path: str, line: int) -> NamedQuery:
    where = f"{path}:{line}"
    header = _HEADER.match(block[0])
    if not header:
        raise QueryDefinitionError(
            f"{where}: malformed header {block[0]!r}; want '-- name: x.y :kind'"
        )
    name = header.group("name")
    if not _NAME.match(name):
        raise QueryDefinitionError(f"{where}: query name {name!r} must look like 'entity.action'")
    try:
        kind = Kind(header.group("kind"))
    except ValueError:
        known = ", ".join(":" + k.value for k in Kind)
        raise QueryDefinitionError(
            f"{where}: unknown result kind ':{header.group('kind')}' for {name}; known: {known}"
        ) from None
    doc_line = block[1] if len(block) > 1 else ""
    if not doc_line.startswith("--") or not doc_line.lstrip("- ").strip() or _SORT.match(doc_line):
        raise QueryDefinitionError(f"{path}:{line + 1}: {name} needs a one-line doc comment")
    doc = doc_line.lstrip("-").strip()
    sort_columns: tuple[SortColumn, ...] = ()
    body_start = 2
    while body_start < len(block) and block[body_start].startswith("--"):
        sort_match = _SORT.match(block[body_start])
        if sort_match:
            sort_columns = _parse_sort(sort_match.group("spec"), f"{path}:{line + body_start}")
        body_start += 1
    source = "\n".join(block[body_start:]).strip()
    if not source:
        raise QueryDefinitionError(f"{where}: {name} has no SQL")
    converted = convert_parameters(source)
    text = converted.text.rstrip().rstrip(";").rstrip()
    if ";" in _strip_literals(text):
        raise QueryDefinitionError(f"{where}: {name} holds more than one statement")
    params = [p for p in converted.params if p not in CURSOR_PARAMS]
    has_markers = KEYSET_MARKER in text and ORDER_MARKER in text
    if sort_columns and not has_markers:
        raise QueryDefinitionError(
            f"{where}: {name} declares sort columns but lacks {KEYSET_MARKER} and {ORDER_MARKER}"
        )
    if not sort_columns and (KEYSET_MARKER in text or ORDER_MARKER in text):
        raise QueryDefinitionError(
            f"{where}: {name} uses {KEYSET_MARKER}/{ORDER_MARKER} without '-- sort:'"
        )
    if sort_columns:
        params.extend(CURSOR_PARAMS)
    if "{" in _strip_literals(text.replace(KEYSET_MARKER, "").replace(ORDER_MARKER, "")):
        raise QueryDefinitionError(
            f"{where}: {name} has a stray '{{': only {KEYSET_MARKER} and {ORDER_MARKER} are markers"
        )
    return NamedQuery(
        name=name,
        kind=kind,
        doc=doc,
        source=source,
        text=text,
        params=tuple(params),
        path=path,
        line=line,
        sort_columns=sort_columns,
    )


def _strip_literals(text: str) -> str:
    """The text with string literals removed, to look for stray syntax."""
    return re.sub(r"'(?:[^']|'')*'", "''", text)


class QueryRegistry:
    """Every named query, by name."""

    def __init__(self, queries: Iterable[NamedQuery] = ()) -> None:
        self._queries: dict[str, NamedQuery] = {}
        for query in queries:
            self.add(query)

    def add(self, query: NamedQuery) -> None:
        """Register ``query``; a name already taken is an error naming both places."""
        existing = self._queries.get(query.name)
        if existing is not None:
            raise QueryDefinitionError(
                f"{query.location}: duplicate query name {query.name!r}, "
                f"first defined at {existing.location}"
            )
        self._queries[query.name] = query

    def load_text(self, text: str, path: str) -> None:
        """Parse and register the queries of one file's text."""
        for query in parse_file(text, path):
            self.add(query)

    @classmethod
    def from_directory(cls, directory: Path) -> QueryRegistry:
        """Load every ``*.sql`` file of ``directory``, in name order."""
        registry = cls()
        files = sorted(directory.glob("*.sql"))
        if not files:
            raise QueryDefinitionError(f"no .sql files in {directory}")
        for path in files:
            registry.load_text(path.read_text(encoding="utf-8"), f"sql/{path.name}")
        return registry

    def __getitem__(self, name: str) -> NamedQuery:
        try:
            return self._queries[name]
        except KeyError:
            raise QueryDefinitionError(f"no query named {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._queries

    def __iter__(self) -> Iterator[NamedQuery]:
        return iter(sorted(self._queries.values(), key=lambda q: q.name))

    def __len__(self) -> int:
        return len(self._queries)


def package_directory(name: str) -> Path:
    """The folder of packaged SQL: ``sql`` or ``migrations``.

    In an installed wheel it is ``toolkit/<name>``; in a source checkout it
    is the top-level folder of the same name.
    """
    packaged = resources.files("toolkit").joinpath(name)
    if packaged.is_dir():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parents[2] / name
    if checkout.is_dir():
        return checkout
    raise QueryDefinitionError(f"cannot find the toolkit's {name}/ folder (looked in {packaged})")


def check_params(query: NamedQuery, allowed: Sequence[str]) -> None:
    """Raise unless ``query`` uses exactly the parameters in ``allowed``."""
    used = set(query.params)
    given = set(allowed)
    unknown = sorted(used - given)
    unused = sorted(given - used)
    if unknown:
        raise QueryDefinitionError(
            f"{query.location}: {query.name} uses parameter(s) {', '.join(unknown)} "
            "that its caller does not pass"
        )
    if unused:
        raise QueryDefinitionError(
            f"{query.location}: {query.name} does not use parameter(s) {', '.join(unused)} "
            "that its caller passes"
        )

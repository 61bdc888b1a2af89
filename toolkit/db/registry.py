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

``-- tenant: all``
    the query is deliberately cross-tenant (a sweep or the outbox relay,
    run by a role the row level security policies do not bind): ``toolkit
    verify`` then does not ask it to name its tenant.

``-- route: replica``
    the query only reads, so a read given a commit position may run on a
    streaming replica that has replayed past it (``-- route: primary``, the
    default, keeps it on the primary). ``toolkit verify`` refuses a
    replica-routed query that writes or locks rows.

Parameters are written ``:name`` (``::type`` casts are left alone); that is
the one parameter style.

A sortable query's optional filters are written as null guards,
``(:type::text IS NULL OR type = :type)``. The statement sent is the
*variant* for the filters a call gives (and whether it continues after a
cursor): each given filter's guard becomes its bare condition, each absent
one is left out, rendered from the file's own text (:meth:`NamedQuery.variant`,
printed by ``toolkit queries show``). A variant is plain SQL a DBA would
write, so it can be prepared and its generic plan still uses the filter's
index; the guarded text itself is never prepared (a generic plan cannot drop
an unused filter). One lexer splits a query's SQL into code and
verbatim spans (string literals, quoted identifiers, comments, dollar-quoted
bodies), and every check looks at code only, so a ``;`` or ``{`` inside a
comment or a ``$$`` body is never mistaken for SQL. Loading is loud: a
malformed header, a duplicate name, an unknown kind, a missing doc line, a
second statement or an unterminated literal raises
:class:`~toolkit.errors.QueryDefinitionError` naming ``file:line`` (and the
column, for errors inside the SQL).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path

from psycopg import sql

from toolkit.errors import InvalidInput, QueryDefinitionError, bounded_repr


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
_TENANT = re.compile(r"^--\s*tenant:\s*(?P<scope>.*?)\s*$")
_ROUTE = re.compile(r"^--\s*route:\s*(?P<route>\S*)\s*$")
ROUTES = ("primary", "replica")
"""Where a query may run: ``primary`` (the default) or ``replica`` (reads only)."""
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
    origin: str = "toolkit"
    """``toolkit`` for the toolkit's own queries, ``app`` for the application's."""
    all_tenants: bool = False
    """Declared cross-tenant by a ``-- tenant: all`` header line."""
    route: str = "primary"
    """``replica`` when its header allows it on a streaming replica (reads only)."""

    @property
    def location(self) -> str:
        """``file:line`` of the query's header."""
        return f"{self.path}:{self.line}"

    @property
    def may_null_table_columns(self) -> bool:
        """Whether a NOT NULL table column can be NULL in this query's result.

        True when its code (not a literal or comment) holds an outer join or
        grouping sets (ROLLUP, CUBE, GROUPING SETS), directly or in a
        subquery or CTE: PostgreSQL still reports such a column as the table's
        (``ftable``), so its NOT NULL proves nothing. A view's columns are the
        view's own, nullable, and set operations' are expressions.
        """
        return _NULLS_TABLE_COLUMNS.search(code_only(self.source)) is not None

    @cached_property
    def optional_filters(self) -> tuple[OptionalFilter, ...]:
        """The null-guarded filters of a sortable query, in order (see :meth:`variant`).

        Empty for a query that is not sortable, and for one that uses a
        guarded parameter outside its guard too (it is then sent whole, never
        prepared).
        """
        if not self.sortable:
            return ()
        code = code_only(self.source)
        found: list[OptionalFilter] = []
        for match in self._null_guard_matches:
            end = _closing_parenthesis(code, match.start())
            if end is None:
                return ()
            condition = self.source[match.end() : end].strip()
            found.append(OptionalFilter(match.group("name"), match.start(), end + 1, condition))
        for guard in found:
            uses = len(re.findall(rf":{guard.name}\b", code.replace("::", "  ")))
            inside = sum(
                len(re.findall(rf":{guard.name}\b", code[g.start : g.end].replace("::", "  ")))
                for g in found
            )
            if uses != inside:
                return ()
        return tuple(found)

    @cached_property
    def _null_guard_matches(self) -> tuple[re.Match[str], ...]:
        return tuple(_NULL_GUARD.finditer(code_only(self.source)))

    @property
    def null_guards(self) -> tuple[str, ...]:
        """The parameter of every null guard in the query's code, in order: those
        :attr:`optional_filters` renders variants of, and those it cannot (a guarded
        parameter used outside its guard). Literals and comments are not code."""
        return tuple(match.group("name") for match in self._null_guard_matches)

    @property
    def variant_keys(self) -> tuple[str, ...]:
        """What selects a variant: each optional filter's parameter, then ``after_id``
        (a page after a cursor) for a sortable query; a call gives a key when its value
        is not None."""
        if not self.sortable:
            return ()
        return (*(f.name for f in self.optional_filters), CURSOR_PARAMS[1])

    def variant(self, present: Iterable[str]) -> str:
        """The query's SQL, as written, for a call giving the ``present`` keys.

        Each optional filter given keeps its condition without the guard; each
        absent one is left out with its ``AND`` (``TRUE`` where it stands
        alone); ``{keyset}`` is left out on the first page. What remains is the
        file's own text, markers and ``:name`` parameters included.
        """
        given = frozenset(present)
        text = self.source
        # Right to left: an edit leaves the offsets of the filters before it as they were.
        for guard in reversed(self.optional_filters):
            if guard.name in given:
                text = f"{text[: guard.start]}({guard.condition}){text[guard.end :]}"
            else:
                text = _without(text, guard.start, guard.end)
        if self.sortable and CURSOR_PARAMS[1] not in given:
            start = code_only(text).index(KEYSET_MARKER)
            text = _without(text, start, start + len(KEYSET_MARKER))
        return text

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
            f"cannot sort {self.name} by {bounded_repr(column)}; allowed: {allowed}",
            field="sort",
            value=column,
        )

    def statement(
        self,
        sort: str | None = None,
        descending: bool = False,
        present: Iterable[str] | None = None,
    ) -> sql.Composed:
        """The executable statement, tagged with the query name.

        For a sortable query the ``{keyset}`` and ``{order}`` markers are
        composed from the whitelist; ``sort`` defaults to its first column.
        ``present`` (the :attr:`variant_keys` a call gives) chooses the
        :meth:`variant`; None is the whole guarded text.
        """
        tag = sql.SQL("/* " + self.name + " */ ")
        if not self.sort_columns:
            return tag + sql.SQL(self.text)
        text = self.text
        guarded = present is None
        if present is not None:
            text = convert_parameters(self.variant(present)).text.rstrip().rstrip(";").rstrip()
        chosen = self.sort_column(sort) if sort else self.sort_columns[0]
        column = sql.Identifier(chosen.column)
        direction = sql.SQL("DESC" if descending else "ASC")
        comparison = sql.SQL("<" if descending else ">")
        keyset = sql.SQL(
            "(%(after_id)s::uuid IS NULL OR ({column}, id) {comparison} "
            "(%(after_value)s::{type}, %(after_id)s::uuid))"
            if guarded
            else "({column}, id) {comparison} (%(after_value)s::{type}, %(after_id)s::uuid)"
        ).format(
            column=column,
            comparison=comparison,
            type=sql.SQL(chosen.sql_type),  # from the header whitelist, never input
        )
        order = sql.SQL("{column} {direction}, id {direction}").format(
            column=column, direction=direction
        )
        if KEYSET_MARKER not in text:  # the first page's variant
            before, after = text.split(ORDER_MARKER, 1)
            return sql.Composed([tag, sql.SQL(before), order, sql.SQL(after)])
        before, rest = text.split(KEYSET_MARKER, 1)
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


@dataclass(frozen=True)
class OptionalFilter:
    """One null-guarded filter of a query, ``(:name::type IS NULL OR condition)``."""

    name: str
    start: int
    """Offset of its opening parenthesis in the query's source."""
    end: int
    """Offset just past its closing parenthesis."""
    condition: str
    """The filter itself, as written after ``OR``."""


_NULL_GUARD = re.compile(
    r"\(\s*:(?P<name>[A-Za-z_]\w*)::[\w\s\[\]]+?\s+IS\s+NULL\s+OR\s+", re.IGNORECASE
)
_AND_BEFORE = re.compile(r"\s+AND\s*$", re.IGNORECASE)
_AND_AFTER = re.compile(r"^\s*AND\s+", re.IGNORECASE)


def _closing_parenthesis(code: str, start: int) -> int | None:
    """The offset of the parenthesis closing the one at ``start`` (None if none does)."""
    depth = 0
    for offset in range(start, len(code)):
        if code[offset] == "(":
            depth += 1
        elif code[offset] == ")":
            depth -= 1
            if depth == 0:
                return offset
    return None


def _without(text: str, start: int, end: int) -> str:
    """``text`` without the condition at ``start:end`` and the ``AND`` joining it
    (the one before, else the one after; ``TRUE`` in its place when it has neither)."""
    code = code_only(text)
    before = _AND_BEFORE.search(code, 0, start)
    if before is not None:
        return text[: before.start()] + text[end:]
    after = _AND_AFTER.match(code[end:])
    if after is not None:
        return text[:start] + text[end + after.end() :]
    return f"{text[:start]}TRUE{text[end:]}"


@dataclass
class _Converted:
    text: str
    params: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Span:
    """A stretch of SQL: code, or verbatim text (literal, quoted name, comment, dollar body)."""

    start: int
    end: int
    code: bool


_DOLLAR_TAG = re.compile(r"\$([A-Za-z_]\w*)?\$")
_VERBATIM_KINDS = {"'": "string literal", '"': "quoted identifier", "$": "dollar-quoted body"}


class _Unterminated(Exception):
    def __init__(self, what: str, offset: int) -> None:
        super().__init__(what)
        self.what = what
        self.offset = offset


def _verbatim_end(source: str, i: int) -> int | None:
    """Where the verbatim span starting at ``i`` ends; None when none starts there."""
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
        raise _Unterminated(_VERBATIM_KINDS[ch], i)
    if source.startswith("--", i):
        end = source.find("\n", i)
        return len(source) if end == -1 else end
    if source.startswith("/*", i):
        end = source.find("*/", i + 2)
        if end == -1:
            raise _Unterminated("block comment", i)
        return end + 2
    if ch == "$" and (match := _DOLLAR_TAG.match(source, i)):
        end = source.find(match.group(0), match.end())
        if end == -1:
            raise _Unterminated(_VERBATIM_KINDS["$"], i)
        return end + len(match.group(0))
    return None


_MAY_START_VERBATIM = re.compile(r"""['"$]|--|/\*""")
"""Where a verbatim span can start: the scanner jumps from one such place to the next."""


def lex(source: str) -> list[_Span]:
    """Split ``source`` into code and verbatim spans: the registry's one SQL scanner."""
    spans: list[_Span] = []
    code_start = i = 0
    while (candidate := _MAY_START_VERBATIM.search(source, i)) is not None:
        i = candidate.start()
        end = _verbatim_end(source, i)
        if end is None:
            i += 1
            continue
        if code_start < i:
            spans.append(_Span(code_start, i, code=True))
        spans.append(_Span(i, end, code=False))
        code_start = i = end
    if code_start < len(source):
        spans.append(_Span(code_start, len(source), code=True))
    return spans


def code_only(source: str) -> str:
    """``source`` with every verbatim span (literal, quoted name, comment, dollar body)
    blanked to spaces: what the server parses as SQL, at the same offsets."""
    text = list(source)
    for span in lex(source):
        if not span.code:
            text[span.start : span.end] = " " * (span.end - span.start)
    return "".join(text)


_NULLS_TABLE_COLUMNS = re.compile(
    r"\b(?:left|right|full)\s+(?:outer\s+)?join\b|\b(?:rollup|cube|grouping\s+sets)\b",
    re.IGNORECASE,
)


def convert_parameters(source: str, spans: Sequence[_Span] | None = None) -> _Converted:
    """Turn ``:name`` parameters into ``%(name)s`` and escape literal ``%``.

    Verbatim spans are copied untouched (but for ``%`` escaping); ``::`` casts
    are kept.
    """
    out: list[str] = []
    params: list[str] = []
    for span in lex(source) if spans is None else spans:
        text = source[span.start : span.end].replace("%", "%%")
        if not span.code:
            out.append(text)
            continue
        i = 0
        while i < len(text):
            if text.startswith("::", i):
                out.append("::")
                i += 2
                continue
            match = _PARAM_NAME.match(text, i + 1) if text[i] == ":" else None
            if match:
                if match.group(0) not in params:
                    params.append(match.group(0))
                out.append(f"%({match.group(0)})s")
                i = match.end()
                continue
            out.append(text[i])
            i += 1
    return _Converted("".join(out), params)


def _position(source: str, offset: int, first_line: int) -> str:
    """``line:column`` (1-based) of ``offset`` in ``source``, which starts at ``first_line``."""
    before = source[:offset]
    return f"{first_line + before.count(chr(10))}:{offset - (before.rfind(chr(10)) + 1) + 1}"


def _check_code(source: str, spans: Sequence[_Span], name: str, path: str, line: int) -> None:
    """Refuse a second statement and stray ``{``, looking at code spans only."""
    body_end = len(source.rstrip().rstrip(";").rstrip())
    for span in spans:
        if not span.code:
            continue
        for offset in range(span.start, min(span.end, body_end)):
            ch = source[offset]
            if ch == ";":
                raise QueryDefinitionError(
                    f"{path}:{_position(source, offset, line)}: {name} holds more than one "
                    "statement (a ';' before its end)"
                )
            if ch == "{" and not source.startswith((KEYSET_MARKER, ORDER_MARKER), offset):
                raise QueryDefinitionError(
                    f"{path}:{_position(source, offset, line)}: {name} has a stray '{{': "
                    f"only {KEYSET_MARKER} and {ORDER_MARKER} are markers"
                )


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


def _parse_route(header_line: str, where: str, name: str) -> str | None:
    """The route a ``-- route:`` header line names (None for another line)."""
    match = _ROUTE.match(header_line)
    if not match:
        return None
    if match.group("route") not in ROUTES:
        raise QueryDefinitionError(
            f"{where}: {name} has route {match.group('route')!r}; want one of {', '.join(ROUTES)}"
        )
    return match.group("route")


def parse_file(text: str, path: str, origin: str = "toolkit") -> list[NamedQuery]:
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
        queries.append(_parse_query(lines[start:end], path, start + 1, origin))
    return queries


def _declares_all_tenants(header_line: str, name: str, path: str, line: int) -> bool:
    """Whether a header line is ``-- tenant: all``; any other tenant scope is refused."""
    tenant_match = _TENANT.match(header_line)
    if not tenant_match:
        return False
    if tenant_match.group("scope") != "all":
        raise QueryDefinitionError(
            f"{path}:{line}: {name}: unknown tenant scope "
            f"{tenant_match.group('scope')!r}; the one scope is '-- tenant: all'"
        )
    return True


def _parse_query(block: list[str], path: str, line: int, origin: str) -> NamedQuery:
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
    if (
        not doc_line.startswith("--")
        or not doc_line.lstrip("- ").strip()
        or _SORT.match(doc_line)
        or _TENANT.match(doc_line)
        or _ROUTE.match(doc_line)
    ):
        raise QueryDefinitionError(f"{path}:{line + 1}: {name} needs a one-line doc comment")
    doc = doc_line.lstrip("-").strip()
    sort_columns: tuple[SortColumn, ...] = ()
    all_tenants = False
    route = "primary"
    body_start = 2
    while body_start < len(block) and block[body_start].startswith("--"):
        sort_match = _SORT.match(block[body_start])
        if sort_match:
            sort_columns = _parse_sort(sort_match.group("spec"), f"{path}:{line + body_start}")
        route = _parse_route(block[body_start], f"{path}:{line + body_start}", name) or route
        all_tenants = _declares_all_tenants(block[body_start], name, path, line + body_start) or (
            all_tenants
        )
        body_start += 1
    body = block[body_start:]
    leading_blank = next((n for n, text in enumerate(body) if text.strip()), len(body))
    source = "\n".join(body).strip()
    if not source:
        raise QueryDefinitionError(f"{where}: {name} has no SQL")
    first_line = line + body_start + leading_blank
    try:
        spans = lex(source)
    except _Unterminated as exc:
        raise QueryDefinitionError(
            f"{path}:{_position(source, exc.offset, first_line)}: {name} has an "
            f"unterminated {exc.what}"
        ) from None
    _check_code(source, spans, name, path, first_line)
    converted = convert_parameters(source, spans)
    text = converted.text.rstrip().rstrip(";").rstrip()
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
        origin=origin,
        all_tenants=all_tenants,
        route=route,
    )


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

    def load_text(self, text: str, path: str, origin: str = "toolkit") -> None:
        """Parse and register the queries of one file's text."""
        for query in parse_file(text, path, origin):
            self.add(query)

    def load_directory(self, directory: Path, *, origin: str, label: str | None = None) -> None:
        """Load every ``*.sql`` file of ``directory``, in name order.

        Locations read ``<label>/<file>`` (the folder as given by default).
        """
        files = sorted(directory.glob("*.sql"))
        if not files:
            raise QueryDefinitionError(f"no .sql files in {directory}")
        prefix = label if label is not None else str(directory)
        for path in files:
            self.load_text(path.read_text(encoding="utf-8"), f"{prefix}/{path.name}", origin)

    @classmethod
    def from_directory(cls, directory: Path) -> QueryRegistry:
        """A registry of the toolkit's queries in ``directory``."""
        registry = cls()
        registry.load_directory(directory, origin="toolkit", label="sql")
        return registry

    @classmethod
    def with_application(cls, app_folders: Iterable[Path] = ()) -> QueryRegistry:
        """The toolkit's own queries, then the application's from ``app_folders``."""
        registry = cls.from_directory(package_directory("sql"))
        for folder in app_folders:
            registry.load_directory(folder, origin="app")
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

"""The query registry: parsing, loud loading, parameter checks, sort whitelists."""

from __future__ import annotations

import pytest

from toolkit.db.bind import registry
from toolkit.db.registry import Kind, QueryRegistry, check_params, convert_parameters, parse_file
from toolkit.errors import InvalidInput, QueryDefinitionError


def parse_one(text: str):
    (query,) = parse_file(text, "sql/test.sql")
    return query


def test_header_kind_doc_and_params() -> None:
    query = parse_one(
        "-- name: things.get :one\n-- Fetch a thing.\n"
        "SELECT id FROM things WHERE id = :id AND n > :n;\n"
    )
    assert query.name == "things.get"
    assert query.kind is Kind.ONE
    assert query.doc == "Fetch a thing."
    assert query.params == ("id", "n")
    assert query.text == "SELECT id FROM things WHERE id = %(id)s AND n > %(n)s"
    assert query.location == "sql/test.sql:1"


def test_casts_literals_comments_and_percent_are_left_alone() -> None:
    converted = convert_parameters(
        "SELECT :a::text, '50% :not_a_param', \"col:x\", x % 2 -- :nor_this\n"
        "/* :nor_that */ FROM t WHERE y = :b AND z = $$ :dollar $$ AND w = $q$ ; $q$"
    )
    assert converted.params == ["a", "b"]
    assert "$q$ ; $q$" in converted.text
    assert "%(a)s::text" in converted.text
    assert "'50%% :not_a_param'" in converted.text
    assert "x %% 2" in converted.text
    assert ":nor_this" in converted.text and ":nor_that" in converted.text
    assert "$$ :dollar $$" in converted.text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-- name: things.get :bogus\n-- Doc.\nSELECT 1;", "unknown result kind ':bogus'"),
        ("-- name: things.get :one\nSELECT 1;", "needs a one-line doc comment"),
        ("-- name: Things :one\n-- Doc.\nSELECT 1;", "must look like 'entity.action'"),
        ("-- name: things.get :one\n-- Doc.\n", "has no SQL"),
        ("SELECT 1;\n-- name: things.get :one\n-- Doc.\nSELECT 1;", "SQL outside any"),
        ("-- name: things.get :one\n-- Doc.\nSELECT 1; SELECT 2;", "more than one statement"),
        (
            "-- name: things.list :many\n-- Doc.\n-- sort: created_at timestamptz\nSELECT 1;",
            "lacks {keyset} and {order}",
        ),
        ("-- name: things.list :many\n-- Doc.\nSELECT 1 WHERE {keyset};", "without '-- sort:'"),
        (
            "-- name: things.list :many\n-- Doc.\n-- sort: created_at\nSELECT 1 {keyset} {order};",
            "bad sort item",
        ),
    ],
)
def test_loading_is_loud_and_names_file_and_line(text: str, message: str) -> None:
    with pytest.raises(QueryDefinitionError, match=r"sql/test\.sql:") as caught:
        parse_file(text, "sql/test.sql")
    assert message in str(caught.value)


def test_semicolons_and_braces_outside_code_are_not_sql() -> None:
    query = parse_one(
        "-- name: things.get :one\n-- Doc.\n"
        "SELECT id -- a ; and a { in a comment\n"
        "FROM things /* ; { */ WHERE body = $$ x; y { $$ AND name = 'a;{' AND id = :id;\n"
    )
    assert query.params == ("id",)


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("SELECT 1;\nSELECT 2;", "sql/test.sql:5:9", "more than one statement"),
        ("SELECT 1\nWHERE x = {y};", "sql/test.sql:6:11", "stray '{'"),
        ("SELECT 1\nWHERE x = 'open;", "sql/test.sql:6:11", "unterminated string literal"),
        ("SELECT $$ body", "sql/test.sql:5:8", "unterminated dollar-quoted body"),
        ("SELECT 1 /* open", "sql/test.sql:5:10", "unterminated block comment"),
    ],
)
def test_errors_in_the_sql_name_line_and_column(text: str, where: str, message: str) -> None:
    source = "\n\n-- name: things.get :one\n-- Doc.\n" + text
    with pytest.raises(QueryDefinitionError, match=f"^{where}: things.get .*{message}"):
        parse_file(source, "sql/test.sql")


def test_duplicate_names_name_both_places() -> None:
    queries = QueryRegistry()
    queries.load_text("-- name: things.get :one\n-- Doc.\nSELECT 1;", "sql/a.sql")
    with pytest.raises(
        QueryDefinitionError, match=r"sql/b.sql:3: duplicate .* first defined at sql/a.sql:1"
    ):
        queries.load_text("\n\n-- name: things.get :one\n-- Doc.\nSELECT 2;", "sql/b.sql")


def test_parameters_must_match_the_caller() -> None:
    query = parse_one("-- name: things.get :one\n-- Doc.\nSELECT 1 WHERE a = :a AND b = :b;")
    check_params(query, ["a", "b"])
    with pytest.raises(
        QueryDefinitionError, match=r"sql/test.sql:1: things.get uses parameter\(s\) b"
    ):
        check_params(query, ["a"])
    with pytest.raises(QueryDefinitionError, match=r"does not use parameter\(s\) c"):
        check_params(query, ["a", "b", "c"])


def test_sort_whitelist_composes_identifiers_only_from_the_header(conn) -> None:
    query = parse_one(
        "-- name: things.list :many\n-- Doc.\n-- sort: created_at timestamptz, name text\n"
        "SELECT id FROM t WHERE {keyset} ORDER BY {order} LIMIT :limit;"
    )
    assert [c.column for c in query.sort_columns] == ["created_at", "name"]
    text = query.statement("name", descending=True).as_string(conn)
    assert 'ORDER BY "name" DESC, id DESC' in text
    assert '("name", id) < (%(after_value)s::text, %(after_id)s::uuid)' in text
    assert text.startswith("/* things.list */ ")
    with pytest.raises(InvalidInput, match=r"cannot sort things\.list by 'id; DROP TABLE t'"):
        query.statement("id; DROP TABLE t")


def test_every_packaged_query_loads_with_a_doc() -> None:
    queries = registry()
    assert len(queries) >= 60
    for query in queries:
        assert query.doc and query.doc.endswith(".")
        assert "SELECT *" not in query.source.upper().replace("COUNT(*)", "")


def test_statements_carry_their_query_name(conn, superuser) -> None:
    from toolkit.repositories import agents

    agents.count(conn)
    last = superuser.execute(
        "SELECT query FROM pg_stat_activity WHERE pid = %s", [conn.info.backend_pid]
    ).fetchone()
    assert last is not None
    assert last[0].startswith("/* agents.count */ SELECT count(*)")


def test_a_misspelt_or_missing_parameter_fails_before_anything_is_sent(conn) -> None:
    from toolkit.db import run
    from toolkit.repositories import agents

    get = agents._entity._get
    with pytest.raises(QueryDefinitionError, match=r"agents\.get called with unknown \['idd'\]"):
        run(conn, get, idd="00000000-0000-4000-8000-000000000000")
    with pytest.raises(QueryDefinitionError, match=r"missing \['id'\]"):
        run(conn, get)


@pytest.mark.parametrize(
    ("body", "may_null"),
    [
        ("SELECT a.id FROM agents a WHERE a.id = :id", False),
        ("SELECT a.id FROM agents a LEFT JOIN users u ON u.id = a.owner_id", True),
        ("SELECT a.id FROM agents a full outer join users u ON true", True),
        ("SELECT a.id FROM agents a LEFT/* why */JOIN users u ON true", True),
        ("SELECT * FROM (SELECT a.id FROM agents a RIGHT JOIN users u ON true) s", True),
        ("SELECT type, count(*) FROM agents GROUP BY ROLLUP (type)", True),
        ("SELECT 'LEFT JOIN' AS a, $$ROLLUP$$ AS b FROM agents -- FULL JOIN", False),
    ],
)
def test_outer_joins_and_grouping_sets_are_read_from_code_only(body: str, may_null: bool) -> None:
    query = parse_one(f"-- name: things.get :one\n-- Doc.\n{body};")
    assert query.may_null_table_columns is may_null

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


FILTERED = (
    "-- name: things.list :many\n-- Doc.\n-- sort: created_at timestamptz\n"
    "SELECT id FROM t\nWHERE\n    (:kind::text IS NULL OR kind = :kind)\n"
    "    AND (:owner::uuid IS NULL OR (owner = :owner OR ':owner IS NULL OR' = note))\n"
    "    AND {keyset}\nORDER BY {order}\nLIMIT :limit;"
)


def test_variants_keep_the_given_filters_and_leave_out_the_rest() -> None:
    query = parse_one(FILTERED)
    assert [f.name for f in query.optional_filters] == ["kind", "owner"]
    assert query.variant_keys == ("kind", "owner", "after_id")
    assert query.variant(["kind", "owner", "after_id"]) == (
        "SELECT id FROM t\nWHERE\n    (kind = :kind)\n"
        "    AND ((owner = :owner OR ':owner IS NULL OR' = note))\n"
        "    AND {keyset}\nORDER BY {order}\nLIMIT :limit;"
    )
    assert query.variant(["owner"]) == (
        "SELECT id FROM t\nWHERE\n    ((owner = :owner OR ':owner IS NULL OR' = note))\n"
        "ORDER BY {order}\nLIMIT :limit;"
    )
    assert query.variant(["after_id"]) == (
        "SELECT id FROM t\nWHERE\n    {keyset}\nORDER BY {order}\nLIMIT :limit;"
    )
    assert query.variant([]) == "SELECT id FROM t\nWHERE\n    TRUE\nORDER BY {order}\nLIMIT :limit;"


def test_a_variant_statement_has_no_null_guard_and_its_keyset_none_either(conn) -> None:
    query = parse_one(FILTERED)
    after = query.statement("created_at", False, ["kind", "after_id"]).as_string(conn)
    assert "IS NULL" not in after
    assert "(kind = %(kind)s)" in after and "owner" not in after
    assert '("created_at", id) > (%(after_value)s::timestamptz, %(after_id)s::uuid)' in after
    first = query.statement("created_at", True, ["owner"]).as_string(conn)
    assert "after_id" not in first and 'ORDER BY "created_at" DESC, id DESC' in first
    whole = query.statement("created_at").as_string(conn)
    assert "%(kind)s::text IS NULL OR kind = %(kind)s" in whole
    assert "%(after_id)s::uuid IS NULL OR" in whole


def test_a_guarded_parameter_used_outside_its_guard_leaves_the_text_whole() -> None:
    query = parse_one(
        FILTERED.replace("SELECT id FROM t", "SELECT id, :kind::text AS asked FROM t")
    )
    assert query.optional_filters == ()
    assert query.variant_keys == ("after_id",)
    assert ":kind::text IS NULL OR kind = :kind" in query.variant(["after_id"])


def test_bindings_send_the_variant_and_prepare_only_plain_sql(monkeypatch) -> None:
    from toolkit.db import bind

    queries = QueryRegistry()
    queries.load_text(FILTERED, "sql/things.sql")
    queries.load_text(
        FILTERED.replace("things.list", "things.odd").replace(
            "SELECT id FROM t", "SELECT id, :kind::text AS asked FROM t"
        ),
        "sql/odd.sql",
    )
    monkeypatch.setattr(bind, "registry", lambda: queries)
    before = list(bind.BINDINGS)
    try:
        plain = bind.Many("things.list", str, ("kind", "owner", "limit"))
        odd = bind.Many("things.odd", str, ("kind", "owner", "limit"))
    finally:
        bind.BINDINGS[:] = before
    values = {"kind": "a", "owner": None, "limit": 5, "after_value": None, "after_id": None}
    sent = plain.statement_for(values, "created_at")
    assert "(kind = %(kind)s)" in sent and "IS NULL" not in sent
    assert plain.statement_for(values, "created_at") is sent  # rendered once
    assert plain.prepare is None  # psycopg's threshold, as for any plain statement
    assert "IS NULL OR" in odd.statement_for(values, "created_at")
    assert odd.prepare is False  # a null guard stays: planned with its values on every call


def test_whether_a_binding_prepares_follows_the_guards_the_registry_parses(monkeypatch) -> None:
    # A guard split over lines is still a guard: its text is sent whole, never
    # prepared. Words in a literal or a comment are none: that query prepares.
    from toolkit.db import bind

    split = (
        "-- name: things.split :many\n-- Doc.\n-- sort: created_at timestamptz\n"
        "SELECT id, :kind::text AS asked FROM t\n"
        "WHERE (:kind::text IS NULL\n        OR kind = :kind)\n"
        "    AND {keyset}\nORDER BY {order}\nLIMIT :limit;"
    )
    quoted = (
        "-- name: things.quoted :many\n-- Doc.\n-- sort: created_at timestamptz\n"
        "SELECT id FROM t -- owner IS NULL OR kind = 'a' reads as a guard to a text search\n"
        "WHERE note <> ' IS NULL OR ' AND {keyset}\nORDER BY {order}\nLIMIT :limit;"
    )
    queries = QueryRegistry()
    queries.load_text(split, "sql/split.sql")
    queries.load_text(quoted, "sql/quoted.sql")
    monkeypatch.setattr(bind, "registry", lambda: queries)
    before = list(bind.BINDINGS)
    try:
        split_binding = bind.Many("things.split", str, ("kind", "limit"))
        quoted_binding = bind.Many("things.quoted", str, ("limit",))
    finally:
        bind.BINDINGS[:] = before
    assert queries["things.split"].optional_filters == ()
    assert queries["things.split"].null_guards == ("kind",)
    assert split_binding.prepare is False
    assert queries["things.quoted"].null_guards == ()
    assert quoted_binding.prepare is None


def test_queries_show_prints_every_variant(capsys) -> None:
    from toolkit.cli import main

    assert main(["queries", "show", "agents.list"]) == 0
    shown = capsys.readouterr().out
    assert "-- Sent as one of 16 variants" in shown
    assert shown.count("\n-- variant: ") == 16
    assert "-- variant: type, owner_id; after a cursor\n" in shown
    variant = shown.split("-- variant: type, owner_id; after a cursor\n", 1)[1].split("\n\n")[0]
    assert "AND (type = :type)\n    AND (owner_id = :owner_id)\n    AND {keyset}" in variant
    assert "is_active" not in variant.split("FROM agents", 1)[1]
    assert main(["queries", "show", "agents.get"]) == 0
    assert "variant" not in capsys.readouterr().out

"""One door, checked on the source: every transaction commits through
``Database.transaction()`` / ``AsyncDatabase.transaction()`` (their body is
``transaction_on`` in toolkit/aio/db/database.py and its generated twin), and
no pool is made anywhere else.

A second door is a ``.transaction(...)`` call on anything but a Database (a
psycopg connection's own ``transaction()`` skips the lost-COMMIT lookup and
the error translation), a ``.commit()`` call, a ``"BEGIN"``/``"COMMIT"``
statement, a ``ConnectionPool(...)`` / ``AsyncConnectionPool(...)``, or a
connection opened with psycopg's own ``connect`` (``Database.session()`` and the
door's ``connect()`` make one with the door's settings). A
Database-valued receiver is recognised by its name: ``db``, ``database``,
``async_db``, ``self._db``, ...
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

TOOLKIT = Path(__file__).resolve().parents[1] / "toolkit"
THE_DOOR = {TOOLKIT / "aio" / "db" / "database.py", TOOLKIT / "db" / "database.py"}
POOLS = {"ConnectionPool", "AsyncConnectionPool", "NullConnectionPool", "AsyncNullConnectionPool"}
DATABASE_NAME = re.compile(r"(^|_)(db|database)$")


def _last_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _opens_a_connection(func: ast.expr) -> bool:
    """``psycopg.connect(...)``, ``Connection.connect(...)``, ``AsyncConnection.connect(...)``:
    a connection that skips the door's settings (prepare threshold, options, timeouts)."""
    if not (isinstance(func, ast.Attribute) and func.attr == "connect"):
        return False
    return _last_name(func.value) in ("psycopg", "Connection", "AsyncConnection")


def second_doors(source: str) -> list[str]:
    """Every place in ``source`` that opens, commits or pools outside the one door."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        where = f"line {node.lineno}: {ast.unparse(node)[:80]}"
        if isinstance(func, ast.Attribute):
            receiver = _last_name(func.value) or ""
            if func.attr == "commit" or (
                func.attr == "transaction" and not DATABASE_NAME.search(receiver)
            ):
                found.append((node.lineno, where))
            elif func.attr == "execute" and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    statement = first.value.strip().rstrip(";").strip().upper()
                    if statement in ("BEGIN", "COMMIT", "START TRANSACTION", "END"):
                        found.append((node.lineno, where))
        if _last_name(func) in POOLS or _opens_a_connection(func):
            found.append((node.lineno, where))
    return [where for _, where in sorted(found)]


def test_the_scan_sees_each_kind_of_second_door() -> None:
    source = """
async def f(conn, db, database, self, pool_cls):
    async with conn.transaction():
        pass
    with tx.transaction():
        pass
    conn.commit()
    await conn.execute("BEGIN")
    conn.execute("commit;")
    pool = AsyncConnectionPool("url")
    other = psycopg_pool.ConnectionPool("url")
    async with db.transaction(), database.transaction(), self.async_db.transaction():
        pass
    conn.execute("SELECT 1")
    listener = psycopg.connect("url")
    other = await psycopg.AsyncConnection.connect("url")
    fine = connect("url", connect_timeout=5, context="x")
"""
    assert [line.split(":")[0] for line in second_doors(source)] == [
        "line 3",
        "line 5",
        "line 7",
        "line 8",
        "line 9",
        "line 10",
        "line 11",
        "line 15",
        "line 16",
    ]


SOURCES = sorted(p for p in TOOLKIT.rglob("*.py") if p not in THE_DOOR)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(TOOLKIT)))
def test_no_second_door_outside_the_database_module(path: Path) -> None:
    doors = second_doors(path.read_text(encoding="utf-8"))
    assert doors == [], (
        f"{path.relative_to(TOOLKIT.parent)} opens a connection or a transaction, commits or "
        "makes a pool "
        f"outside Database/AsyncDatabase: {doors}; use db.transaction() "
        "(or toolkit.aio.db.database.transaction_on for a bare pooled connection)"
    )

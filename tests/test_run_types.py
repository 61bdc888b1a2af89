"""What mypy says ``run`` returns for each kind of binding, sync and async.

The drivers' ``run`` is one function with an overload per kind, so a caller
gets the record type back (``T`` for ``One[T]``, ``T | None`` for
``OneOrNone``/``Returning``/``Scalar``, ``list[T]`` for ``Many[T]``, ``int``
for ``Exec``) and a kind it cannot run (``Copy``) or a binding called as a
function is a type error. Runs in ``tox -e lint`` (it needs mypy).
"""

from __future__ import annotations

from pathlib import Path

from tests.support.mypy_snippets import mypy_errors

SNIPPET = """
from typing import assert_type
from uuid import UUID

import toolkit.aio.db
import toolkit.db
from toolkit.db.bind import Copy, Exec, Many, One, OneOrNone, Returning, Scalar

one: One[str] = One.__new__(One)
optional: OneOrNone[str] = OneOrNone.__new__(OneOrNone)
returning: Returning[str] = Returning.__new__(Returning)
many: Many[str] = Many.__new__(Many)
scalar: Scalar[bool] = Scalar.__new__(Scalar)
execute: Exec = Exec.__new__(Exec)
load: Copy = Copy.__new__(Copy)
key = UUID(int=0)


def sync(conn: toolkit.db.Connection) -> None:
    assert_type(toolkit.db.run(conn, one, key, id=key), str)
    assert_type(toolkit.db.run(conn, optional, id=key), str | None)
    assert_type(toolkit.db.run(conn, returning, id=key), str | None)
    assert_type(toolkit.db.run(conn, many, sort="name", descending=True, id=key), list[str])
    assert_type(toolkit.db.run(conn, scalar, id=key), bool | None)
    assert_type(bool(toolkit.db.run(conn, scalar, id=key)), bool)
    assert_type(toolkit.db.run(conn, execute, id=key), int)
    assert_type(toolkit.db.copy(conn, load, [(1,)]), int)
    toolkit.db.run(conn, load)  # E: a Copy is fed by copy
    toolkit.db.run(conn, optional, key, id=key)  # E: only One takes a key
    one(conn, id=key)  # E: a binding is a value


async def run_async(conn: toolkit.aio.db.AsyncConnection) -> None:
    assert_type(await toolkit.aio.db.run(conn, one, key, id=key), str)
    assert_type(await toolkit.aio.db.run(conn, optional, id=key), str | None)
    assert_type(await toolkit.aio.db.run(conn, many, id=key), list[str])
    assert_type(await toolkit.aio.db.run(conn, scalar, id=key), bool | None)
    assert_type(await toolkit.aio.db.run(conn, execute, id=key), int)
    assert_type(await toolkit.aio.db.copy(conn, load, [(1,)]), int)
"""


def test_run_is_typed_per_kind_and_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    errors = mypy_errors(SNIPPET, tmp_path, name="run_types_snippet.py")
    assert len(errors.expected) == 3
    assert errors.found == errors.expected, errors.output

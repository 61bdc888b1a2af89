"""Users (queries in ``sql/users.sql``).

Ordinary reads return :class:`~toolkit.repositories.records.User`, which has no password
hash; :func:`get_credentials` is the one query that reads it.
"""

from __future__ import annotations

from typing import Unpack
from uuid import UUID

from toolkit.aio.db.database import AsyncConnection
from toolkit.aio.db.drivers import run
from toolkit.aio.db.patterns import Entity, parse_id, validate_patch
from toolkit.db.bind import OneOrNone, Scalar
from toolkit.errors import NotFound
from toolkit.repositories.records import User, UserCreate, UserCredentials, UserFilter, UserUpdate

_get_by_email = OneOrNone("users.get_by_email", User, ("email",))
_get_credentials = OneOrNone("users.get_credentials", UserCredentials, ("email",))
_set_password_hash = Scalar("users.set_password_hash", bool, ("id", "password_hash"))
_entity = Entity("users", User, UserFilter, UserCreate, UserUpdate, search=True)

create, get, list = _entity.create, _entity.get, _entity.list
count, search, delete = _entity.count, _entity.search, _entity.delete


async def get_by_email(conn: AsyncConnection, email: str) -> User | None:
    """The user with this email, compared case-insensitively, or None."""
    return await run(
        conn, _get_by_email, email=validate_patch(UserCreate, {"email": email})["email"]
    )


async def get_credentials(conn: AsyncConnection, email: str) -> UserCredentials | None:
    """What authentication needs for an email (including the hash), or None."""
    return await run(
        conn, _get_credentials, email=validate_patch(UserCreate, {"email": email})["email"]
    )


async def set_password_hash(
    conn: AsyncConnection, user_id: UUID | str, password_hash: str | None
) -> None:
    """Replace a user's password hash (None clears it); NotFound if no such user."""
    key = parse_id(user_id)
    checked = validate_patch(UserCreate, {"password_hash": password_hash})
    found = await run(conn, _set_password_hash, id=key, password_hash=checked["password_hash"])
    if not found:
        raise NotFound(_entity.entity, key)


async def update(
    conn: AsyncConnection, user_id: UUID | str, **arguments: Unpack[UserUpdate]
) -> User:
    """Change the fields given in UserUpdate at ``expected_version`` (see Entity.update)."""
    return await _entity.update(conn, user_id, **arguments)

# Generated from toolkit/aio/repositories/users.py by tools/async_to_sync.py: do not edit.
# Edit the async source and run `tox -e generate`.
"""Users (queries in ``sql/users.sql``).

Ordinary reads return :class:`~toolkit.repositories.records.User`, which has no password
hash; :func:`get_credentials` is the one query that reads it.
"""

from __future__ import annotations

from typing import Unpack
from uuid import UUID

from toolkit.db.bind import OneOrNone, Scalar
from toolkit.db.database import Connection
from toolkit.db.drivers import run
from toolkit.db.patterns import Entity, parse_id, validate_patch
from toolkit.errors import NotFound
from toolkit.repositories.records import User, UserCreate, UserCredentials, UserFilter, UserUpdate

_get_by_email = OneOrNone("users.get_by_email", User, ("email",))
_get_credentials = OneOrNone("users.get_credentials", UserCredentials, ("email",))
_set_password_hash = Scalar("users.set_password_hash", bool, ("id", "password_hash"))
_entity = Entity("users", User, UserFilter, UserCreate, UserUpdate, search=True)

create, get, list = _entity.create, _entity.get, _entity.list
count, search, delete = _entity.count, _entity.search, _entity.delete


def get_by_email(conn: Connection, email: str) -> User | None:
    """The user with this email, compared case-insensitively, or None."""
    return run(conn, _get_by_email, email=validate_patch(UserCreate, {"email": email})["email"])


def get_credentials(conn: Connection, email: str) -> UserCredentials | None:
    """What authentication needs for an email (including the hash), or None."""
    return run(conn, _get_credentials, email=validate_patch(UserCreate, {"email": email})["email"])


def set_password_hash(conn: Connection, user_id: UUID | str, password_hash: str | None) -> None:
    """Replace a user's password hash (None clears it); NotFound if no such user."""
    key = parse_id(user_id)
    checked = validate_patch(UserCreate, {"password_hash": password_hash})
    found = run(conn, _set_password_hash, id=key, password_hash=checked["password_hash"])
    if not found:
        raise NotFound(_entity.entity, key)


def update(conn: Connection, user_id: UUID | str, **arguments: Unpack[UserUpdate]) -> User:
    """Change the fields given in UserUpdate at ``expected_version`` (see Entity.update)."""
    return _entity.update(conn, user_id, **arguments)

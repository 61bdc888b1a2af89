# Generated from toolkit/aio/repositories/users.py by tools/async_to_sync.py: do not edit.
# Edit the async source and run `tox -e generate`.
"""Users (queries in ``sql/users.sql``).

Ordinary reads return :class:`~toolkit.records.User`, which has no password
hash; :func:`get_credentials` is the one query that reads it.
"""

from __future__ import annotations

from uuid import UUID

from toolkit.db.bind import OneOrNone, Scalar
from toolkit.db.database import Connection
from toolkit.db.patterns import (
    UNSET,
    Audit,
    Entity,
    Unset,
    parse_id,
    validate_patch,
)
from toolkit.errors import NotFound
from toolkit.records import User, UserCreate, UserCredentials, UserFilter

ENTITY = "user"
_PATCHABLE = ("email", "display_name", "role", "is_active")

_get_by_email = OneOrNone("users.get_by_email", User, ("email",))
_get_credentials = OneOrNone("users.get_credentials", UserCredentials, ("email",))
_set_password_hash = Scalar("users.set_password_hash", bool, ("id", "password_hash"))
_entity: Entity[User, UserFilter] = Entity(
    "users",
    User,
    UserFilter,
    entity=ENTITY,
    create=UserCreate,
    search=True,
    patchable=_PATCHABLE,
)

create = _entity.create
get = _entity.get
list = _entity.list
count = _entity.count
search = _entity.search
delete = _entity.delete


def get_by_email(conn: Connection, email: str) -> User | None:
    """The user with this email, compared case-insensitively, or None."""
    return _get_by_email(conn, email=validate_patch(UserCreate, {"email": email})["email"])


def get_credentials(conn: Connection, email: str) -> UserCredentials | None:
    """What authentication needs for an email (including the hash), or None."""
    return _get_credentials(conn, email=validate_patch(UserCreate, {"email": email})["email"])


def set_password_hash(conn: Connection, user_id: UUID | str, password_hash: str | None) -> None:
    """Replace a user's password hash (None clears it); NotFound if no such user."""
    key = parse_id(user_id)
    checked = validate_patch(UserCreate, {"password_hash": password_hash})
    found = _set_password_hash(conn, id=key, password_hash=checked["password_hash"])
    if not found:
        raise NotFound(ENTITY, key)


def update(
    conn: Connection,
    user_id: UUID | str,
    *,
    expected_version: int,
    email: str | Unset = UNSET,
    display_name: str | Unset = UNSET,
    role: str | Unset = UNSET,
    is_active: bool | Unset = UNSET,
    audit: Audit | None = None,
) -> User:
    """Change the given fields; StaleVersion or NotFound when the guard fails."""
    return _entity.update(
        conn,
        user_id,
        expected_version=expected_version,
        changes={
            "email": email,
            "display_name": display_name,
            "role": role,
            "is_active": is_active,
        },
        audit=audit,
    )

"""Users (queries in ``sql/users.sql``).

Ordinary reads return :class:`~toolkit.records.User`, which has no password
hash; :func:`get_credentials` is the one query that reads it.
"""

from __future__ import annotations

from uuid import UUID

from toolkit.aio.db.database import AsyncConnection
from toolkit.aio.db.patterns import (
    UNSET,
    Audit,
    Entity,
    Unset,
    parse_id,
    validate_patch,
)
from toolkit.db.bind import OneOrNone, Scalar
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


async def get_by_email(conn: AsyncConnection, email: str) -> User | None:
    """The user with this email, compared case-insensitively, or None."""
    return await _get_by_email.acall(
        conn, email=validate_patch(UserCreate, {"email": email})["email"]
    )


async def get_credentials(conn: AsyncConnection, email: str) -> UserCredentials | None:
    """What authentication needs for an email (including the hash), or None."""
    return await _get_credentials.acall(
        conn, email=validate_patch(UserCreate, {"email": email})["email"]
    )


async def set_password_hash(
    conn: AsyncConnection, user_id: UUID | str, password_hash: str | None
) -> None:
    """Replace a user's password hash (None clears it); NotFound if no such user."""
    key = parse_id(user_id)
    checked = validate_patch(UserCreate, {"password_hash": password_hash})
    found = await _set_password_hash.acall(conn, id=key, password_hash=checked["password_hash"])
    if not found:
        raise NotFound(ENTITY, key)


async def update(
    conn: AsyncConnection,
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
    return await _entity.update(
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

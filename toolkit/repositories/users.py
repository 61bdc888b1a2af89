"""Users (queries in ``sql/users.sql``).

Ordinary reads return :class:`~toolkit.records.User`, which has no password
hash; :func:`get_credentials` is the one query that reads it.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from toolkit.db.bind import Exec, Many, One, OneOrNone, Returning, Scalar
from toolkit.db.database import Connection
from toolkit.db.patterns import (
    DEFAULT_LIMIT,
    UNSET,
    Audit,
    Unset,
    atomic,
    changed_fields,
    check_limit,
    check_search_text,
    delete_row,
    guarded_update,
    list_page,
    parse_id,
    record_audit,
    validate,
    validate_patch,
)
from toolkit.errors import NotFound
from toolkit.records import Page, User, UserCreate, UserCredentials, UserFilter

ENTITY = "user"
_FILTERS = ("role", "is_active")
_PATCHABLE = ("email", "display_name", "role", "is_active")

_create = One(
    "users.create",
    User,
    ("email", "display_name", "role", "is_active", "password_hash"),
    entity=ENTITY,
)
_get = One("users.get", User, ("id",), entity=ENTITY)
_get_by_email = OneOrNone("users.get_by_email", User, ("email",))
_get_credentials = OneOrNone("users.get_credentials", UserCredentials, ("email",))
_list = Many("users.list", User, (*_FILTERS, "limit"))
_count = Scalar("users.count", int, _FILTERS)
_search = Many("users.search", User, ("text", "limit"))
_update = Returning(
    "users.update",
    User,
    ("id", "expected_version", *_PATCHABLE, *(f"set_{name}" for name in _PATCHABLE)),
)
_set_password_hash = Exec("users.set_password_hash", ("id", "password_hash"))
_current_version = Scalar("users.current_version", int, ("id",))
_delete = Exec("users.delete", ("id",))


def create(
    conn: Connection, data: UserCreate | Mapping[str, Any], *, audit: Audit | None = None
) -> User:
    """Create a user; Conflict if the email is taken (in any letter case)."""
    user = validate(UserCreate, data)
    with atomic(conn):
        created = _create(conn, **user.model_dump())
        record_audit(conn, audit, "user.created", created.id)
    return created


def get(conn: Connection, user_id: UUID | str) -> User:
    """The user with this id; NotFound otherwise."""
    key = parse_id(user_id)
    return _get(conn, key, id=key)


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
    if _set_password_hash(conn, id=key, password_hash=checked["password_hash"]) == 0:
        raise NotFound(ENTITY, key)


def list(
    conn: Connection,
    filters: UserFilter | Mapping[str, Any] | None = None,
    *,
    sort: str = "created_at",
    descending: bool = False,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page[User]:
    """A keyset page of users; filter by ``role`` and ``is_active``.

    Sort by ``created_at`` or ``email``.
    """
    where = validate(UserFilter, filters)
    return list_page(
        _list,
        conn,
        where.model_dump(),
        sort=sort,
        descending=descending,
        limit=limit,
        cursor=cursor,
    )


def count(conn: Connection, filters: UserFilter | Mapping[str, Any] | None = None) -> int:
    """How many users match the filters."""
    return _count(conn, **validate(UserFilter, filters).model_dump()) or 0


def search(conn: Connection, text: str, *, limit: int = DEFAULT_LIMIT) -> builtins.list[User]:
    """Users whose email or display name contains ``text``, case-insensitively."""
    return _search(conn, text=check_search_text(text), limit=check_limit(limit))


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
    key = parse_id(user_id)
    changes = changed_fields(
        {"email": email, "display_name": display_name, "role": role, "is_active": is_active}
    )
    return guarded_update(
        conn,
        _update,
        lambda c, k: _current_version(c, id=k),
        entity=ENTITY,
        key=key,
        expected_version=expected_version,
        changes=validate_patch(UserCreate, changes),
        columns=_PATCHABLE,
        audit=audit,
    )


def delete(conn: Connection, user_id: UUID | str, *, audit: Audit | None = None) -> None:
    """Delete a user and what they own; NotFound if no such user."""
    delete_row(conn, _delete, entity=ENTITY, key=parse_id(user_id), audit=audit)

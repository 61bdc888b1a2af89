"""Tenant ids: what every layer that keys data by workspace accepts as one.

The database (:mod:`toolkit.db.tenancy`), the cache's keys and the storage
keys validate a tenant the same way, here, below all of them. No I/O.
"""

from __future__ import annotations

from uuid import UUID

from toolkit.errors import InvalidInput

__all__ = ["DEFAULT_TENANT", "tenant_id"]

DEFAULT_TENANT = UUID(int=0)
"""The tenant a single-workspace database's rows belong to (migrations put existing rows there)."""

_LONGEST_UUID_TEXT = len("urn:uuid:") + 36
"""The URN form, the longest text ``uuid.UUID`` reads; longer text is refused unparsed."""


def tenant_id(value: object) -> UUID:
    """``value`` as a tenant id: a :class:`~uuid.UUID`, or the text of one.

    Returns a plain UUID (a subclass's ``__str__`` never reaches SQL). Raises
    :class:`~toolkit.errors.InvalidInput` for anything else (``None``, bools,
    ints, bytes, malformed text), with a bounded form of the value on
    ``error.value`` and none in the message.
    """
    if isinstance(value, UUID):
        return UUID(int=value.int)
    if isinstance(value, str) and len(value) <= _LONGEST_UUID_TEXT:
        try:
            return UUID(value)
        except ValueError:
            pass
    kind = "text that is not one" if isinstance(value, str) else f"a {type(value).__name__}"
    raise InvalidInput(
        f"tenant must be a UUID or the text of one, not {kind}",
        field="tenant",
        value=value,
    )

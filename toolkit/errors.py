"""The toolkit's exceptions.

Every error a caller can see from the toolkit is a :class:`ToolkitError`.
Driver exceptions (psycopg, redis, pika, botocore) are translated at the
boundary, so ``except ToolkitError`` is enough to handle every failure, and
the narrower classes tell the caller what to do about it.
"""

from __future__ import annotations

import builtins
import reprlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any

MAX_SHOWN = 80
"""The most characters of a caller's value that an error message shows."""


class _BoundedRepr(reprlib.Repr):
    """reprlib, dispatching on isinstance, that never raises and never recurses deeply.

    Containers (subclasses included) are cut at 3 levels and a few items,
    ints of more than 256 bits are described rather than converted (``repr``
    of a huge int raises ValueError), and anything else whose ``repr``
    fails or recurses too deeply is named by its type.
    """

    _HUGE_INT_BITS = 256

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxdict = self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = 4
        self.maxstring = self.maxother = MAX_SHOWN // 2

    def repr1(self, x: Any, level: int) -> str:
        # Exact type names would send a dict subclass to repr_instance, i.e. builtins.repr.
        dispatch: tuple[tuple[type[Any] | tuple[type[Any], ...], Callable[[Any, int], str]], ...]
        dispatch = (
            (dict, self.repr_dict),
            (list, self.repr_list),
            (tuple, self.repr_tuple),
            (frozenset, self.repr_frozenset),
            (set, self.repr_set),
            (str, self.repr_str),
            ((bytes, bytearray), self._repr_bytes),
            (int, self.repr_int),
        )
        for kind, render in dispatch:
            if isinstance(x, kind):
                return render(x, level)
        return self.repr_instance(x, level)

    def repr_dict(self, x: Any, level: int) -> str:
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        pieces = [
            f"{self.repr1(key, level - 1)}: {self.repr1(item, level - 1)}"
            for key, item in islice(dict.items(x), self.maxdict)
        ]
        if len(x) > self.maxdict:
            pieces.append(self.fillvalue)
        return "{" + ", ".join(pieces) + "}"

    def _repr_bytes(self, x: bytes | bytearray, level: int) -> str:
        shown = builtins.repr(bytes(x[: self.maxstring]))
        return shown + self.fillvalue if len(x) > self.maxstring else shown

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > self._HUGE_INT_BITS:
            return f"<{'negative ' if x < 0 else ''}int of {x.bit_length()} bits>"
        return self.repr_instance(x, level)  # keeps True, IntEnum members; catches a bad __repr__


_BOUNDED = _BoundedRepr()


def bounded_repr(value: object, limit: int = MAX_SHOWN) -> str:
    """``repr(value)`` fit for an error message: at most ``limit`` characters, never raising.

    Every message or :attr:`InvalidInput.value` that shows a caller's value
    goes through here, so a 5,000-level dict, a 10 MB string or a
    100,000-digit int cannot make the error itself fail or flood a log.
    """
    text = _BOUNDED.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ToolkitError(Exception):
    """Base class of every exception raised by the toolkit.

    ``detail`` holds what the server added for debugging (PostgreSQL's
    DETAIL, which can quote row values such as a duplicate email); it is
    never part of the message, so logging ``str(error)`` leaks no data.

    ``driver_error`` holds the driver exception (psycopg's) the error was
    translated from, for debugging. It is kept off the exception chain
    (no ``__cause__``, no ``__context__``): its text can quote DETAIL and so
    row values, and tracebacks print every link of a chain.
    """

    detail: str | None = None
    driver_error: BaseException | None = None


class ConfigurationError(ToolkitError):
    """A setting is missing or invalid; the message names the variable."""


class TenantRequired(ConfigurationError):
    """Tenant-owned rows were used in a transaction that carries no tenant.

    Row-level security asked for the transaction's tenant (SQLSTATE TN001)
    and none was set: run the work in ``Database.transaction(tenant=...)``
    or ``Database.connection(tenant=...)``. Nothing was read or written.
    """


class TenancyUnavailable(ConfigurationError):
    """Tenant-scoped work refused to start: the database role is not bound by row-level security.

    A superuser, a role with BYPASSRLS, and the owner of the tables (or a
    member of the role that owns them) can read or switch off every
    tenant's rows; the message names which. Connect as a login role that is
    a member of ``toolkit_app``. Nothing was run.
    """


class InvalidInput(ToolkitError, ValueError):
    """An argument was rejected before it could change anything.

    ``field`` names the offending argument and ``value`` holds a short,
    printable form of what was given (:func:`bounded_repr`, None when no
    value was named), never the object itself.
    """

    def __init__(self, message: str, *, field: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.field = field
        self.value: str | None = None if value is None else bounded_repr(value)


class NotFound(ToolkitError, LookupError):
    """The row (or object) named by the caller does not exist."""

    def __init__(self, entity: str, key: Any) -> None:
        super().__init__(f"{entity} {key!s} not found")
        self.entity = entity
        self.key = key


class Conflict(ToolkitError):
    """A uniqueness rule was violated (a duplicate email, an existing key).

    Permanent: the same call will fail the same way until the data changes.
    """


class RetryableConflict(Conflict):
    """The database aborted the transaction to resolve a race with another one.

    A serialization failure or a deadlock: nothing of the transaction was
    written, and running the whole transaction again is expected to succeed.
    This is the class a retry decorator should target.
    """


class InvalidReference(ToolkitError):
    """A foreign key points at a row that does not exist (or still has children)."""


class TenantMismatch(InvalidReference):
    """A row names another tenant than the transaction's; row-level security refused it.

    Raised for an INSERT or UPDATE whose ``tenant_id`` is not the current
    tenant's (the policies' WITH CHECK). A row referencing another tenant's
    row fails its composite foreign key and raises :class:`InvalidReference`,
    this class's base, so ``except InvalidReference`` handles both. Nothing
    was written. ``table`` names the table; the message never shows values.
    """

    def __init__(self, message: str, *, table: str | None = None) -> None:
        super().__init__(message)
        self.table = table


class StaleVersion(ToolkitError):
    """An optimistic update was made against a version that is no longer current."""

    def __init__(self, entity: str, key: Any, expected: int, actual: int) -> None:
        super().__init__(
            f"{entity} {key!s} is at version {actual}, not {expected}: reload it and retry"
        )
        self.entity = entity
        self.key = key
        self.expected = expected
        self.actual = actual


class IllegalTransition(ToolkitError):
    """A status change that the entity's state machine does not allow."""

    def __init__(self, entity: str, key: Any, current: str, target: str) -> None:
        super().__init__(f"{entity} {key!s} cannot go from {current!r} to {target!r}")
        self.entity = entity
        self.key = key
        self.current = current
        self.target = target


class Unavailable(ToolkitError):
    """A service could not be reached, or did not answer within its bound.

    Raised by ``Database.transaction()``, it means nothing of the transaction
    was committed (a lost COMMIT whose outcome is not known raises
    :class:`OutcomeUnknown` instead). A single statement on a bare autocommit
    connection whose connection was lost while it ran may have run: writes
    that must not be duplicated belong in a transaction. Retry with backoff.
    """


class OutcomeUnknown(ToolkitError):
    """The connection was lost while COMMIT was in flight and the outcome could not be learned.

    The transaction may have committed. Do not retry blindly: ask
    ``Database.transaction_status(error.xid)`` later (it answers
    ``"committed"``, ``"aborted"`` or ``"in progress"``), or make the write
    idempotent. Deliberately not a subclass of :class:`Unavailable`, whose
    contract is that nothing was written.
    """

    def __init__(
        self, message: str, *, xid: int, server_started_at: datetime | None = None
    ) -> None:
        super().__init__(message)
        self.xid = xid
        self.server_started_at = server_started_at
        """When the server that was sent COMMIT had started; pass it to
        ``transaction_status`` so that an answer after a crash is not trusted
        blindly (a transaction id that never reached the disk can be reused)."""


class Closed(ToolkitError):
    """A ``Database`` (or ``AsyncDatabase``) was used after its ``close()``.

    A closed one cannot be reopened and retrying will not help: make a new
    one. Nothing was run.
    """


class QueryDefinitionError(ToolkitError):
    """A named query in ``sql/`` is malformed, or a binding disagrees with it."""


class DatabaseError(ToolkitError):
    """The database refused a statement for a reason not covered above."""


class IntegrityError(ToolkitError):
    """Stored data failed an integrity check (a broken audit chain, a bad checksum)."""


class DeserializationRefused(IntegrityError):
    """A stored value names a type (or format) outside the allow-list; nothing of it ran.

    ``refused`` holds the names (``module.name``) or format that were refused.
    """

    def __init__(self, message: str, *, refused: Sequence[str]) -> None:
        super().__init__(message)
        self.refused = tuple(refused)


class RetentionUnavailable(ConfigurationError):
    """The storage cannot put an object under retention (S3 Object Lock); nothing was changed.

    Raised by ``Storage.retain`` on the local, memory and pyfilesystem2 back
    ends, whose objects are protected by create-only writes alone, and on an
    S3 bucket without Object Lock. ``reason`` says what could be changed
    (``"the bucket has no Object Lock"``), None where nothing can.
    """

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class SourceFailed(ToolkitError):
    """The caller's own upload source raised (a client disconnect, a broken generator).

    Nothing was stored. Not an outage: retrying with the same source will
    not help, the bytes must be sent again. ``original`` (also the
    ``__cause__``) is the exception the source raised; the message names only
    its type, never its text.
    """

    def __init__(self, original: Exception) -> None:
        super().__init__(
            f"the upload's source raised {type(original).__name__} while being read; "
            "nothing was stored"
        )
        self.original = original


# Messaging


@dataclass(frozen=True)
class ArgumentDrift:
    """One argument whose value on the broker differs from the declared one."""

    name: str
    declared: str
    current: str

    def __str__(self) -> str:
        return f"{self.name}: declared {self.declared}, broker has {self.current}"


class TopologyDrift(ConfigurationError):
    """An exchange or queue exists on the broker with other arguments than declared.

    ``kind`` is ``"queue"`` or ``"exchange"``, ``name`` the full name, and
    ``differences`` every argument that differs (broker value and ours).
    Nothing was changed on the broker.
    """

    def __init__(self, kind: str, name: str, differences: Sequence[ArgumentDrift]) -> None:
        listed = "; ".join(str(d) for d in differences) or "unknown argument"
        super().__init__(
            f"{kind} {name!r} exists on the broker with different arguments ({listed}); "
            f"delete it (after moving its messages) or change the declaration to match"
        )
        self.kind = kind
        self.name = name
        self.differences = tuple(differences)


class Unroutable(ToolkitError):
    """The broker returned a mandatory message: no queue is bound for its routing key."""

    def __init__(self, exchange: str, routing_key: str, reply: str) -> None:
        super().__init__(
            f"message to exchange {exchange!r} with routing key {routing_key!r} was "
            f"unroutable ({reply}): declare the topology first"
        )
        self.exchange = exchange
        self.routing_key = routing_key


class MessageTooLarge(InvalidInput):
    """A message body is larger than the limit; nothing was sent or stored."""

    def __init__(self, size: int, limit: int, queue: str) -> None:
        super().__init__(
            f"message for {queue!r} is {size} bytes, over the {limit}-byte limit: "
            "store large payloads in storage and send their key",
            field="body",
            value=size,
        )
        self.size = size
        self.limit = limit


class MessageRefused(ToolkitError):
    """A consumer refused a message it must never apply; the worker parks it at once.

    ``reason`` is the parked message's ``x-parked-reason``:
    ``missing-timestamp`` (no AMQP timestamp: the inbox cannot tell a
    redelivery of it) or ``inbox-expired`` (created in a range the inbox no
    longer keeps, so a record of it may be gone). No retry changes either.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class Rejected(ToolkitError):
    """The broker refused a message (a negative confirm), e.g. its queue is full."""

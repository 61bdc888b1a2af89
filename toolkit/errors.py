"""The toolkit's exceptions.

Every error a caller can see from the toolkit is a :class:`ToolkitError`.
Driver exceptions (psycopg, redis, pika, botocore) are translated at the
boundary, so ``except ToolkitError`` is enough to handle every failure, and
the narrower classes tell the caller what to do about it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class ToolkitError(Exception):
    """Base class of every exception raised by the toolkit."""


class ConfigurationError(ToolkitError):
    """A setting is missing or invalid; the message names the variable."""


class InvalidInput(ToolkitError, ValueError):
    """An argument was rejected before it could change anything.

    ``field`` names the offending argument and ``value`` holds a short,
    printable form of what was given.
    """

    def __init__(self, message: str, *, field: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


class NotFound(ToolkitError, LookupError):
    """The row (or object) named by the caller does not exist."""

    def __init__(self, entity: str, key: Any) -> None:
        super().__init__(f"{entity} {key!s} not found")
        self.entity = entity
        self.key = key


class Conflict(ToolkitError):
    """A uniqueness rule was violated (a duplicate email, an existing key)."""


class InvalidReference(ToolkitError):
    """A foreign key points at a row that does not exist (or still has children)."""


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

    Nothing the failed call attempted was committed unless the message says
    otherwise.
    """


class QueryDefinitionError(ToolkitError):
    """A named query in ``sql/`` is malformed, or a binding disagrees with it."""


class VerificationError(ToolkitError):
    """``toolkit verify`` found queries and records that disagree."""


class DatabaseError(ToolkitError):
    """The database refused a statement for a reason not covered above."""


class IntegrityError(ToolkitError):
    """Stored data failed an integrity check (a broken audit chain, a bad checksum)."""


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


class Rejected(ToolkitError):
    """The broker refused a message (a negative confirm), e.g. its queue is full."""

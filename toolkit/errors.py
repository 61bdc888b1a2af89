"""The toolkit's exceptions.

Every error a caller can see from the toolkit is a :class:`ToolkitError`.
Driver exceptions (psycopg, redis, pika, botocore) are translated at the
boundary, so ``except ToolkitError`` is enough to handle every failure, and
the narrower classes tell the caller what to do about it.
"""

from __future__ import annotations

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

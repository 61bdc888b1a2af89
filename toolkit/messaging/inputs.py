"""Checks of what callers pass to the outbox and the inbox, shared by the sync and async APIs.

No I/O: :func:`check_headers` (AMQP headers as stored and sent),
:func:`message_body` (a :class:`~toolkit.messaging.models.Message` within the
size limit), :func:`check_messages`, :func:`check_max_bytes` and
:func:`check_consumer`, :func:`check_queue`, :func:`check_created_at`.
:mod:`toolkit.messaging.outbox` and :mod:`toolkit.messaging.inbox` are generated from
their async sources under ``toolkit/aio/messaging/``; both import these, so one check
exists once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from toolkit.db.inputs import check_count
from toolkit.errors import InvalidInput, bounded_repr
from toolkit.messaging.models import Message, refuse_tenant_header
from toolkit.messaging.publisher import check_size

NOTIFY_CHANNEL = "toolkit_outbox"
"""The channel the outbox's insert trigger NOTIFYs (once per transaction, at commit)."""

MAX_HEADERS = 64
MAX_HEADER_TEXT = 1024
MAX_MESSAGE_LIMIT = 128 << 20
"""The largest ``max_message_bytes`` a caller may ask for."""

_CONSUMER = re.compile(r"^[a-z][a-z0-9_.-]{0,199}$")


def _header_text(text: str) -> bool:
    return len(text) <= MAX_HEADER_TEXT and "\x00" not in text and text.isprintable()


def check_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """AMQP headers as stored and sent: at most 64 names of text, values of text,
    whole numbers (64-bit), booleans or None; anything else is InvalidInput, and
    so is :data:`~toolkit.messaging.models.TENANT_HEADER` (the relay sets it)."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping) or len(headers) > MAX_HEADERS:
        raise InvalidInput(
            f"headers must be a mapping of at most {MAX_HEADERS} entries, "
            f"got {bounded_repr(headers)}",
            field="headers",
            value=headers,
        )
    for name, value in headers.items():
        fits = (
            value is None
            or isinstance(value, bool)
            or (isinstance(value, int) and -(2**63) <= value < 2**63)
            or (isinstance(value, str) and _header_text(value))
        )
        if not (isinstance(name, str) and 1 <= len(name) <= 128 and _header_text(name) and fits):
            raise InvalidInput(
                f"header {bounded_repr(name)}: names are 1-128 printable characters and values "
                f"text, 64-bit integers, booleans or None; got {bounded_repr(value)}",
                field="headers",
                value=headers,
            )
    refuse_tenant_header(headers)
    return dict(headers)


def check_message(message: Any) -> Message:
    """``message`` itself if it is a message model; InvalidInput otherwise."""
    if not isinstance(message, Message):
        raise InvalidInput(
            f"message must be a toolkit.messaging Message, got {bounded_repr(message)}",
            field="message",
            value=message,
        )
    return message


def check_max_bytes(limit: Any) -> int:
    """A ``max_message_bytes`` argument: a positive count up to 128 MiB."""
    return check_count(limit, "max_message_bytes", MAX_MESSAGE_LIMIT)


def message_body(message: Any, limit: int) -> bytes:
    """The JSON body of a checked ``message``; MessageTooLarge past ``limit`` bytes
    (the same check the publisher makes)."""
    body = check_message(message).body()
    check_size(body, limit, message.queue)
    return body


def check_messages(messages: Any) -> Iterable[Message]:
    """``messages`` if it is an iterable (of messages: each is checked as it is read)."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Iterable):
        raise InvalidInput(
            f"messages must be an iterable of Message, got {bounded_repr(messages)}",
            field="messages",
            value=messages,
        )
    return messages


def check_queue(name: Any) -> str:
    """The queue a message came from, as the inbox stores it: 1-255 characters of
    storable text (any name a broker may use; the column holds no NUL)."""
    storable = isinstance(name, str) and 1 <= len(name) <= 255 and "\x00" not in name
    if storable:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            storable = False
    if not storable:
        raise InvalidInput(
            f"queue must be 1-255 characters of text, got {bounded_repr(name)}",
            field="queue",
            value=name,
        )
    return str(name)


def check_consumer(name: Any) -> str:
    """A consumer name for the inbox: lowercase, 1-200 of ``a-z0-9_.-``, a letter first."""
    if not isinstance(name, str) or not _CONSUMER.match(name):
        raise InvalidInput(
            f"consumer name must match {_CONSUMER.pattern}, got {bounded_repr(name)}",
            field="consumer",
            value=name,
        )
    return name


def check_created_at(value: Any) -> datetime:
    """A message's creation time as the inbox keys it: a timezone-aware datetime."""
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise InvalidInput(
            f"created_at must be a timezone-aware datetime, got {bounded_repr(value)}",
            field="created_at",
            value=value,
        )
    return value

"""The inbox's functions, sync and async (tests/support/modes.py): one behaviour, two APIs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.support.modes import Mode, both
from toolkit.db.partitions import maintain
from toolkit.errors import InvalidInput, MessageRefused
from toolkit.messaging import AuditLog, Delivery
from toolkit.tenants import DEFAULT_TENANT

inbox = both("toolkit.messaging.inbox")

pytestmark = pytest.mark.usefixtures("mode")

EVENT = AuditLog(action="user.created", entity="user")
CREATED = datetime.now(UTC).replace(microsecond=0)
"""A creation time the inbox keeps (AMQP timestamps are whole seconds)."""


def delivery(
    message_id: uuid.UUID | None = None, created_at: datetime | None = CREATED
) -> Delivery:
    return Delivery(
        queue="audit.log",
        message=EVENT,
        message_id=message_id or uuid.uuid4(),
        tenant=DEFAULT_TENANT,
        retry_count=0,
        redelivered=False,
        headers={},
        created_at=created_at,
    )


def raw(db: Any) -> Any:
    """The pool itself (an AsyncDatabase is wrapped for the test body in an async run)."""
    return getattr(db, "target", db)


@pytest.fixture
def effects(superuser: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    superuser.execute("CREATE TABLE test_effects (message_id uuid NOT NULL)")
    superuser.execute("GRANT ALL ON test_effects TO PUBLIC")
    return superuser


def effect_count(effects: psycopg.Connection[Any], message_id: uuid.UUID) -> int:
    row = effects.execute("SELECT count(*) FROM test_effects WHERE message_id = %s", (message_id,))
    return int(row.fetchone()[0])  # type: ignore[index]


def test_record_is_true_once_per_consumer_and_message(conn: Any) -> None:
    message_id = uuid.uuid4()
    assert not inbox.seen(conn, "mailer", message_id)
    assert inbox.record(conn, "mailer", str(message_id), "notification.send", CREATED) is True
    assert inbox.record(conn, "mailer", message_id, "notification.send", CREATED) is False
    assert inbox.seen(conn, "mailer", str(message_id))
    assert not inbox.seen(conn, "auditor", message_id)
    assert inbox.record(conn, "auditor", message_id, "notification.send", CREATED) is True


def test_a_rolled_back_record_is_forgotten(db: Any) -> None:
    message_id = uuid.uuid4()
    with pytest.raises(RuntimeError), db.transaction() as tx:
        assert inbox.record(tx, "mailer", message_id, "audit.log", CREATED)
        raise RuntimeError("the effect failed")
    with db.connection() as conn:
        assert not inbox.seen(conn, "mailer", message_id)


@pytest.mark.parametrize("name", ["", "Mailer", "1mailer", "a b", "x" * 201, None, 5])
def test_bad_consumer_names_are_refused(conn: Any, name: Any) -> None:
    with pytest.raises(InvalidInput, match="consumer"):
        inbox.record(conn, name, uuid.uuid4(), "audit.log", CREATED)
    with pytest.raises(InvalidInput, match="consumer"):
        inbox.seen(conn, name, uuid.uuid4())


def test_bad_message_ids_are_refused(conn: Any) -> None:
    with pytest.raises(InvalidInput, match="message_id"):
        inbox.record(conn, "mailer", "not-a-uuid", "audit.log", CREATED)


def test_transactional_applies_each_message_once(
    mode: Mode, db: Any, effects: psycopg.Connection[Any]
) -> None:
    applied: list[uuid.UUID] = []

    def apply(tx: Any, d: Delivery) -> Any:
        applied.append(d.message_id)
        return tx.execute("INSERT INTO test_effects VALUES (%s)", (d.message_id,))

    handler = inbox.transactional(raw(db), "auditor", apply)
    first = delivery()
    mode.run(handler(first))
    again = delivery(first.message_id)
    mode.run(handler(again))
    assert not first.duplicate and again.duplicate
    assert applied == [first.message_id]
    assert effect_count(effects, first.message_id) == 1
    with db.connection() as conn:
        assert inbox.seen(conn, "auditor", first.message_id)


def test_transactional_rolls_back_the_record_with_a_failed_effect(
    mode: Mode, db: Any, effects: psycopg.Connection[Any]
) -> None:
    attempts: list[int] = []
    insert = "INSERT INTO test_effects VALUES (%s)"

    # The effect is written, then the handler fails: its body differs per mode.
    def apply(tx: Any, d: Delivery) -> None:
        attempts.append(1)
        tx.execute(insert, (d.message_id,))
        if len(attempts) == 1:
            raise ConnectionError("the mail server timed out")

    async def aapply(tx: Any, d: Delivery) -> None:
        attempts.append(1)
        await tx.execute(insert, (d.message_id,))
        if len(attempts) == 1:
            raise ConnectionError("the mail server timed out")

    handler = inbox.transactional(raw(db), "mailer", aapply if mode.is_async else apply)
    message = delivery()
    with pytest.raises(ConnectionError):
        mode.run(handler(message))
    assert effect_count(effects, message.message_id) == 0
    with db.connection() as conn:
        assert not inbox.seen(conn, "mailer", message.message_id)
    redelivered = delivery(message.message_id)
    mode.run(handler(redelivered))  # the retry applies it, once
    assert not redelivered.duplicate and len(attempts) == 2
    assert effect_count(effects, message.message_id) == 1


def test_transactional_refuses_a_bad_consumer_name_at_once(db: Any) -> None:
    with pytest.raises(InvalidInput, match="consumer"):
        inbox.transactional(raw(db), "Bad Name", lambda tx, d: None)


def test_a_record_is_found_whatever_creation_time_the_redelivery_carries(conn: Any) -> None:
    """One message published twice under its id at different seconds is applied once."""
    message_id = uuid.uuid4()
    assert inbox.record(conn, "mailer", message_id, "audit.log", CREATED) is True
    later = CREATED + timedelta(seconds=1)
    assert inbox.record(conn, "mailer", message_id, "audit.log", later) is False
    earlier = CREATED - timedelta(days=1)
    assert inbox.record(conn, "mailer", message_id, "audit.log", earlier) is False


@pytest.mark.parametrize("created_at", [None, "2026-01-01", datetime(2026, 1, 1), 5])
def test_a_creation_time_that_is_not_an_aware_datetime_is_refused(
    conn: Any, created_at: Any
) -> None:
    with pytest.raises(InvalidInput, match="created_at"):
        inbox.record(conn, "mailer", uuid.uuid4(), "audit.log", created_at)


def expire_before_today(superuser: psycopg.Connection[Any], url: str) -> None:
    """Drop every inbox partition that ended before now (retention 0), as maintain does."""
    superuser.execute(
        "UPDATE toolkit_partitions.policy SET retention = '0' WHERE parent = 'public.inbox'"
    )
    report = maintain(url)
    assert any(name.startswith("toolkit_partitions.inbox_before_") for name in report.dropped)


def test_a_redelivery_created_in_a_dropped_range_is_refused_never_applied(
    mode: Mode,
    db: Any,
    effects: psycopg.Connection[Any],
    superuser: psycopg.Connection[Any],
    direct_database_url: str,
) -> None:
    applied: list[uuid.UUID] = []

    def apply(tx: Any, d: Delivery) -> Any:
        applied.append(d.message_id)
        return tx.execute("INSERT INTO test_effects VALUES (%s)", (d.message_id,))

    handler = inbox.transactional(raw(db), "auditor", apply)
    yesterday = CREATED - timedelta(days=1)
    first = delivery(created_at=yesterday)
    mode.run(handler(first))
    assert applied == [first.message_id]
    expire_before_today(superuser, direct_database_url)  # its record went with the partition
    with pytest.raises(MessageRefused, match="before the oldest partition") as refused:
        mode.run(handler(delivery(first.message_id, created_at=yesterday)))
    assert refused.value.reason == "inbox-expired"
    never_seen = delivery(created_at=yesterday)
    with pytest.raises(MessageRefused):
        mode.run(handler(never_seen))
    assert applied == [first.message_id]
    assert effect_count(effects, first.message_id) == 1
    assert effect_count(effects, never_seen.message_id) == 0
    # A message of today still finds its partition, and is applied once.
    fresh = delivery()
    mode.run(handler(fresh))
    mode.run(handler(delivery(fresh.message_id)))
    assert applied == [first.message_id, fresh.message_id]


def test_a_message_without_a_creation_time_is_refused_never_applied(
    mode: Mode, db: Any, effects: psycopg.Connection[Any]
) -> None:
    applied: list[uuid.UUID] = []
    handler = inbox.transactional(raw(db), "auditor", lambda tx, d: applied.append(d.message_id))
    foreign = delivery(created_at=None)
    with pytest.raises(MessageRefused, match="no AMQP timestamp") as refused:
        mode.run(handler(foreign))
    assert refused.value.reason == "missing-timestamp"
    assert applied == []
    with db.connection() as conn:
        assert not inbox.seen(conn, "auditor", foreign.message_id)


def test_a_creation_time_past_the_partitions_made_ahead_is_an_error_to_retry(conn: Any) -> None:
    with pytest.raises(InvalidInput, match="no partition yet"):
        inbox.record(conn, "mailer", uuid.uuid4(), "audit.log", CREATED + timedelta(days=400))

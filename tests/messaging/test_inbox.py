"""The inbox's functions, sync and async (tests/support/modes.py): one behaviour, two APIs."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from tests.support.modes import Mode, both
from toolkit.errors import InvalidInput
from toolkit.messaging import AuditLog, Delivery
from toolkit.tenants import DEFAULT_TENANT

inbox = both("toolkit.messaging.inbox")

pytestmark = pytest.mark.usefixtures("mode")

EVENT = AuditLog(action="user.created", entity="user")


def delivery(message_id: uuid.UUID | None = None) -> Delivery:
    return Delivery(
        queue="audit.log",
        message=EVENT,
        message_id=message_id or uuid.uuid4(),
        tenant=DEFAULT_TENANT,
        retry_count=0,
        redelivered=False,
        headers={},
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
    assert inbox.record(conn, "mailer", str(message_id), "notification.send") is True
    assert inbox.record(conn, "mailer", message_id, "notification.send") is False
    assert inbox.seen(conn, "mailer", str(message_id))
    assert not inbox.seen(conn, "auditor", message_id)
    assert inbox.record(conn, "auditor", message_id, "notification.send") is True


def test_a_rolled_back_record_is_forgotten(db: Any) -> None:
    message_id = uuid.uuid4()
    with pytest.raises(RuntimeError), db.transaction() as tx:
        assert inbox.record(tx, "mailer", message_id, "audit.log")
        raise RuntimeError("the effect failed")
    with db.connection() as conn:
        assert not inbox.seen(conn, "mailer", message_id)


@pytest.mark.parametrize("name", ["", "Mailer", "1mailer", "a b", "x" * 201, None, 5])
def test_bad_consumer_names_are_refused(conn: Any, name: Any) -> None:
    with pytest.raises(InvalidInput, match="consumer"):
        inbox.record(conn, name, uuid.uuid4(), "audit.log")
    with pytest.raises(InvalidInput, match="consumer"):
        inbox.seen(conn, name, uuid.uuid4())


def test_bad_message_ids_are_refused(conn: Any) -> None:
    with pytest.raises(InvalidInput, match="message_id"):
        inbox.record(conn, "mailer", "not-a-uuid", "audit.log")


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


def test_prune_forgets_entries_older_than_the_retention(
    conn: Any, superuser: psycopg.Connection[Any]
) -> None:
    old = [uuid.uuid4() for _ in range(3)]
    recent = uuid.uuid4()
    for message_id in [*old, recent]:
        inbox.record(conn, "mailer", message_id, "audit.log")
    superuser.execute(
        "UPDATE inbox SET received_at = now() - interval '2 days' WHERE message_id = ANY(%s)",
        (old,),
    )
    assert inbox.prune(conn, timedelta(days=3)) == 0
    assert inbox.prune(conn, timedelta(days=1), limit=1) == 1
    assert inbox.prune(conn, timedelta(days=1)) == 2
    assert not any(inbox.seen(conn, "mailer", message_id) for message_id in old)
    assert inbox.seen(conn, "mailer", recent)
    with pytest.raises(InvalidInput):
        inbox.prune(conn, timedelta(0), limit=-1)

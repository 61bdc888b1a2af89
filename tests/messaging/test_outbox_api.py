"""The outbox's functions, sync and async (tests/support/modes.py): one behaviour, two APIs."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from tests.support.modes import both
from toolkit.errors import InvalidInput, MessageTooLarge, NotFound
from toolkit.messaging import AuditLog, WorkflowExecute
from toolkit.messaging.inputs import NOTIFY_CHANNEL
from toolkit.messaging.models import TENANT_HEADER

outbox = both("toolkit.messaging.outbox")

pytestmark = pytest.mark.usefixtures("mode")


def event(n: int = 0) -> AuditLog:
    return AuditLog(action="user.created", entity="user", details={"n": n})


def test_a_message_commits_with_the_transaction_or_not_at_all(db: Any) -> None:
    with pytest.raises(RuntimeError), db.transaction() as tx:
        lost = outbox.enqueue(tx, event(1))
        raise RuntimeError("the change failed")
    with db.transaction() as tx:
        message_id = outbox.enqueue(tx, event(2), headers={"x-trace": "t1", "x-n": 7})
    with db.connection() as conn:
        stats = outbox.stats(conn)
        assert (stats.pending, stats.sent, stats.failing) == (1, 0, 0)
        assert stats.oldest_pending_at is not None
        row = outbox.get(conn, str(message_id))
        with pytest.raises(NotFound):
            outbox.get(conn, lost)
    assert row.id == message_id and row.queue == "audit.log"
    assert row.message_type == "audit.log.v1"
    assert row.headers == {"x-trace": "t1", "x-n": 7}
    assert AuditLog.model_validate_json(row.body).details == {"n": 2}
    assert row.sent_at is None and row.attempts == 0 and row.last_error is None


def test_a_chosen_message_id_is_kept(conn: Any) -> None:
    chosen = uuid.uuid4()
    assert outbox.enqueue(conn, event(), message_id=str(chosen)) == chosen
    assert outbox.get(conn, chosen).id == chosen


def test_enqueue_many_writes_every_message_in_order(db: Any) -> None:
    messages = [
        event(0),
        WorkflowExecute(execution_id=uuid.uuid4(), workflow_id=uuid.uuid4()),
        event(2),
    ]
    with db.transaction() as tx:
        ids = outbox.enqueue_many(tx, iter(messages))  # any iterable, read once
    assert len(set(ids)) == 3
    with db.connection() as conn:
        rows = [outbox.get(conn, message_id) for message_id in ids]
        assert outbox.stats(conn).pending == 3
        assert outbox.enqueue_many(conn, []) == []
    assert [row.queue for row in rows] == ["audit.log", "workflow.execute", "audit.log"]
    decoded = [type(m).model_validate_json(r.body) for m, r in zip(messages, rows, strict=True)]
    assert decoded == messages
    assert all(row.headers == {} for row in rows)


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda tx: outbox.enqueue(tx, event(), max_message_bytes=10), MessageTooLarge, "10"),
        (
            lambda tx: outbox.enqueue_many(tx, [event(), event()], max_message_bytes=10),
            MessageTooLarge,
            "10",
        ),
        (lambda tx: outbox.enqueue(tx, {"action": "a.b"}), InvalidInput, "Message"),
        (lambda tx: outbox.enqueue_many(tx, [event(), "x"]), InvalidInput, "Message"),
        (lambda tx: outbox.enqueue_many(tx, "abc"), InvalidInput, "iterable"),
        (lambda tx: outbox.enqueue(tx, event(), message_id="nope"), InvalidInput, "message_id"),
        (lambda tx: outbox.enqueue(tx, event(), max_message_bytes=0), InvalidInput, "max_"),
        (lambda tx: outbox.enqueue(tx, event(), max_message_bytes=True), InvalidInput, "max_"),
        (lambda tx: outbox.enqueue(tx, event(), headers={"x": 1.5}), InvalidInput, "header"),
        (lambda tx: outbox.enqueue(tx, event(), headers={"x": "a\x00"}), InvalidInput, "header"),
        (lambda tx: outbox.enqueue(tx, event(), headers={"": 1}), InvalidInput, "header"),
        (lambda tx: outbox.enqueue(tx, event(), headers={"x": 2**63}), InvalidInput, "header"),
        (
            lambda tx: outbox.enqueue(tx, event(), headers={f"h{i}": i for i in range(65)}),
            InvalidInput,
            "64",
        ),
        (lambda tx: outbox.enqueue(tx, event(), headers=[("x", 1)]), InvalidInput, "mapping"),
        (
            lambda tx: outbox.enqueue(tx, event(), headers={TENANT_HEADER: str(uuid.uuid4())}),
            InvalidInput,
            "x-tenant-id' is set by the toolkit",
        ),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(
    db: Any, call: Any, error: type[Exception], words: str
) -> None:
    with db.transaction() as tx, pytest.raises(error, match=words):
        call(tx)
    with db.connection() as conn:
        assert outbox.stats(conn).pending == 0


def test_enqueue_many_computes_the_tenant_once_per_statement(db: Any, mode: Any) -> None:
    # The tenant_id default is a plpgsql call: the statement names it once
    # (an InitPlan) rather than letting the default run once per row.
    with db.transaction() as tx:
        mode.run(tx.execute("SET LOCAL track_functions = 'pl'"))
        ids = outbox.enqueue_many(tx, [event(n) for n in range(100)])
        calls = mode.run(
            mode.run(
                tx.execute(
                    "SELECT coalesce(sum(calls), 0)::int FROM pg_stat_xact_user_functions "
                    "WHERE funcname = 'toolkit_tenant_or_default'"
                )
            ).fetchone()
        )
    assert len(ids) == 100 and calls == (1,)
    with db.connection() as conn:
        assert outbox.stats(conn).pending == 100


def test_one_notify_per_transaction_sent_at_commit(db: Any, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        with db.transaction() as tx:
            for n in range(20):
                outbox.enqueue(tx, event(n))
            outbox.enqueue_many(tx, [event(n) for n in range(20)])
            assert not list(listener.notifies(timeout=0.2))  # nothing before commit
        got = list(listener.notifies(timeout=0.5))
    assert len(got) == 1


def test_prune_deletes_only_rows_sent_longer_ago_than_the_retention(
    conn: Any, superuser: psycopg.Connection[Any]
) -> None:
    ids = outbox.enqueue_many(conn, [event(n) for n in range(5)])
    waiting = outbox.enqueue(conn, event(99))
    superuser.execute(
        "UPDATE outbox SET sent_at = now() - interval '2 hours' WHERE id = ANY(%s)", (ids,)
    )
    assert outbox.prune(conn, timedelta(hours=3)) == 0
    assert outbox.prune(conn, timedelta(hours=1), limit=2) == 2
    assert outbox.prune(conn, timedelta(hours=1)) == 3
    assert outbox.get(conn, waiting).sent_at is None  # unsent: never pruned
    stats = outbox.stats(conn)
    assert (stats.pending, stats.sent) == (1, 0)
    with pytest.raises(InvalidInput):
        outbox.prune(conn, timedelta(hours=-1))
    with pytest.raises(InvalidInput):
        outbox.prune(conn, timedelta(hours=1), limit=0)

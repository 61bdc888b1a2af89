"""The relay's two batches in flight and the publisher's submit, on real PostgreSQL and RabbitMQ.

While the broker confirms one batch the relay claims the next in a second
transaction, and publishes it while it marks the first sent. These tests
hold it to what that must not change: a row is marked sent only after its
own confirm, a batch whose confirms were lost stops the line (the next
batch goes back unpublished), and a failure midway rolls both back and
leaves the publisher free.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pika
import psycopg
import pytest

from toolkit.db import Database
from toolkit.errors import Unavailable
from toolkit.messaging import AuditLog, PipelinedPublisher, Relay, Topology, outbox
from toolkit.messaging import relay as relay_module
from toolkit.messaging.publisher import BatchResult, Outgoing, PendingBatch, outgoing
from toolkit.messaging.records import OutboxRow
from toolkit.tenants import DEFAULT_TENANT

from .conftest import AMQP_URL, get_all, wait_for


def event(n: int) -> AuditLog:
    return AuditLog(action="user.created", entity="user", details={"n": n})


def enqueue(db: Database, count: int) -> list[str]:
    with db.transaction() as tx:
        return [str(i) for i in outbox.enqueue_many(tx, [event(n) for n in range(count)])]


def outbox_state(db: Database) -> tuple[int, int, int]:
    """(sent, unsent and free to claim, unsent and locked by someone), seen from outside."""
    with psycopg.connect(db.url) as conn:
        sent, unsent = conn.execute(
            "SELECT count(*) FILTER (WHERE sent_at IS NOT NULL), "
            "count(*) FILTER (WHERE sent_at IS NULL) FROM outbox"
        ).fetchone() or (0, 0)
        free = conn.execute(
            "SELECT count(*) FROM (SELECT id FROM outbox WHERE sent_at IS NULL "
            "FOR UPDATE SKIP LOCKED) AS claimable"
        ).fetchone()
        conn.rollback()
    claimable = int(free[0]) if free else 0
    return int(sent), claimable, int(unsent) - claimable


class Watching:
    """A PipelinedPublisher that looks at the outbox each time the relay waits for confirms."""

    def __init__(self, db: Database, inner: PipelinedPublisher) -> None:
        self.db = db
        self.inner = inner
        self.seen: list[tuple[list[str], tuple[int, int, int], int]] = []

    def submit(self, messages: Sequence[Outgoing], timeout: float = 30.0) -> PendingBatch:
        pending = self.inner.submit(messages, timeout)
        ids = [m.message_id for m in messages]

        def settle() -> BatchResult:
            # The batch is not confirmed yet: nothing of it may be marked sent.
            with psycopg.connect(self.db.url) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM outbox WHERE id = any(%s::uuid[]) "
                    "AND sent_at IS NOT NULL",
                    (ids,),
                ).fetchone()
            self.seen.append((ids, outbox_state(self.db), int(row[0]) if row else -1))
            return pending.result()

        return PendingBatch(settle)

    def close(self) -> None:
        self.inner.close()


def test_the_next_batch_is_claimed_while_the_broker_confirms_and_rows_are_marked_after_it(
    db: Database, topology: Topology, broker: pika.BlockingConnection
) -> None:
    ids = enqueue(db, 30)
    publisher = Watching(db, PipelinedPublisher(AMQP_URL, topology))
    with Relay(db, AMQP_URL, topology, publisher=publisher, batch_size=10, listen=False) as relay:
        assert relay.drain(timeout=30) == 30
    first, second, third = publisher.seen
    assert [len(batch) for batch, _state, _marked in publisher.seen] == [10, 10, 10]
    assert all(marked == 0 for _batch, _state, marked in publisher.seen)
    # While the first batch awaits its confirms the second is claimed (locked) too.
    assert first[1] == (0, 10, 20)
    # While the second awaits, the first is marked sent (or being marked) and the third claimed.
    assert second[1][1] == 0
    # While the third awaits, the second is marked sent, or still being marked beside it.
    assert third[1] in {(20, 0, 10), (10, 0, 20)}
    got = get_all(broker, topology.queue_name("audit.log"), expect=30)
    assert [props.message_id for props, _ in got] == ids  # once each, in the outbox's order
    assert outbox_state(db) == (30, 0, 0)


def test_a_confirmed_batch_is_marked_sent_while_the_next_batches_are_claimed_and_published(
    db: Database, topology: Topology, broker: pika.BlockingConnection
) -> None:
    ids = enqueue(db, 30)
    seen: list[tuple[int, int, int]] = []

    def first_batch_waits_for_the_third_claim(_rows: Sequence[OutboxRow]) -> None:
        # Called before the rows are marked: the relay claims on meanwhile.
        if not seen:
            wait_for(lambda: outbox_state(db) == (0, 0, 30), timeout=10)
            seen.append(outbox_state(db))

    with Relay(
        db,
        AMQP_URL,
        topology,
        batch_size=10,
        listen=False,
        after_publish=first_batch_waits_for_the_third_claim,
    ) as relay:
        assert relay.drain(timeout=30) == 30
    # The first batch, confirmed but not yet marked, did not hold up the third's claim.
    assert seen == [(0, 0, 30)]
    got = get_all(broker, topology.queue_name("audit.log"), expect=30)
    assert [props.message_id for props, _ in got] == ids
    assert outbox_state(db) == (30, 0, 0)


class CountingBuilt:
    """Confirms every message; notes, as each batch's confirms are taken, how many
    batches' messages the relay had built by then."""

    def __init__(self, built: list[int]) -> None:
        self.built = built
        self.built_when_confirmed: list[int] = []
        self.submitted: list[list[str]] = []

    def submit(self, messages: Sequence[Outgoing], timeout: float = 30.0) -> PendingBatch:
        ids = [m.message_id for m in messages]
        self.submitted.append(ids)

        def settle() -> BatchResult:
            self.built_when_confirmed.append(len(self.built))
            return BatchResult(acked=ids)

        return PendingBatch(settle)

    def close(self) -> None:
        pass


def test_the_next_batchs_messages_are_built_while_the_broker_confirms_the_one_before(
    db: Database, topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = enqueue(db, 25)
    built: list[int] = []
    build = relay_module._messages

    def counted(topology: Topology, rows: Sequence[OutboxRow]) -> list[Outgoing]:
        built.append(len(rows))
        return build(topology, rows)

    monkeypatch.setattr(relay_module, "_messages", counted)
    publisher = CountingBuilt(built)
    with Relay(db, AMQP_URL, topology, publisher=publisher, batch_size=10, listen=False) as relay:
        assert relay.drain(timeout=30) == 25
    assert built == [10, 10, 5]
    # Submitting a batch only hands over what was built while the one before was confirmed.
    assert publisher.built_when_confirmed == [2, 3, 3]
    assert [i for batch in publisher.submitted for i in batch] == ids
    assert outbox_state(db) == (25, 0, 0)


class LosingPublisher:
    """Confirms half of the first batch and loses the rest, as a dropped connection would."""

    def __init__(self) -> None:
        self.submitted: list[list[str]] = []

    def submit(self, messages: Sequence[Outgoing], timeout: float = 30.0) -> PendingBatch:
        ids = [m.message_id for m in messages]
        self.submitted.append(ids)
        half = len(ids) // 2
        result = BatchResult(acked=ids[:half], unconfirmed=ids[half:], error="connection lost")
        return PendingBatch.settled(result)

    def close(self) -> None:
        pass


def test_lost_confirms_stop_the_line_and_the_claimed_next_batch_goes_back_unpublished(
    db: Database, topology: Topology
) -> None:
    ids = enqueue(db, 30)
    publisher = LosingPublisher()
    with (
        Relay(db, AMQP_URL, topology, publisher=publisher, batch_size=10, listen=False) as relay,
        pytest.raises(Unavailable, match="5 message"),
    ):
        relay.drain(timeout=0)
    assert publisher.submitted == [ids[:10]]  # the second batch was claimed, never published
    assert outbox_state(db) == (5, 25, 0)  # the confirmed half marked, no lock left behind
    with psycopg.connect(db.url) as conn:
        sent = {str(r[0]) for r in conn.execute("SELECT id FROM outbox WHERE sent_at IS NOT NULL")}
    assert sent == set(ids[:5])


class VanishingPublisher:
    """Confirms the first batch; the broker is gone when the second is submitted."""

    def __init__(self) -> None:
        self.submitted = 0

    def submit(self, messages: Sequence[Outgoing], timeout: float = 30.0) -> PendingBatch:
        self.submitted += 1
        if self.submitted > 1:
            raise Unavailable("RabbitMQ unreachable")
        return PendingBatch.settled(BatchResult(acked=[m.message_id for m in messages]))

    def close(self) -> None:
        pass


def test_a_broker_gone_before_the_next_batch_still_marks_the_confirmed_one_sent(
    db: Database, topology: Topology
) -> None:
    ids = enqueue(db, 30)
    with (
        Relay(
            db, AMQP_URL, topology, publisher=VanishingPublisher(), batch_size=10, listen=False
        ) as relay,
        pytest.raises(Unavailable, match="unreachable"),
    ):
        relay.drain(timeout=0)
    assert outbox_state(db) == (10, 20, 0)
    with psycopg.connect(db.url) as conn:
        sent = {str(r[0]) for r in conn.execute("SELECT id FROM outbox WHERE sent_at IS NOT NULL")}
    assert sent == set(ids[:10])


def test_a_failure_midway_rolls_both_batches_back_and_frees_the_publisher(
    db: Database, topology: Topology, broker: pika.BlockingConnection
) -> None:
    ids = enqueue(db, 30)
    failures = [RuntimeError("the relay failed after the first confirm")]

    def fail_once(_rows: Sequence[OutboxRow]) -> None:
        if failures:
            raise failures.pop()

    publisher = PipelinedPublisher(AMQP_URL, topology)
    relay = Relay(
        db,
        AMQP_URL,
        topology,
        publisher=publisher,
        batch_size=10,
        listen=False,
        after_publish=fail_once,
    )
    with pytest.raises(RuntimeError, match="after the first confirm"):
        relay.drain(timeout=30)
    assert outbox_state(db) == (0, 30, 0)  # nothing marked, nothing left locked
    # The second batch was in flight when the first failed: the publisher took
    # its confirms and is free again for the next drain. In a thread: a
    # publisher left held would hang it (and closing it), so the test fails instead.
    drained: list[int] = []
    worker = threading.Thread(target=lambda: drained.append(relay.drain(timeout=30)), daemon=True)
    worker.start()
    worker.join(90)
    assert drained == [30], "the publisher was left held by the abandoned batch"
    relay.close()
    assert outbox_state(db) == (30, 0, 0)
    got = get_all(broker, topology.queue_name("audit.log"), expect=50)
    # The two batches published before the failure went out again (the inbox absorbs them).
    assert sorted({props.message_id for props, _ in got}) == sorted(ids)


def test_a_submitted_batch_holds_the_publisher_until_its_result_is_taken(
    topology: Topology, broker: pika.BlockingConnection
) -> None:
    first = outgoing(topology, event(1), tenant=DEFAULT_TENANT)
    second = outgoing(topology, event(2), tenant=DEFAULT_TENANT)
    results: list[Any] = []
    with PipelinedPublisher(AMQP_URL, topology) as publisher:
        pending = publisher.submit([first])
        other = threading.Thread(target=lambda: results.append(publisher.publish_batch([second])))
        other.start()
        other.join(0.5)
        assert other.is_alive() and not results  # waits for the first batch's result
        assert pending.result().acked == [first.message_id]
        assert pending.result().acked == [first.message_id]  # taken once, kept
        other.join(30)
    assert [r.acked for r in results] == [[second.message_id]]
    got = get_all(broker, topology.queue_name("audit.log"), expect=2)
    assert [props.message_id for props, _ in got] == [first.message_id, second.message_id]

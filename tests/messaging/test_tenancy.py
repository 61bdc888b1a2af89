"""Messages carry their tenant, and the worker runs each one as that tenant (issue 20).

The outbox row's ``tenant_id`` (which row-level security gave it) travels to
the broker in the ``x-tenant-id`` header, set by the relay; the worker hands
it to the handler as ``Delivery.tenant``, and ``inbox.tenant_transaction`` /
``inbox.transactional`` run the handler's transaction, inbox record
included, as ``db.transaction(tenant=...)``. A message without a tenant, or
with one that is not a UUID, is parked before any handler runs.

The tenant-bound side (enqueueing, the worker) runs as a fresh LOGIN role in
toolkit_app; the relay as a LOGIN role with BYPASSRLS in toolkit_relay, as
migration 0009 tells an operator to make it. Where rows landed is checked as
the superuser, whom the policies do not bind.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pika
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from toolkit.aio.db import AsyncConnection, AsyncDatabase
from toolkit.aio.messaging import inbox as ainbox
from toolkit.aio.messaging import outbox as aoutbox
from toolkit.aio.workflows import service as aservice
from toolkit.commands.messaging import maintenance_jobs
from toolkit.config import load_settings
from toolkit.db import Connection, Database
from toolkit.errors import TenantMismatch, TenantRequired
from toolkit.messaging import AuditLog, Delivery, Publisher, Relay, Topology, Worker, inbox, outbox
from toolkit.messaging.models import TENANT_HEADER, WorkflowExecute
from toolkit.repositories import executions
from toolkit.repositories.records import Execution
from toolkit.tenants import DEFAULT_TENANT
from toolkit.workflows import service as sservice

from ..core.factories import make_execution, make_workflow
from .conftest import AMQP_URL, get_all, raw_publish, wait_for

TENANT_A = uuid.UUID("aaaaaaaa-0000-4000-8000-00000000000a")
TENANT_B = uuid.UUID("bbbbbbbb-0000-4000-8000-00000000000b")
CONSUMER = "test-consumer"
BROKERS = "x-delivery-count"
"""The header a quorum queue adds on delivery."""

EFFECTS = """
CREATE TABLE test_tenant_effects (
    tenant_id uuid NOT NULL DEFAULT public.toolkit_tenant_or_default()
    REFERENCES tenants (id),
    message_id uuid NOT NULL,
    action text NOT NULL
);
SELECT public.toolkit_make_tenant_owned('test_tenant_effects');
GRANT SELECT, INSERT ON test_tenant_effects TO toolkit_app;
"""
"""A tenant-owned table handlers write their effect into (no uniqueness: a duplicate shows)."""

RECORD_EFFECT = "INSERT INTO test_tenant_effects (message_id, action) VALUES (%s, %s)"
"""The effect names no tenant: the column default and the policies put it in the transaction's."""


def event(action: str) -> AuditLog:
    return AuditLog(action=action, entity="user")


def record_effect(tx: Connection, delivery: Delivery) -> None:
    assert isinstance(delivery.message, AuditLog)
    tx.execute(RECORD_EFFECT, (delivery.message_id, delivery.message.action))


async def arecord_effect(tx: AsyncConnection, delivery: Delivery) -> None:
    assert isinstance(delivery.message, AuditLog)
    await tx.execute(RECORD_EFFECT, (delivery.message_id, delivery.message.action))


@pytest.fixture
def tenant_effects(superuser: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """The tenants A and B, and test_tenant_effects; returns the superuser connection."""
    for tenant in (TENANT_A, TENANT_B):
        superuser.execute("INSERT INTO tenants (id, name) VALUES (%s, %s)", [tenant, str(tenant)])
    superuser.execute(EFFECTS)
    return superuser


@pytest.fixture
def login(database_url: str, superuser: psycopg.Connection[Any]) -> Iterator[Callable[[str], str]]:
    """Make a LOGIN role with ``attributes`` (roles are cluster-wide: a name of its own,
    dropped afterwards); returns a URL of the test's database as it."""
    made: list[str] = []

    def make(attributes: str) -> str:
        name = f"msg_tenancy_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        superuser.execute(
            sql.SQL("CREATE ROLE {} LOGIN " + attributes).format(sql.Identifier(name))
        )
        made.append(name)
        return make_conninfo(**(conninfo_to_dict(database_url) | {"user": name}))

    yield make
    for name in made:
        superuser.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        superuser.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def _settings(url: str) -> Any:
    return load_settings(database_url=url, pool_min_size=0, pool_max_size=4, pool_timeout=5.0)


@pytest.fixture
def app_url(login: Callable[[str], str], tenant_effects: Any) -> str:
    """The test database as a LOGIN role in toolkit_app: bound by the policies."""
    return login("IN ROLE toolkit_app")


@pytest.fixture
def app_db(app_url: str) -> Iterator[Database]:
    with Database(_settings(app_url)) as database:
        yield database


@pytest.fixture
def relay_db(login: Callable[[str], str]) -> Iterator[Database]:
    """The relay's database role: BYPASSRLS (not inherited) in toolkit_relay (the grants)."""
    url = login("BYPASSRLS IN ROLE toolkit_relay")
    with Database(_settings(url), warn_if_privileged=False) as database:
        yield database


def effects_by_tenant(superuser: psycopg.Connection[Any]) -> dict[tuple[uuid.UUID, str], int]:
    """How many effects each (tenant, action) has, read as the superuser."""
    rows = superuser.execute(
        "SELECT tenant_id, action, count(*) FROM test_tenant_effects GROUP BY 1, 2"
    ).fetchall()
    return {(tenant, action): count for tenant, action, count in rows}


def inbox_tenants(superuser: psycopg.Connection[Any], message_id: object) -> list[uuid.UUID]:
    rows = superuser.execute(
        "SELECT tenant_id FROM inbox WHERE consumer = %s AND message_id = %s ORDER BY 1",
        (CONSUMER, message_id),
    ).fetchall()
    return [tenant for (tenant,) in rows]


def relay_everything(relay_db: Database, topology: Topology) -> None:
    with Relay(relay_db, AMQP_URL, topology, listen=False) as relay:
        relay.drain(timeout=20)


def handler_for(kind: str, db: Database, url: str) -> tuple[Any, Any]:
    """An inbox handler of ``kind``: sync on ``db``, or async on an AsyncDatabase of
    ``url`` (whose pool opens on the worker's loop); and the worker's async_cleanup."""
    if kind == "sync":
        return inbox.transactional(db, CONSUMER, record_effect), None
    adb = AsyncDatabase(_settings(url), warn_if_privileged=False)
    return ainbox.transactional(adb, CONSUMER, arecord_effect), adb.close


# -- the relay: the row's tenant, in the header ------------------------------------------


def test_each_outbox_row_is_published_with_its_own_tenant_in_the_header(
    app_db: Database,
    app_url: str,
    relay_db: Database,
    db: Database,
    tenant_effects: psycopg.Connection[Any],
    topology: Topology,
    broker: pika.BlockingConnection,
) -> None:
    with app_db.transaction(tenant=TENANT_A) as tx:
        from_a = outbox.enqueue(tx, event("a.sync"), headers={"x-trace": "a"})

    async def enqueue_async() -> uuid.UUID:
        async with AsyncDatabase(_settings(app_url)) as adb, adb.transaction(tenant=TENANT_B) as tx:
            return await aoutbox.enqueue(tx, event("b.async"))

    from_b = asyncio.run(enqueue_async())
    with db.transaction() as tx:  # a single-workspace (superuser) writer: the default tenant
        from_default = outbox.enqueue(tx, event("default.sync"))
    # A header written into the row behind enqueue's back is overwritten, never trusted.
    forged = uuid.uuid4()
    tenant_effects.execute(
        "INSERT INTO outbox (id, tenant_id, queue, message_type, body, headers) "
        "VALUES (%s, %s, 'audit.log', 'audit.log.v1', %s::jsonb, %s::jsonb)",
        (
            forged,
            TENANT_A,
            event("a.forged").model_dump_json(),
            f'{{"{TENANT_HEADER}": "{TENANT_B}"}}',
        ),
    )
    relay_everything(relay_db, topology)
    published = get_all(broker, topology.queue_name("audit.log"), expect=4)
    headers = {
        uuid.UUID(props.message_id): {k: v for k, v in props.headers.items() if k != BROKERS}
        for props, _ in published
    }
    assert headers == {
        from_a: {"x-trace": "a", TENANT_HEADER: str(TENANT_A)},
        from_b: {TENANT_HEADER: str(TENANT_B)},
        from_default: {TENANT_HEADER: str(DEFAULT_TENANT)},
        forged: {TENANT_HEADER: str(TENANT_A)},
    }


def test_enqueue_many_writes_into_the_transactions_tenant_in_order(
    app_db: Database, app_url: str, tenant_effects: psycopg.Connection[Any]
) -> None:
    with app_db.transaction(tenant=TENANT_A) as tx:
        from_a = outbox.enqueue_many(tx, [event(f"a.n{n}") for n in range(3)])

    async def enqueue_async() -> list[uuid.UUID]:
        async with AsyncDatabase(_settings(app_url)) as adb, adb.transaction(tenant=TENANT_B) as tx:
            return await aoutbox.enqueue_many(tx, [event(f"b.n{n}") for n in range(2)])

    from_b = asyncio.run(enqueue_async())
    with pytest.raises(TenantRequired), app_db.connection() as conn:
        outbox.enqueue_many(conn, [event("nobody.sent")])
    rows = tenant_effects.execute(
        "SELECT id, tenant_id, body->>'action', headers FROM outbox ORDER BY seq"
    ).fetchall()
    assert rows == [
        *((key, TENANT_A, f"a.n{n}", {}) for n, key in enumerate(from_a)),
        *((key, TENANT_B, f"b.n{n}", {}) for n, key in enumerate(from_b)),
    ]


def test_a_relay_the_policies_bind_is_refused_rather_than_shown_nothing(
    app_db: Database, db: Database, topology: Topology
) -> None:
    with db.transaction() as tx:
        outbox.enqueue(tx, event("default.one"))
    with (
        Relay(app_db, AMQP_URL, topology, listen=False) as relay,
        pytest.raises(TenantRequired, match=r"outbox\.claim"),
    ):
        relay.run_once()


# -- the worker: each message as its tenant ----------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_tenant_bound_worker_writes_each_message_into_its_tenant_and_dedupes_per_tenant(
    kind: str,
    app_db: Database,
    app_url: str,
    relay_db: Database,
    tenant_effects: psycopg.Connection[Any],
    topology: Topology,
    run_worker: Any,
) -> None:
    for tenant, action in ((TENANT_A, "a.one"), (TENANT_A, "a.two"), (TENANT_B, "b.one")):
        with app_db.transaction(tenant=tenant) as tx:
            outbox.enqueue(tx, event(action))
    handler, cleanup = handler_for(kind, app_db, app_url)
    worker = Worker(AMQP_URL, topology, {"audit.log": handler}, async_cleanup=cleanup)
    run_worker(worker)
    relay_everything(relay_db, topology)
    wait_for(lambda: worker.stats.handled == 3)
    # One message_id, delivered for A twice and for B once: the inbox is per tenant.
    shared = str(uuid.uuid4())
    with Publisher(AMQP_URL, topology) as publisher:
        for tenant in (TENANT_A, TENANT_A, TENANT_B):
            publisher.publish(event("shared.id"), tenant=tenant, message_id=shared)
    wait_for(lambda: worker.stats.handled == 6)
    assert worker.stats.duplicates == 1
    assert worker.stats.parked == worker.stats.retried == worker.stats.errors == 0
    assert effects_by_tenant(tenant_effects) == {
        (TENANT_A, "a.one"): 1,
        (TENANT_A, "a.two"): 1,
        (TENANT_B, "b.one"): 1,
        (TENANT_A, "shared.id"): 1,
        (TENANT_B, "shared.id"): 1,
    }
    assert inbox_tenants(tenant_effects, shared) == [TENANT_A, TENANT_B]
    with app_db.transaction(tenant=TENANT_B) as tx:
        assert inbox.seen(tx, CONSUMER, shared)
        assert tx.execute("SELECT count(*) FROM test_tenant_effects").fetchone() == (2,)


NO_TENANT = "missing-tenant"
NOT_A_TENANT = "invalid-tenant"

ABSENT = object()
"""No x-tenant-id header at all."""

# (x-tenant-id as published, the parked reason)
TENANT_HEADERS: list[tuple[Any, str]] = [
    (ABSENT, NO_TENANT),
    (None, NOT_A_TENANT),
    ("not-a-uuid", NOT_A_TENANT),
    ("", NOT_A_TENANT),
    (f"{TENANT_A}x", NOT_A_TENANT),
    (f"{TENANT_A}; {TENANT_B}", NOT_A_TENANT),
    ("' OR 1=1 --", NOT_A_TENANT),
    (42, NOT_A_TENANT),
    (True, NOT_A_TENANT),
    (str(TENANT_A).encode(), NOT_A_TENANT),
    ({"id": str(TENANT_A)}, NOT_A_TENANT),
    ([str(TENANT_A)], NOT_A_TENANT),
]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_message_without_a_tenant_or_with_a_forged_one_is_parked_and_no_handler_runs(
    kind: str,
    app_db: Database,
    app_url: str,
    tenant_effects: psycopg.Connection[Any],
    topology: Topology,
    broker: pika.BlockingConnection,
    run_worker: Any,
) -> None:
    handler, cleanup = handler_for(kind, app_db, app_url)
    called: list[Delivery] = []

    def watched(delivery: Delivery) -> Any:
        called.append(delivery)
        return handler(delivery)

    worker = Worker(AMQP_URL, topology, {"audit.log": watched}, async_cleanup=cleanup)
    run_worker(worker)
    sent: dict[str, str] = {}
    for value, reason in TENANT_HEADERS:
        message_id = str(uuid.uuid4())
        sent[message_id] = reason
        raw_publish(
            broker,
            topology,
            event("user.created").body(),
            message_id,
            None if value is ABSENT else {TENANT_HEADER: value},
            with_tenant=False,
        )
    parked = get_all(broker, topology.parking_queue("audit.log"), expect=len(sent))
    reasons = {props.message_id: props.headers["x-parked-reason"] for props, _ in parked}
    assert reasons == sent
    for props, _ in parked:
        assert TENANT_HEADER in props.headers["x-error"]
        assert str(TENANT_A) not in props.headers["x-error"]  # the value is not quoted
    assert called == []
    assert worker.stats.parked == len(sent) and worker.stats.retried == 0
    assert effects_by_tenant(tenant_effects) == {}
    assert tenant_effects.execute("SELECT count(*) FROM inbox").fetchone() == (0,)


# -- single workspace: a role the policies do not bind ---------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_superuser_worker_runs_the_default_tenant_and_parks_any_other(
    kind: str,
    db: Database,
    database_url: str,
    tenant_effects: psycopg.Connection[Any],
    topology: Topology,
    broker: pika.BlockingConnection,
    run_worker: Any,
) -> None:
    handler, cleanup = handler_for(kind, db, database_url)
    worker = Worker(AMQP_URL, topology, {"audit.log": handler}, async_cleanup=cleanup)
    run_worker(worker)
    with Publisher(AMQP_URL, topology) as publisher:
        default = publisher.publish(event("default.one"), tenant=DEFAULT_TENANT)
        other = publisher.publish(event("a.one"), tenant=TENANT_A)
    [(props, _)] = get_all(broker, topology.parking_queue("audit.log"), expect=1)
    assert props.message_id == other
    assert props.headers["x-parked-reason"] == "tenancy-unavailable"
    assert "TenancyUnavailable" in props.headers["x-error"]
    wait_for(lambda: worker.stats.handled == 1)
    assert worker.stats.retried == 0 and worker.stats.parked == 1
    assert effects_by_tenant(tenant_effects) == {(DEFAULT_TENANT, "default.one"): 1}
    assert inbox_tenants(tenant_effects, default) == [DEFAULT_TENANT]
    assert inbox_tenants(tenant_effects, other) == []


# -- the workflow handler: claim, lease renewals and finish as the message's tenant ------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_the_workflow_handler_runs_every_transaction_as_the_messages_tenant(
    kind: str, app_db: Database, app_url: str, tenant_effects: psycopg.Connection[Any]
) -> None:
    superuser = tenant_effects
    with app_db.transaction(tenant=TENANT_A) as tx:
        execution = executions.create(tx, {"workflow_id": make_workflow(tx).id})
    renewed: list[bool] = []

    def lease_held() -> None:
        time.sleep(0.6)  # longer than the lease: held only if renewals ran as tenant A
        row = superuser.execute(
            "SELECT lease_expires_at > now() FROM executions WHERE id = %s", (execution.id,)
        ).fetchone()
        renewed.append(bool(row and row[0]))

    def work(_execution: Execution) -> Mapping[str, Any]:
        lease_held()
        return {"ok": True}

    async def awork(_execution: Execution) -> Mapping[str, Any]:
        await asyncio.to_thread(lease_held)
        return {"ok": True}

    def delivery(tenant: uuid.UUID) -> Delivery:
        message = WorkflowExecute(execution_id=execution.id, workflow_id=execution.workflow_id)
        return Delivery(
            queue="workflow.execute",
            message=message,
            message_id=uuid.uuid4(),
            tenant=tenant,
            retry_count=0,
            redelivered=False,
            headers={},
        )

    forged, real = delivery(TENANT_B), delivery(TENANT_A)
    lease = {"worker_id": "w1", "lease_seconds": 0.4, "renew_every": 0.1}
    if kind == "sync":
        handler = sservice.workflow_handler(app_db, work, **lease)
        handler(forged)
        handler(real)
    else:

        async def handle_both() -> None:
            async with AsyncDatabase(_settings(app_url)) as adb:
                handler = aservice.workflow_handler(adb, awork, **lease)
                await handler(forged)
                await handler(real)

        asyncio.run(handle_both())
    assert forged.duplicate  # tenant B has no such execution: ignored, nothing touched
    assert renewed == [True] and not real.duplicate
    assert superuser.execute(
        "SELECT tenant_id, status FROM executions WHERE id = %s", (execution.id,)
    ).fetchone() == (TENANT_A, "succeeded")
    notification = superuser.execute("SELECT tenant_id, queue FROM outbox").fetchall()
    assert notification == [(TENANT_A, "notification.send")]


# -- the sweep: each requeued execution's message is its own tenant's ------------------


def expired_executions(
    app_db: Database, superuser: psycopg.Connection[Any], *tenants: uuid.UUID
) -> dict[uuid.UUID, uuid.UUID]:
    """One running execution per tenant whose worker died (lease expired); id -> tenant."""
    made: dict[uuid.UUID, uuid.UUID] = {}
    for tenant in tenants:
        with app_db.transaction(tenant=tenant) as tx:
            execution = make_execution(tx)
            executions.start(tx, execution.id, worker_id="dead-worker")
        made[execution.id] = tenant
    superuser.execute(
        "UPDATE executions SET lease_expires_at = now() - interval '1 second' WHERE id = any(%s)",
        (list(made),),
    )
    return made


def requeue_messages(superuser: psycopg.Connection[Any]) -> dict[uuid.UUID, uuid.UUID]:
    """The workflow.execute rows in the outbox: execution_id -> the row's tenant."""
    rows = superuser.execute(
        "SELECT (body->>'execution_id')::uuid, tenant_id FROM outbox "
        "WHERE queue = 'workflow.execute'"
    ).fetchall()
    return dict(rows)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_operator_sweep_enqueues_each_execution_as_its_own_tenant(
    kind: str,
    app_db: Database,
    login: Callable[[str], str],
    tenant_effects: psycopg.Connection[Any],
) -> None:
    superuser = tenant_effects
    expired = expired_executions(app_db, superuser, TENANT_A, TENANT_B)
    operator_url = login("BYPASSRLS IN ROLE toolkit_app")
    if kind == "sync":
        with Database(_settings(operator_url), warn_if_privileged=False) as operator:
            swept = sservice.sweep_expired(operator)
    else:

        async def sweep() -> list[Any]:
            async with AsyncDatabase(_settings(operator_url), warn_if_privileged=False) as adb:
                return await aservice.sweep_expired(adb)

        swept = asyncio.run(sweep())
    # Every tenant's, each message its execution's tenant's (not the default tenant's,
    # which no worker of A or B would act on: the execution would stay pending).
    assert {execution.id: execution.tenant_id for execution in swept} == expired
    assert all(execution.status == "pending" for execution in swept)
    assert requeue_messages(superuser) == expired


def test_an_application_sweep_covers_its_tenant_only_and_needs_one(
    app_db: Database, tenant_effects: psycopg.Connection[Any]
) -> None:
    superuser = tenant_effects
    expired = expired_executions(app_db, superuser, TENANT_A, TENANT_B)
    with pytest.raises(TenantRequired):
        sservice.sweep_expired(app_db)
    swept = sservice.sweep_expired(app_db, tenant=TENANT_A)
    [(of_a, _)] = [(key, tenant) for key, tenant in expired.items() if tenant == TENANT_A]
    assert [(execution.id, execution.tenant_id) for execution in swept] == [(of_a, TENANT_A)]
    assert requeue_messages(superuser) == {of_a: TENANT_A}
    statuses = superuser.execute("SELECT tenant_id, status FROM executions").fetchall()
    assert sorted(statuses) == [(TENANT_A, "pending"), (TENANT_B, "running")]


def test_enqueue_naming_another_tenant_is_refused_for_a_role_the_policies_bind(
    app_db: Database, tenant_effects: psycopg.Connection[Any]
) -> None:
    with app_db.transaction(tenant=TENANT_A) as tx:
        own = outbox.enqueue(tx, event("a.own"), tenant=TENANT_A)
    with (
        pytest.raises(TenantMismatch) as refused,
        app_db.transaction(tenant=TENANT_A) as tx,
    ):
        outbox.enqueue(tx, event("a.as_b"), tenant=str(TENANT_B))
    assert refused.value.table == "outbox"
    rows = tenant_effects.execute("SELECT id, tenant_id FROM outbox").fetchall()
    assert rows == [(own, TENANT_A)]


# -- the worker's maintenance: a sweep over every tenant needs an operator's role --------


def test_a_tenant_bound_worker_logs_once_that_its_sweeps_need_an_operator_and_keeps_working(
    app_db: Database,
    relay_db: Database,
    tenant_effects: psycopg.Connection[Any],
    topology: Topology,
    run_worker: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    superuser = tenant_effects
    expired_executions(app_db, superuser, TENANT_A)
    worker = Worker(
        AMQP_URL, topology, {"audit.log": inbox.transactional(app_db, CONSUMER, record_effect)}
    )
    jobs = maintenance_jobs(app_db, sweep_interval=0.02)
    with caplog.at_level(logging.INFO, logger="toolkit"):
        run_worker(worker)
        for job in jobs:
            job.start()
        try:
            wait_for(lambda: all(job.ended for job in jobs))
            time.sleep(0.1)  # ten more intervals: an ended job stays quiet
        finally:
            for job in jobs:
                job.stop()
    stopped = [r.getMessage() for r in caplog.records if " stopped (" in r.getMessage()]
    assert len(stopped) == 1, stopped
    (sweep,) = stopped
    assert sweep.startswith("lease sweeper stopped (TenantRequired)")
    assert "toolkit.workflows.service.sweep_expired(db)" in sweep
    assert "trying again" not in caplog.text
    # Nothing was swept, and the worker still handles its tenants' messages.
    assert superuser.execute("SELECT status FROM executions").fetchall() == [("running",)]
    with app_db.transaction(tenant=TENANT_B) as tx:
        outbox.enqueue(tx, event("b.after"))
    relay_everything(relay_db, topology)
    wait_for(lambda: worker.stats.handled == 1)
    assert effects_by_tenant(superuser) == {(TENANT_B, "b.after"): 1}

"""Repository functions against the real schema, one entity after another."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest

from tests.core.factories import make_agent, make_execution, make_user, make_workflow
from tests.support.modes import both
from toolkit.db.patterns import INSERT_ROWS_PER_STATEMENT
from toolkit.errors import (
    Conflict,
    IllegalTransition,
    InvalidInput,
    InvalidReference,
    NotFound,
    StaleVersion,
)
from toolkit.repositories import UNSET, Audit
from toolkit.repositories.records import AgentCreate

# Every test runs against the sync and the async repositories (tests/support/modes.py).
pytestmark = pytest.mark.usefixtures("mode")
agents = both("toolkit.repositories.agents")
audit_events = both("toolkit.repositories.audit_events")
checkpoints = both("toolkit.repositories.checkpoints")
executions = both("toolkit.repositories.executions")
sessions = both("toolkit.repositories.sessions")
users = both("toolkit.repositories.users")
workflows = both("toolkit.repositories.workflows")

# Users


def test_user_email_is_unique_case_insensitively(conn) -> None:
    user = make_user(conn, email="Ada@Example.com")
    with pytest.raises(Conflict, match="users_email_key"):
        make_user(conn, email="ada@example.COM")
    assert users.get_by_email(conn, "ADA@example.com") == user
    assert users.get_by_email(conn, "nobody@example.com") is None


def test_ordinary_reads_never_return_the_password_hash(conn) -> None:
    user = make_user(conn, password_hash="argon2$secret-hash")
    for record in (
        users.get(conn, user.id),
        users.list(conn).items[0],
        users.search(conn, "user")[0],
    ):
        assert "password_hash" not in record.model_dump()
        assert "secret-hash" not in repr(record)
    credentials = users.get_credentials(conn, user.email)
    assert credentials is not None and credentials.password_hash == "argon2$secret-hash"
    users.set_password_hash(conn, user.id, None)
    assert users.get_credentials(conn, user.email).password_hash is None  # type: ignore[union-attr]


def test_user_update_role_and_active_flag(conn) -> None:
    user = make_user(conn)
    updated = users.update(conn, user.id, expected_version=1, role="admin", is_active=False)
    assert (updated.role, updated.is_active, updated.version) == ("admin", False, 2)
    assert updated.updated_at >= user.updated_at
    assert users.count(conn, {"role": "admin"}) == 1
    assert users.count(conn, {"is_active": True}) == 0
    with pytest.raises(InvalidInput, match="role"):
        users.update(conn, user.id, expected_version=2, role="superuser")


# Agents: the old AgentRepository's capabilities


def test_agent_crud_round_trip(conn) -> None:
    owner = make_user(conn)
    agent = agents.create(
        conn,
        {
            "owner_id": owner.id,
            "name": "Helper",
            "type": "assistant",
            "config": {"model": "m1", "temperature": 0.5, "tools": ["search"]},
        },
    )
    assert agent.config.model == "m1" and agent.config.tools == ["search"]
    assert agent.created_at.tzinfo is not None
    assert agents.get(conn, str(agent.id)) == agent
    agents.delete(conn, agent.id)
    with pytest.raises(NotFound, match=str(agent.id)):
        agents.get(conn, agent.id)
    with pytest.raises(NotFound):
        agents.delete(conn, agent.id)


def test_agents_by_type_active_and_search(conn) -> None:
    owner = make_user(conn)
    a = make_agent(conn, owner, name="Alpha researcher", type="researcher")
    b = make_agent(conn, owner, name="Beta writer", type="writer", is_active=False)
    c = make_agent(conn, owner, name="gamma RESEARCHER", type="researcher")
    assert [x.id for x in agents.by_type(conn, "researcher")] == [a.id, c.id]
    assert [x.id for x in agents.active(conn)] == [a.id, c.id]
    assert {x.id for x in agents.search(conn, "researcher")} == {a.id, c.id}
    assert agents.count(conn, {"owner_id": owner.id, "is_active": False}) == 1
    assert agents.list(conn, {"type": "writer"}).items == [b]


def test_search_treats_percent_and_underscore_as_literal(conn) -> None:
    owner = make_user(conn)
    literal = make_agent(conn, owner, name="save 50% now_please")
    make_agent(conn, owner, name="save 500 nowXplease")
    assert agents.search(conn, "50%") == [literal]
    assert agents.search(conn, "now_") == [literal]
    assert agents.search(conn, "%") == [literal]
    assert agents.search(conn, "\\") == []


def test_keyset_pages_walk_every_row_once_in_order(conn) -> None:
    owner = make_user(conn)
    made = [make_agent(conn, owner, name=f"agent {i:02d}") for i in range(23)]
    for sort, descending, key in [
        ("created_at", False, lambda a: (a.created_at, a.id)),
        ("name", True, lambda a: (a.name, a.id)),
    ]:
        seen = []
        cursor = None
        while True:
            page = agents.list(conn, sort=sort, descending=descending, limit=5, cursor=cursor)
            seen.extend(page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert [a.id for a in seen] == [a.id for a in sorted(made, key=key, reverse=descending)]
    with pytest.raises(InvalidInput, match="cursor belongs to sort 'created_at'"):
        first = agents.list(conn, limit=5)
        agents.list(conn, sort="name", limit=5, cursor=first.next_cursor)


def test_update_distinguishes_null_from_unset(conn) -> None:
    agent = make_agent(conn, description="keep me")
    renamed = agents.update(conn, agent.id, expected_version=1, name="Renamed")
    assert renamed.description == "keep me" and renamed.name == "Renamed"
    cleared = agents.update(conn, agent.id, expected_version=2, description=None)
    assert cleared.description is None and cleared.name == "Renamed"
    same = agents.update(conn, agent.id, expected_version=3, description=UNSET)
    assert same.description is None and same.version == 4
    with pytest.raises(InvalidInput, match="name"):
        agents.update(conn, agent.id, expected_version=4, name=None)


def test_stale_version_raises_instead_of_overwriting(conn) -> None:
    agent = make_agent(conn, name="Original")
    agents.update(conn, agent.id, expected_version=1, name="First writer")
    with pytest.raises(StaleVersion, match="is at version 2, not 1") as caught:
        agents.update(conn, agent.id, expected_version=1, name="Second writer")
    assert caught.value.actual == 2
    assert agents.get(conn, agent.id).name == "First writer"
    with pytest.raises(NotFound):
        agents.update(conn, uuid.uuid4(), expected_version=1, name="x")


def test_foreign_keys_become_invalid_reference(conn) -> None:
    with pytest.raises(InvalidReference, match="agents_owner_id_fkey"):
        agents.create(conn, {"owner_id": uuid.uuid4(), "name": "Orphan", "type": "assistant"})
    assert agents.count(conn) == 0


def test_bulk_create(db) -> None:
    with db.transaction() as tx:
        owner = make_user(tx)
        written = agents.create_many(
            tx,
            (
                AgentCreate(owner_id=owner.id, name=f"bulk {i}", type="bulk", config={"model": "m"})
                for i in range(500)
            ),
        )
    assert written == 500
    with db.connection() as conn:
        assert agents.count(conn, {"type": "bulk"}) == 500
        assert agents.by_type(conn, "bulk", limit=1)[0].config.model == "m"


TENANT_DEFAULT_CALLS = (
    "SELECT coalesce(sum(calls), 0)::int FROM pg_stat_xact_user_functions "
    "WHERE funcname = 'toolkit_tenant_or_default'"
)
"""How often this transaction called the tenant_id columns' default (track_functions on)."""


def test_bulk_create_computes_the_tenant_once_per_statement(db, mode) -> None:
    # The tenant_id default is a plpgsql call: per row it cost the server about
    # 3 µs of each agent's ~45. The statement names it once (an InitPlan) instead.
    with db.connection() as conn:
        owner = make_user(conn)
    with db.transaction() as tx:
        mode.run(tx.execute("SET LOCAL track_functions = 'pl'"))
        written = agents.create_many(
            tx, [AgentCreate(owner_id=owner.id, name=f"bulk {i}", type="bulk") for i in range(200)]
        )
        calls = mode.run(mode.run(tx.execute(TENANT_DEFAULT_CALLS)).fetchone())
    assert written == 200
    assert calls == (1,)
    with db.connection() as conn:
        assert agents.count(conn, {"type": "bulk"}) == 200  # in the default tenant, as before


def test_bulk_create_over_several_statements_writes_all_or_nothing(conn) -> None:
    # More rows than one statement takes: on a bare connection the statements
    # share a transaction of their own, so a bad owner in the last one undoes the first.
    owner = make_user(conn)
    many = INSERT_ROWS_PER_STATEMENT + 1
    good = [{"owner_id": owner.id, "name": f"bulk {i}", "type": "bulk"} for i in range(many)]
    orphan = {"owner_id": uuid.uuid4(), "name": "orphan", "type": "bulk"}
    with pytest.raises(InvalidReference, match="agents_owner_id_fkey"):
        agents.create_many(conn, [*good[:-1], orphan])
    assert agents.count(conn) == 0
    assert agents.create_many(conn, good) == many
    assert agents.count(conn, {"type": "bulk"}) == many


def test_a_bad_row_in_the_middle_of_a_bulk_create_writes_nothing(db) -> None:
    # Three pipelined statements; the orphan owner sits in the second. On a
    # bare connection and in the caller's transaction alike, nothing stays.
    with db.connection() as conn:
        owner = make_user(conn)
    rows = [
        {"owner_id": owner.id, "name": f"bulk {i}", "type": "bulk", "config": {"model": "m"}}
        for i in range(2 * INSERT_ROWS_PER_STATEMENT + 10)
    ]
    middle = INSERT_ROWS_PER_STATEMENT + 5
    orphaned = [*rows[:middle], {**rows[middle], "owner_id": uuid.uuid4()}, *rows[middle + 1 :]]
    with db.connection() as conn:
        with pytest.raises(InvalidReference, match="agents_owner_id_fkey"):
            agents.create_many(conn, orphaned)
        assert agents.count(conn) == 0
    with pytest.raises(InvalidReference, match="agents_owner_id_fkey"), db.transaction() as tx:
        agents.create_many(tx, rows[:10])
        agents.create_many(tx, orphaned)
    invalid = [*rows[:middle], {**rows[middle], "type": "Not A Slug"}, *rows[middle + 1 :]]
    with db.connection() as conn:
        with pytest.raises(InvalidInput, match=r"AgentCreate: type"):
            agents.create_many(conn, invalid)
        assert agents.count(conn) == 0
        # The same rows, all good, are written whole: the count spans the statements.
        assert agents.create_many(conn, rows) == len(rows)
        assert agents.count(conn, {"type": "bulk"}) == len(rows)


# Workflows


def test_workflow_definition_and_status_machine(conn) -> None:
    workflow = make_workflow(
        conn, definition={"steps": [{"name": "a", "action": "llm.complete", "params": {"n": 1}}]}
    )
    assert workflow.status == "draft" and workflow.definition.steps[0].params == {"n": 1}
    published = workflows.publish(conn, workflow.id)
    assert (published.status, published.version) == ("published", 2)
    with pytest.raises(IllegalTransition, match="'published' to 'published'"):
        workflows.publish(conn, workflow.id)
    archived = workflows.archive(conn, workflow.id)
    assert archived.status == "archived"
    with pytest.raises(IllegalTransition, match="'archived' to 'archived'"):
        workflows.archive(conn, workflow.id)
    with pytest.raises(InvalidInput, match="definition"):
        workflows.update(conn, workflow.id, expected_version=3, definition={"steps": [{"bad": 1}]})
    assert workflows.count(conn, {"status": "archived"}) == 1


# Executions


def test_execution_lifecycle_and_illegal_transitions(conn) -> None:
    execution = make_execution(conn, input={"q": "hello"})
    assert execution.status == "pending" and execution.attempt == 0
    with pytest.raises(IllegalTransition, match="'pending' to 'succeeded'"):
        executions.succeed(conn, execution.id, {"a": 1})
    running = executions.start(conn, execution.id, worker_id="w1", lease_seconds=30)
    assert (running.status, running.attempt, running.worker_id) == ("running", 1, "w1")
    assert running.lease_expires_at is not None and running.started_at is not None
    done = executions.succeed(conn, execution.id, {"answer": 42})
    assert done.status == "succeeded" and done.output == {"answer": 42} and done.finished_at
    for illegal in (executions.cancel, lambda c, i: executions.fail(c, i, "boom")):
        with pytest.raises(IllegalTransition, match="'succeeded'"):
            illegal(conn, execution.id)
    with pytest.raises(NotFound):
        executions.cancel(conn, uuid.uuid4())


def test_failed_and_cancelled_executions(conn) -> None:
    workflow = make_workflow(conn)
    failing = make_execution(conn, workflow)
    executions.start(conn, failing.id, worker_id="w")
    failed = executions.fail(conn, failing.id, "model timed out")
    assert (failed.status, failed.error) == ("failed", "model timed out")
    pending = make_execution(conn, workflow)
    assert executions.cancel(conn, pending.id).status == "cancelled"
    assert executions.count(conn, {"workflow_id": workflow.id}) == 2
    assert [e.id for e in executions.list(conn, {"status": "failed"}).items] == [failed.id]


@pytest.mark.parametrize("mode", ["sync"], indirect=True)  # threads; tasks in test_async_api.py
def test_claim_next_gives_each_execution_to_one_worker(db) -> None:
    with db.connection() as conn:
        workflow = make_workflow(conn)
        made = {make_execution(conn, workflow).id for _ in range(40)}
    claimed: list[uuid.UUID] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        with db.connection() as conn:
            while (execution := executions.claim_next(conn, worker_id=name)) is not None:
                with lock:
                    claimed.append(execution.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(made)


def test_expired_leases_return_to_pending(conn, superuser) -> None:
    execution = make_execution(conn)
    executions.start(conn, execution.id, worker_id="dead-worker", lease_seconds=60)
    assert executions.requeue_expired(conn) == []
    superuser.execute(
        "UPDATE executions SET lease_expires_at = now() - interval '1 second' WHERE id = %s",
        [execution.id],
    )
    requeued = executions.requeue_expired(conn)
    assert [e.id for e in requeued] == [execution.id]
    assert requeued[0].status == "pending" and requeued[0].worker_id is None
    again = executions.claim_next(conn, worker_id="live-worker")
    assert again is not None and again.attempt == 2
    with pytest.raises(IllegalTransition):
        executions.renew_lease(conn, execution.id, worker_id="dead-worker")
    assert (
        executions.renew_lease(conn, execution.id, worker_id="live-worker").worker_id
        == "live-worker"
    )


# Checkpoints


def test_checkpoints_append_idempotently_and_prune(conn) -> None:
    execution = make_execution(conn)
    first = checkpoints.append(
        conn, {"execution_id": execution.id, "sequence": 0, "state": {"n": 0}}
    )
    assert (
        checkpoints.append(conn, {"execution_id": execution.id, "sequence": 0, "state": {"n": 0}})
        == first
    )
    with pytest.raises(Conflict, match="different state"):
        checkpoints.append(conn, {"execution_id": execution.id, "sequence": 0, "state": {"n": 9}})
    parent = first
    for n in range(1, 10):
        parent = checkpoints.append(
            conn,
            {
                "execution_id": execution.id,
                "sequence": n,
                "parent_id": parent.id,
                "state": {"n": n},
            },
        )
    assert checkpoints.latest(conn, execution.id) == parent
    assert checkpoints.get(conn, first.id) == first
    assert checkpoints.get_at(conn, execution.id, 3).state == {"n": 3}  # type: ignore[union-attr]
    page = checkpoints.history(conn, execution.id, limit=4)
    assert [c.sequence for c in page] == [0, 1, 2, 3]
    assert [
        c.sequence for c in checkpoints.history(conn, execution.id, after_sequence=3, limit=2)
    ] == [4, 5]
    assert checkpoints.prune(conn, execution.id, keep=3) == 7
    assert [c.sequence for c in checkpoints.history(conn, execution.id)] == [7, 8, 9]
    assert checkpoints.latest(conn, make_execution(conn).id) is None


# Sessions


def test_session_touch_end_and_purge(conn, superuser) -> None:
    agent = make_agent(conn)
    user = make_user(conn)
    session = sessions.create(
        conn, {"user_id": user.id, "agent_id": agent.id, "title": "Chat", "ttl_seconds": 60}
    )
    touched = sessions.touch(conn, session.id, ttl_seconds=3600)
    assert touched.expires_at > session.expires_at
    # touch is a change too: it bumps the version
    updated = sessions.update(conn, session.id, expected_version=2, state={"turns": 1})
    assert updated.state == {"turns": 1} and updated.title == "Chat"
    ended = sessions.end(conn, session.id)
    assert ended.ended_at is not None
    with pytest.raises(IllegalTransition, match="'ended' to 'active'"):
        sessions.touch(conn, session.id)
    with pytest.raises(IllegalTransition, match="'ended' to 'ended'"):
        sessions.end(conn, session.id)
    stale = sessions.create(conn, {"user_id": user.id, "agent_id": agent.id, "ttl_seconds": 60})
    superuser.execute(
        "UPDATE sessions SET expires_at = now() - interval '1 minute' WHERE id = %s", [stale.id]
    )
    with pytest.raises(IllegalTransition, match="'expired' to 'active'"):
        sessions.touch(conn, stale.id)
    assert sessions.purge_expired(conn) == 1
    assert sessions.count(conn, {"user_id": user.id}) == 1
    assert sessions.search(conn, "cha") == [sessions.get(conn, session.id)]


# Audit events


def test_audit_is_written_with_the_change_or_not_at_all(db) -> None:
    with db.connection() as conn:
        owner = make_user(conn)
    with pytest.raises(RuntimeError), db.transaction() as tx:
        agents.create(
            tx, {"owner_id": owner.id, "name": "Doomed", "type": "assistant"}, audit=Audit(owner.id)
        )
        raise RuntimeError("the caller changes its mind")
    with db.connection() as conn:
        assert agents.count(conn) == 0
        assert audit_events.count(conn) == 0
        agent = agents.create(
            conn, {"owner_id": owner.id, "name": "Kept", "type": "assistant"}, audit=Audit(owner.id)
        )
        (event,) = audit_events.list(conn, {"entity": "agent"}).items
        assert (event.action, event.entity_id, event.actor_id) == (
            "agent.created",
            agent.id,
            owner.id,
        )
        # An audit event that cannot be written takes its change down with it.
        with pytest.raises(InvalidInput):
            agents.update(
                conn,
                agent.id,
                expected_version=1,
                name="Renamed",
                audit=Audit(owner.id, details={"bad": "\x00"}),
            )
        assert agents.get(conn, agent.id).name == "Kept"


def test_audit_log_is_append_only(conn, superuser) -> None:
    event = audit_events.record(conn, {"action": "user.signed_in", "entity": "user"})
    for statement in (
        "UPDATE audit_events SET action = 'user.signed_out'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
    ):
        with pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
            superuser.execute(statement)
    assert audit_events.get(conn, event.id) == event


def test_audit_chain_names_the_first_broken_link(conn, superuser) -> None:
    events = [
        audit_events.record(
            conn, {"action": "thing.happened", "entity": "thing", "details": {"n": n}}
        )
        for n in range(6)
    ]
    assert audit_events.verify_chain(conn).ok
    assert audit_events.verify_chain(conn).checked == 6
    superuser.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update")
    superuser.execute(
        "UPDATE audit_events SET details = '{\"n\": 99}' WHERE id = %s", [events[2].id]
    )
    report = audit_events.verify_chain(conn)
    assert (report.ok, report.first_broken_seq, report.first_broken_id) == (False, 3, events[2].id)
    assert "edited" in (report.reason or "")
    superuser.execute(
        "UPDATE audit_events SET details = '{\"n\": 2}' WHERE id = %s", [events[2].id]
    )
    assert audit_events.verify_chain(conn).ok
    superuser.execute("DELETE FROM audit_events WHERE id = %s", [events[4].id])
    report = audit_events.verify_chain(conn)
    assert (report.ok, report.first_broken_seq) == (False, 6)
    assert "seq 5 is missing" in (report.reason or "")

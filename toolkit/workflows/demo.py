"""``toolkit demo``: one story walked through the toolkit, step by step.

A user signs up, creates an agent and a workflow, starts an execution,
calls its model through the LLM cache twice (the second call is a hit;
without Redis both are computed and the demo goes on), writes checkpoints,
completes it, stores its generated report (read back
with its checksum checked), and the audit chain verifies; then the workflow
runs once more through the outbox, RabbitMQ and a worker, which prints the
notification it produced. Last, two workspaces (tenants) side by side each
make a user and an agent and send the same LLM request, and neither sees
the other's (:mod:`toolkit.workflows.demo_workspaces`). It runs against the
configured database; where none answers, it says so in one line
with the fix, or runs on an embedded PostgreSQL (a database of the URL's
name) when pgserver, the ``embedded`` extra, is installed (``pip install
pgserver``, or ``pip install '.[embedded]'`` in a checkout). A server that
answers, even with an error, is always the one used.

It connects as the URL's role, on a local machine usually the ``postgres``
superuser: instead of the library's warning about that (meant for
applications) it says once, in its own words, what that role bypasses. Its
cache keys go under ``TOOLKIT_CACHE_NAMESPACE``, and it says where
``TOOLKIT_STORAGE_URL`` put the report (by default the folder
``./toolkit-files``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

from psycopg.conninfo import make_conninfo

from toolkit import DISTRIBUTION
from toolkit.cache import CacheClient, LLMCache
from toolkit.config import Settings, mask_password
from toolkit.db.conninfo import mask_conninfo, parse_conninfo
from toolkit.db.database import Database, connect
from toolkit.db.migrations import migrate
from toolkit.errors import ConfigurationError, ToolkitError
from toolkit.repositories import (
    Audit,
    agents,
    audit_events,
    checkpoints,
    executions,
    users,
    workflows,
)
from toolkit.repositories.records import Agent
from toolkit.workflows.demo_messaging import run_demo_messaging
from toolkit.workflows.demo_model import AGENT, fake_model, llm_request
from toolkit.workflows.demo_storage import store_demo_report
from toolkit.workflows.demo_workspaces import run_demo_workspaces


def _reachable(url: str) -> bool:
    """Whether a PostgreSQL server answers at ``url``'s host (any database).

    A refusal (authentication failed, no such database) is an answer: that
    server stays the one used, and its error is the one reported.
    """
    probe = make_conninfo(url, dbname="postgres")
    try:
        with connect(probe, connect_timeout=3, context="demo"):
            return True
    except ConfigurationError:
        return True
    except ToolkitError:
        return False


EMBEDDED_EXTRA_FIX = (
    f"pip install pgserver (the embedded extra of {DISTRIBUTION}; "
    "in a checkout: pip install '.[embedded]')"
)
"""How to get the embedded server: pgserver is on PyPI, the toolkit is not."""


@contextlib.contextmanager
def _embedded_server(dbname: str) -> Iterator[str]:
    """A temporary embedded PostgreSQL; yields the conninfo of its database ``dbname``."""
    import pgserver  # type: ignore[import-not-found]  # noqa: PLC0415 - the optional extra

    with tempfile.TemporaryDirectory(prefix="toolkit-demo-") as folder:
        server = pgserver.get_server(folder, cleanup_mode="stop")
        try:
            yield make_conninfo(server.get_uri(), dbname=dbname)
        finally:
            server.cleanup()


def _privileged_note(database: Database) -> str | None:
    """One line saying what the demo's role bypasses, or None for an unprivileged role.

    The demo passes ``warn_if_privileged=False``: the library's warning tells
    an application to change roles, which a first demo run cannot act on.
    """
    with database.connection() as conn:
        row = conn.execute(
            "SELECT current_user, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    if row is None or not (row[1] or row[2]):
        return None
    what = "a superuser" if row[1] else "a BYPASSRLS role"
    return (
        f"running as {row[0]!r}, {what}: fine for the demo, but it bypasses the toolkit_app "
        "role's protections (no DDL, append-only audit events, hidden password hashes, "
        "tenant isolation); an application connects as a login role in toolkit_app"
    )


def _step(number: int, text: str) -> None:
    print(f"{number:>2}. {text}")


def cached_llm_calls(settings: Settings, agent: Agent) -> tuple[str, str]:
    """The agent's LLM call, twice, through the cache; returns the answer and a summary line.

    The second identical call is a hit. Without Redis both are computed
    (the cache fails open) and the demo goes on.
    """
    request = llm_request(agent)
    with CacheClient.from_settings(settings) as client:  # under TOOLKIT_CACHE_NAMESPACE
        llm = LLMCache(client)
        llm.invalidate(request)  # a fresh start on every run
        first = llm.get_or_compute(request, lambda: fake_model(request))
        second = llm.get_or_compute(request, lambda: fake_model(request))
        stats = llm.stats()
    how = ["a cache hit" if answer.from_cache else "computed" for answer in (first, second)]
    if stats.breaker_state != "closed":
        how.append(
            f"Redis unreachable at {mask_password(settings.redis_url)}: the cache failed open"
        )
    line = (
        f"LLM call through the cache: first {how[0]}, second identical call {how[1]}"
        + (f" ({how[2]})" if len(how) > 2 else "")
        + f"; hits={stats.hits} misses={stats.misses} errors={stats.errors} "
        f"bypasses={stats.bypasses} breaker={stats.breaker_state}"
    )
    return str(second.response), line


def walk_story(database: Database) -> dict[str, Any]:
    """The demo's story against a migrated database; returns what it made."""
    suffix = uuid.uuid4().hex[:8]
    with database.transaction() as tx:
        user = users.create(
            tx, {"email": f"ada+{suffix}@example.com", "display_name": "Ada Lovelace"}
        )
        actor = Audit(actor_id=user.id)
        users_audit = audit_events.record(
            tx,
            {
                "actor_id": user.id,
                "action": "user.signed_up",
                "entity": "user",
                "entity_id": user.id,
            },
        )
    _step(2, f"user signed up: {user.email} (id {user.id}, audit #{users_audit.seq})")

    with database.transaction() as tx:
        agent = agents.create(
            tx,
            {**AGENT, "owner_id": user.id},
            audit=actor,
        )
        workflow = workflows.create(
            tx,
            {
                "owner_id": user.id,
                "agent_id": agent.id,
                "name": "Summarise a paper",
                "definition": {
                    "steps": [
                        {"name": "fetch", "action": "http.get"},
                        {"name": "summarise", "action": "llm.complete"},
                    ]
                },
            },
            audit=actor,
        )
        workflow = workflows.publish(tx, workflow.id, audit=actor)
    _step(3, f"agent created: {agent.name!r} ({agent.type}), model {agent.config.model}")
    _step(4, f"workflow {workflow.name!r} published at version {workflow.version}")

    with database.connection() as conn:
        execution = executions.create(
            conn,
            {"workflow_id": workflow.id, "input": {"paper": "On Computable Numbers"}},
            audit=actor,
        )
        execution = executions.start(conn, execution.id, worker_id="demo-worker", audit=actor)
        _step(5, f"execution {execution.id} started (attempt {execution.attempt})")
        summary, cache_line = cached_llm_calls(database.settings, agent)
        _step(6, cache_line)
        state: dict[str, Any] = {"done": []}
        written: list[str] = []
        for sequence, step in enumerate(workflow.definition.steps):
            state = {"done": [*state["done"], step.name]}
            checkpoint = checkpoints.append(
                conn,
                {"execution_id": execution.id, "sequence": sequence, "state": state},
            )
            written.append(f"{checkpoint.sequence} after step {step.name!r}")
        _step(7, f"checkpoints written: {', '.join(written)}")
        execution = executions.succeed(conn, execution.id, {"summary": summary}, audit=actor)
        _step(8, f"execution {execution.status}: {execution.output}")
    _step(9, store_demo_report(database, database.settings, execution.id))
    with database.connection() as conn:
        report = audit_events.verify_chain(conn)
        trail = audit_events.count(conn, {"actor_id": user.id})
    verdict = "intact" if report.ok else f"BROKEN at #{report.first_broken_seq}: {report.reason}"
    _step(10, f"audit chain verified: {report.checked} events checked, {verdict}; {trail} by Ada")
    return {
        "user": user,
        "agent": agent,
        "workflow": workflow,
        "execution": execution,
        "audit": report,
    }


def run_demo(settings: Settings, *, embedded: bool = False) -> int:
    """Run the demo; returns the process exit code."""
    url = settings.database_url
    embedded_available = importlib.util.find_spec("pgserver") is not None
    if not embedded and not _reachable(url):
        if not embedded_available:
            print(
                f"toolkit demo: no PostgreSQL answers at {mask_conninfo(url)}; start one (Debian/"
                "Ubuntu: 'sudo apt-get install postgresql && sudo pg_ctlcluster 15 main start'), "
                f"set TOOLKIT_DATABASE_URL, or, for an embedded one, {EMBEDDED_EXTRA_FIX}"
            )
            return 1
        print(f"no PostgreSQL at {mask_conninfo(url)}: using an embedded one (the embedded extra)")
        embedded = True
    if embedded and not embedded_available:
        print(f"toolkit demo: --embedded needs pgserver: {EMBEDDED_EXTRA_FIX}")
        return 1
    with contextlib.ExitStack() as stack:
        if embedded:
            dbname = str(parse_conninfo(url).get("dbname") or "toolkit")
            url = stack.enter_context(_embedded_server(dbname))
        result = migrate(url)
        applied = ", ".join(result.applied) or "none pending"
        _step(1, f"migrated {mask_conninfo(url)} (applied: {applied})")
        database = stack.enter_context(
            Database(
                settings.model_copy(update={"database_url": url}),
                url=url,
                warn_if_privileged=False,
            )
        )
        note = _privileged_note(database)
        if note:
            print(f"    {note}")
        story = walk_story(database)
        _step(11, "the workflow once more, through the outbox, RabbitMQ and a worker:")
        run_demo_messaging(
            database,
            settings.model_copy(update={"database_url": url}),
            story["workflow"].id,
            input={"paper": "On Computable Numbers"},
            echo=lambda line: print(f"    {line}"),
        )
        _step(12, "two workspaces side by side, each a tenant the database keeps apart:")
        kept_apart = run_demo_workspaces(database, echo=lambda line: print(f"    {line}"))
    if not kept_apart:
        print("demo failed: the two workspaces were NOT kept apart (see above)")
        return 1
    print("demo complete")
    return 0

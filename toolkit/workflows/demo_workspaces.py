"""The workspaces part of ``toolkit demo``: two tenants side by side, neither seeing the other.

:func:`run_demo_workspaces` creates two workspaces (tenants), does the same
in each (a user, an agent of the same name, the same LLM request through
the cache), and shows what the database enforces: each lists only its own
agents, a read of the other's agent by id is NotFound, the identical
request is two cache entries, and a query without a tenant raises
TenantRequired.

It runs as the application role ``toolkit_app``, the role row-level
security binds: the demo usually logs in as the ``postgres`` superuser,
which the policies do not bind and tenant-scoped work refuses
(:class:`~toolkit.errors.TenancyUnavailable`). So its connections start
with ``options=-c role=toolkit_app`` on the same login (a superuser or a
member of toolkit_app may take that role), and no new login is needed. A
role that cannot is told in one line how to let it, and the part is skipped.

The tenants get fresh ids on every run (the names stay "Acme" and
"Globex"; tenant names need not be unique), so a re-run shows the same
picture, one agent each and a computed first LLM call, on a database the
previous runs have filled.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from uuid import UUID

from psycopg import sql
from psycopg.conninfo import make_conninfo

from toolkit.cache import CacheClient, LLMCache
from toolkit.config import mask_password
from toolkit.db.conninfo import with_options
from toolkit.db.database import Database
from toolkit.errors import NotFound, TenantRequired
from toolkit.repositories import agents, tenants, users
from toolkit.repositories.records import Agent, User
from toolkit.workflows.demo_model import AGENT, fake_model, llm_request

APP_ROLE = "toolkit_app"
"""The application role (migration 0005): no BYPASSRLS, owns nothing, bound by the policies."""

WORKSPACES = ("Acme", "Globex")
"""The two workspaces' names."""

_ROLE = """
SELECT current_user, r.rolsuper OR r.rolbypassrls, EXISTS (
    SELECT FROM pg_catalog.pg_roles AS a
    WHERE a.rolname = 'toolkit_app' AND pg_catalog.pg_has_role(current_user, a.oid, 'MEMBER')
)
FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user
"""
"""The demo's role, whether it bypasses row-level security, whether it may be toolkit_app."""

_TENANTS_OF = "SELECT count(DISTINCT tenant_id) FROM agents WHERE id = ANY(%s)"
"""Run as the demo's own role, which the policies do not bind: it sees every tenant's rows."""


@dataclass(frozen=True)
class Workspace:
    """One demo workspace: its tenant and what was made in it."""

    name: str
    tenant: UUID
    user: User
    agent: Agent


def app_role_url(url: str) -> str:
    """``url`` with sessions that start as toolkit_app: the same login, bound by the policies."""
    return make_conninfo(url, options=with_options(url, [f"-c role={APP_ROLE}"]))


def _create_workspace(app_db: Database, name: str, run: str) -> Workspace:
    """A new tenant ``name`` with a user and the demo agent, in one transaction of that tenant."""
    tenant = uuid.uuid4()
    with app_db.transaction(tenant=tenant) as tx:
        tenants.create(tx, {"name": name})  # the transaction's tenant: sign-up
        user = users.create(
            tx,
            {
                "email": f"ada+{run}@{name.lower()}.example.com",
                "display_name": "Ada Lovelace",
            },
        )
        agent = agents.create(tx, {**AGENT, "owner_id": user.id})
    return Workspace(name, tenant, user, agent)


def _lists_only_its_own(app_db: Database, workspace: Workspace) -> bool:
    """Whether the workspace's agents are exactly the one made in it."""
    with app_db.transaction(tenant=workspace.tenant) as tx:
        listed = {agent.id for agent in agents.list(tx).items}
    return listed == {workspace.agent.id}


def _reads_the_others_agent(app_db: Database, reader: Workspace, other: Workspace) -> bool:
    """Whether ``reader`` can read ``other``'s agent by its id (it must get NotFound)."""
    try:
        with app_db.transaction(tenant=reader.tenant) as tx:
            agents.get(tx, other.agent.id)
    except NotFound:
        return False
    return True


def _without_a_tenant(app_db: Database) -> str | None:
    """None if a query of agents without a tenant raises TenantRequired, else what it returned."""
    try:
        with app_db.connection() as conn:
            listed = agents.list(conn).items
    except TenantRequired:
        return None
    return f"{len(listed)} agent(s)"


def _cache_line(app_db: Database, workspaces: Sequence[Workspace]) -> tuple[str, bool]:
    """Each workspace's agent sends the same request twice through its tenant's cache.

    Returns a line saying what happened and whether the workspaces kept
    apart: each first call computed (none hit the other's entry), each
    second a hit, under keys that differ only in the tenant. Without Redis
    every call is computed (the cache fails open) and the line says so.
    """
    settings = app_db.settings
    requests = [llm_request(w.agent) for w in workspaces]
    with CacheClient.from_settings(settings) as client:
        shared = LLMCache(client)  # the story's cache (step 6): the shared namespace
        caches = [shared.for_tenant(w.tenant) for w in workspaces]
        pairs = list(zip(caches, requests, strict=True))
        firsts = [cache.get_or_compute(r, partial(fake_model, r)) for cache, r in pairs]
        seconds = [cache.get_or_compute(r, partial(fake_model, r)) for cache, r in pairs]
        stats = shared.stats()
        keys = [cache.key(r) for cache, r in pairs]
        shared_key = shared.key(requests[0])
    same = all(request == requests[0] for request in requests)
    if stats.errors or stats.breaker_state != "closed":
        return (
            f"the same LLM request in both: Redis unreachable at "
            f"{mask_password(settings.redis_url)}, the cache failed open: nothing to show",
            True,
        )
    apart = same and not any(a.from_cache for a in firsts) and all(a.from_cache for a in seconds)
    a, b = workspaces[0].name, workspaces[1].name
    if not apart:
        return (
            "the same LLM request in both: NOT kept apart: first calls "
            f"{['hit' if x.from_cache else 'computed' for x in firsts]}, second calls "
            f"{['hit' if x.from_cache else 'computed' for x in seconds]}",
            False,
        )
    fingerprint = keys[0].rsplit(":", 1)[1]
    tags = [key[: -len(fingerprint)] for key in (*keys, shared_key)]
    return (
        f"the same LLM request in both: computed in {a}, computed again in {b} (not served "
        f"{a}'s entry), then a hit in each: two entries, {tags[0]}{fingerprint[:12]}... "
        f"and {tags[1]}{fingerprint[:12]}... (step 6's is in the shared namespace, {tags[2]}...)",
        True,
    )


def run_demo_workspaces(database: Database, *, echo: Callable[[str], None] = print) -> bool:
    """Run two workspaces side by side on ``database``'s login, as toolkit_app; echo each line.

    Returns False only when the workspaces were seen not to be kept apart
    (each such line says so); a skipped part (the login cannot become
    toolkit_app) returns True.
    """
    with database.connection() as conn:
        row = conn.execute(_ROLE).fetchone()
    login, bypasses, may_become_app = row if row else ("(unknown)", False, False)
    if not may_become_app:
        grant = sql.SQL(f"GRANT {APP_ROLE} TO {{}}").format(sql.Identifier(login))
        echo(
            f"skipped: the role {login!r} cannot become {APP_ROLE} (the application role, which "
            f"row-level security binds); to see this part, have a superuser run "
            f"{grant.as_string(None)}, or run the demo as a superuser"
        )
        return True
    why = (
        f"row-level security does not bind {login!r}, so tenant-scoped work refuses it"
        if bypasses
        else "it is the application role, which row-level security binds"
    )
    echo(
        f"run as the role {APP_ROLE} (each connection starts with options '-c role={APP_ROLE}' "
        f"on the login {login!r}) because {why}"
    )
    url = app_role_url(database.url)
    with Database(database.settings, url=url, warn_if_privileged=False) as app_db:
        run = uuid.uuid4().hex[:8]
        made = [_create_workspace(app_db, name, run) for name in WORKSPACES]
        for w in made:
            echo(
                f"workspace {w.name!r} (tenant {w.tenant}): user {w.user.email}, "
                f"agent {w.agent.name!r} {w.agent.id}"
            )
        own = [_lists_only_its_own(app_db, w) for w in made]
        verdicts = ["yes" if ok else "NO: it lists another workspace's" for ok in own]
        echo(
            "each lists only its own agents: "
            + ", ".join(f"{w.name!r} {v}" for w, v in zip(made, verdicts, strict=True))
        )
        leaked = [
            _reads_the_others_agent(app_db, w, other)
            for w, other in zip(made, made[::-1], strict=True)
        ]
        echo(
            "a read of the other workspace's agent by id: "
            + ", ".join(
                f"{'READ IT' if bad else 'NotFound'} in {w.name!r}"
                for w, bad in zip(made, leaked, strict=True)
            )
        )
        cache_line, cache_apart = _cache_line(app_db, made)
        echo(cache_line)
        answered = _without_a_tenant(app_db)
        echo(
            "a query of agents without a tenant: "
            + (
                "TenantRequired (an error, not an empty list)"
                if answered is None
                else f"NOT refused: it returned {answered}"
            )
        )
    if bypasses:
        with database.connection() as conn:
            seen = conn.execute(_TENANTS_OF, [[w.agent.id for w in made]]).fetchone()
        echo(
            f"as {login!r}, whom the policies do not bind: both agents are there, in "
            f"{seen[0] if seen else 0} tenants: the database, not the queries, kept them apart"
        )
    return all(own) and not any(leaked) and cache_apart and answered is None

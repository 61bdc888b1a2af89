"""Time partitions of the append-only and queue tables (``toolkit maintain``).

Migration 0011 partitions ``public.outbox`` by ``created_at``, 0014 the
LangGraph tables (``lg_checkpoints``, ``lg_blobs``, ``lg_writes``) by
``stored_at`` (native range partitioning, no DEFAULT partition) into the
schema ``toolkit_partitions``,
which no application role may use: every read and write goes through the
parent, under its row-level security. ``toolkit_partitions.policy`` says,
per parent, how wide a partition is, how many to keep ready ahead of now,
how long a partition is kept once its range has ended, and which rows keep
it alive whatever its age (the outbox: ``sent_at IS NULL``), the function
(``before_drop``) to call with a partition before it leaves its parent and
again right before it is dropped, and what to run before expired partitions
are dropped (``carry_forward``, optional).

Migration 0012 partitions ``public.inbox`` the same way, by the message's
creation time (see :mod:`toolkit.messaging.inbox`; retention 14 days,
nothing kept past it). Migration 0013 partitions ``public.audit_events``
(weekly, kept two years); its ``before_drop``,
``toolkit_partitions.audit_retire``, records the retention anchors each
tenant's chain goes on from (``public.audit_retention_anchors``;
:mod:`toolkit.audit_anchors`). Migration 0014 partitions the LangGraph
tables (below).

:func:`maintain`, under the migration advisory lock (a maintain run and a
migrate run never overlap; two maintain runs queue up):

1. finishes any ``DETACH ... CONCURRENTLY`` a killed run left pending;
2. creates the partitions missing up to ``premake`` intervals ahead;
3. runs the policy's ``carry_forward`` function, if it has one, in a
   transaction of its own: it moves the rows still needed out of the expired
   partitions (see below);
4. drops each partition whose range ended more than ``retention`` ago:
   calls the policy's ``before_drop`` with it (the audit log: its anchors),
   then ``DETACH PARTITION ... CONCURRENTLY`` (writers and the relay go on; it
   waits only for transactions that hold the parent), checks again on the
   detached table that no row must be kept (a transaction that began long
   ago may have written into it until the detach), then ``DROP TABLE``. A
   partition with a row to keep is attached back, kept and reported;
   ``before_drop`` is called again on the detached table right before its
   drop (whatever a late transaction wrote into it until the detach). The
   drop itself waits at most 200 ms for its locks (it removes the foreign
   key's triggers from ``tenants``, whose readers it must not stall); a
   table not dropped stays detached, out of every query of the parent, and
   the next run drops it.

Retention is a partition drop, never a ``DELETE``: the dead row versions a
relay leaves go with their partition, whatever snapshot a long transaction
holds. A second run right after changes nothing, and a run killed at any
point leaves a state the next run completes: ``before_drop`` is idempotent
and always precedes the detach and the drop.

LangGraph threads (0014). A thread's newest checkpoint may read a value
stored weeks ago (a channel that never changed, the base of a list's delta),
and its pending writes belong to that checkpoint, so a partition cannot
simply expire under a thread still in use. The rule: a thread is *live*
while one of its checkpoints or writes is in a partition that has not
expired, and *finished* once every one of them is (nothing written to it for
the retention, four weeks by default, rounded up to a partition).
``toolkit_partitions.lg_carry_forward`` moves every row of a live thread out
of the expired partitions into the newest partition holding a row of that
thread, with one ``UPDATE`` of ``stored_at`` (a row moves between
partitions atomically: every reader finds it in one place, never two, and
never none), after taking the write locks of those threads (so a saver
write waits for the move instead of failing on a row being moved). What
is left belongs to finished threads and goes with the partition;
``keep_while`` (the thread is live) is checked again on the detached
table, so a thread taken up again meanwhile keeps it. Rows never
move past their thread's newest row, so a thread nobody writes to ends.
Moving rather than pinning: a ``keep_while`` alone would let one long-lived
thread keep a whole partition, every other thread's rows in it included,
for as long as it runs; moving costs rewriting a live thread's rows about
once per retention.

It needs the owner of the tables and a role that bypasses row-level security
(the migration role), as ``toolkit migrate`` does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg import sql

from toolkit.db.database import Connection, connect
from toolkit.db.errors import raise_translated
from toolkit.db.migrations import MIGRATION_LOCK_KEY

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 5.0
_LOCK_TIMEOUT_S = 300
_DROP_LOCK_TIMEOUT_MS = 200


@dataclass
class MaintainReport:
    """What one :func:`maintain` run did, per partitioned table."""

    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    finalized: list[str] = field(default_factory=list)
    awaiting_drop: list[str] = field(default_factory=list)
    #: rows moved out of expired partitions before the drop, per parent
    carried: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: partitions created, dropped, kept, finalized; rows carried forward."""
        return (
            f"{len(self.created)} partition(s) created, {len(self.dropped)} dropped, "
            f"{len(self.kept)} expired but kept (rows still to keep), "
            f"{len(self.finalized)} interrupted detach(es) finished, "
            f"{len(self.awaiting_drop)} detached awaiting drop, "
            f"{sum(self.carried.values())} row(s) carried forward"
        )


@dataclass(frozen=True)
class _Policy:
    parent: str
    keep_while: str
    before_drop: str | None = None
    carry_forward: str | None = None


def _policies(conn: Connection) -> list[_Policy]:
    rows = conn.execute(
        "SELECT parent, keep_while, before_drop::text, carry_forward"
        " FROM toolkit_partitions.policy ORDER BY parent"
    ).fetchall()
    return [
        _Policy(str(parent), str(keep), hook, None if carry is None else str(carry))
        for parent, keep, hook, carry in rows
    ]


def _before_drop(conn: Connection, policy: _Policy, partition: str) -> None:
    """Call the policy's ``before_drop`` function (if any) with ``partition``: what must be
    kept of it is recorded (and committed) before any of its rows leaves the parent."""
    if policy.before_drop is not None:
        conn.execute(
            sql.SQL("SELECT {}(%s::regclass)").format(sql.SQL(policy.before_drop)), [partition]
        )


def _has_rows_to_keep(conn: Connection, partition: str, keep_while: str) -> bool:
    """Whether ``partition`` (read directly: its owner is bound by no policy) holds a row
    matching the policy's ``keep_while`` predicate."""
    query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {})").format(
        sql.SQL(partition), sql.SQL(keep_while)
    )
    row = conn.execute(query).fetchone()
    return bool(row and row[0])


_PARTITIONS = (
    "SELECT p.partition::text, pg_get_expr(c.relpartbound, c.oid)"
    " FROM toolkit_partitions.partitions(%(parent)s::regclass) AS p"
    " JOIN pg_class AS c ON c.oid = p.partition"
    " JOIN toolkit_partitions.policy AS r ON r.parent::regclass = %(parent)s::regclass"
)


def _finalize_pending(conn: Connection, policy: _Policy, report: MaintainReport) -> None:
    """Finish the concurrent detaches a killed run left pending, then drop (or keep) them."""
    pending = conn.execute(
        _PARTITIONS + " WHERE p.detach_pending", {"parent": policy.parent}
    ).fetchall()
    for partition, bound in pending:
        conn.execute(
            sql.SQL("ALTER TABLE {} DETACH PARTITION {} FINALIZE").format(
                sql.SQL(policy.parent), sql.SQL(partition)
            )
        )
        report.finalized.append(partition)
        _drop_detached(conn, policy, partition, str(bound), report)


def _drop_detached(
    conn: Connection, policy: _Policy, partition: str, bound: str, report: MaintainReport
) -> None:
    """Drop the detached ``partition``, or attach it back (``bound``: its
    ``FOR VALUES`` clause) when a row of it must be kept."""
    if _has_rows_to_keep(conn, partition, policy.keep_while):
        conn.execute(
            sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(
                sql.SQL(policy.parent), sql.SQL(partition), sql.SQL(bound)
            )
        )
        log.warning("maintain: %s expired but holds rows to keep; attached back", partition)
        report.kept.append(partition)
        return
    _before_drop(conn, policy, partition)
    _drop_table(conn, partition, report)


def _drop_table(conn: Connection, table: str, report: MaintainReport) -> None:
    """Drop the detached ``table``, unless a lock would hold up other sessions.

    Dropping it removes its foreign key's triggers from the referenced table
    (tenants), which takes that table's ACCESS EXCLUSIVE lock: queued behind
    a transaction that read tenants, it would stall every reader after it.
    So the wait is short; a table not dropped stays detached (out of the
    parent: no query of the parent reads it) and the next run drops it.
    """
    conn.execute(f"SET lock_timeout = '{_DROP_LOCK_TIMEOUT_MS}ms'")
    try:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.SQL(table)))
    except psycopg.errors.LockNotAvailable:
        log.info("maintain: %s detached; its drop waits for a lock, next run", table)
        report.awaiting_drop.append(table)
        return
    finally:
        conn.execute(f"SET lock_timeout = '{_LOCK_TIMEOUT_S}s'")
    report.dropped.append(table)


def _drop_leftovers(conn: Connection, report: MaintainReport) -> None:
    """Drop the tables a run detached but did not drop, unless one holds rows to keep
    (a run killed between its detach and its check): that one is reported, not dropped."""
    leftovers = conn.execute(
        "SELECT c.oid::regclass::text, p.parent, p.keep_while, p.before_drop::text"
        " FROM pg_class AS c"
        " JOIN toolkit_partitions.policy AS p"
        " ON starts_with(c.relname, (SELECT r.relname FROM pg_class AS r"
        "   WHERE r.oid = p.parent::regclass) || '_')"
        " WHERE c.relnamespace = 'toolkit_partitions'::regnamespace AND c.relkind = 'r'"
        " AND NOT c.relispartition ORDER BY c.relname"
    ).fetchall()
    for table, parent, keep_while, hook in leftovers:
        policy = _Policy(str(parent), str(keep_while), hook)
        if _has_rows_to_keep(conn, table, policy.keep_while):
            log.error("maintain: detached %s holds rows to keep; attach it back by hand", table)
            report.kept.append(table)
            continue
        _before_drop(conn, policy, table)
        _drop_table(conn, table, report)


def _drop_expired(
    conn: Connection, policy: _Policy, now: datetime | None, report: MaintainReport
) -> None:
    """Detach concurrently and drop each partition past its retention with nothing to keep."""
    if policy.carry_forward is not None:
        # Rows still needed leave the expired partitions first, in one transaction of
        # their own (autocommit), before any detach.
        row = conn.execute(
            sql.SQL("SELECT {}(%s::regclass)").format(sql.SQL(policy.carry_forward)),
            [policy.parent],
        ).fetchone()
        if row and row[0]:
            report.carried[policy.parent] = int(row[0])
    expired = conn.execute(
        _PARTITIONS + " WHERE NOT p.detach_pending"
        " AND p.upper_bound <= coalesce(%(now)s::timestamptz, now()) - r.retention"
        " ORDER BY p.upper_bound",
        {"parent": policy.parent, "now": now},
    ).fetchall()
    for partition, bound in expired:
        if _has_rows_to_keep(conn, partition, policy.keep_while):
            report.kept.append(partition)
            continue
        _before_drop(conn, policy, partition)
        conn.execute(
            sql.SQL("ALTER TABLE {} DETACH PARTITION {} CONCURRENTLY").format(
                sql.SQL(policy.parent), sql.SQL(partition)
            )
        )
        _drop_detached(conn, policy, partition, str(bound), report)


def maintain(url: str, *, now: datetime | None = None) -> MaintainReport:
    """Create the coming partitions and drop the expired ones of every partitioned table.

    ``url`` is the migration role's (the tables' owner). ``now`` (tests,
    benchmarks) stands for the present when given. Idempotent; runs under
    the migration advisory lock. Raises the toolkit's DatabaseError family.
    """
    report = MaintainReport()
    conn = connect(url, connect_timeout=_CONNECT_TIMEOUT_S, context="connecting to maintain")
    try:
        with conn:
            conn.execute(f"SET lock_timeout = '{_LOCK_TIMEOUT_S}s'")
            conn.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK_KEY])
            # The present of this run, for the policies' own SQL (keep_while, carry_forward).
            conn.execute(
                "SELECT set_config('toolkit.maintain_now',"
                " coalesce(%s::timestamptz::text, ''), false)",
                [now],
            )
            try:
                _drop_leftovers(conn, report)
                for policy in _policies(conn):
                    _finalize_pending(conn, policy, report)
                    created = conn.execute(
                        "SELECT made::text FROM toolkit_partitions.create_coming("
                        "%s::regclass, coalesce(%s::timestamptz, now())) AS made",
                        [policy.parent, now],
                    ).fetchall()
                    report.created.extend(name for (name,) in created)
                    _drop_expired(conn, policy, now, report)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK_KEY])
    except psycopg.Error as exc:
        raise_translated(exc, "maintaining partitions")
    return report

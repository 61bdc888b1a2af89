"""Audit anchors: tamper evidence for the audit chain that survives the database owner.

The audit chain (``audit_events``) is an unkeyed SHA-256 chain that the
database computes; whoever owns the database can rewrite a row and every
later hash, or drop the newest rows, and the database's own check still
passes. An *anchor* is the chain head (sequence, hash, time) written to
storage outside the database, create-only, and on S3 with Object Lock
retention where the bucket has Object Lock enabled. :func:`verify` then
checks the chain against the anchors, in Python:

* every row's hash is recomputed here from the row's fields (the encoding
  of ``audit_event_hash`` in migration 0001, reproduced byte for byte), so
  the verdict never rests on a function stored in the database it checks;
* every row links to the previous one;
* every anchored (sequence, hash) is still there. An anchor also carries a
  short digest of each row anchored since the previous anchor (up to
  :data:`MAX_ROW_DIGESTS`), so a rewrite is named to the exact row.

Findings are named by :class:`FindingKind`: ``rewritten`` (a row no longer
has the hash an anchor recorded: rewritten and re-chained), ``truncated``
(the newest anchor's sequence is past the chain's end), ``hash-function-
replaced`` (stored hashes agree with what the database's function computes
now but not with the recomputation here), ``edited`` (a row no longer
matches its own hash), ``broken-link`` (a missing sequence or a
``prev_hash`` that does not link), ``bad-anchor``, ``unanchored`` and
``bad-retention-anchor``.

Retention (migration 0013) drops whole partitions of the log. Before a
partition goes, ``toolkit maintain`` records, per tenant, the (sequence,
hash) of each of its rows whose successor is not in it, in
``audit_retention_anchors``, which only the tables' owner can write. A gap
in the chain is then accepted only where such an anchor records the row
right before the gap with the very hash the row after it links to (so a
chain whose oldest rows were dropped starts from its anchor); any other gap
is a ``broken-link``. A retention anchor that disagrees with a row still
there, or with what an external anchor recorded for that sequence, is a
``bad-retention-anchor``: an edited anchor is found either way, since the
row after it no longer links to it.

:func:`write_anchor` refuses to anchor a chain that does not extend the
previous anchor, so anchors are consistent with each other and matching the
newest one vouches for every row up to it.

The chain is per tenant (migration 0009), and so are its anchors: the
queries read the chain of the transaction's tenant (the default tenant's
without one), and the anchors are kept in that tenant's area of the store
(:func:`~toolkit.storage.keys.tenant_area`), asked of the same transaction,
so one tenant's chain is never anchored over, or checked against, another's.
The default tenant's area is the store's root: anchors written before
tenancy keep their keys and still vouch for its chain. To anchor a tenant's
chain, pass a connection inside ``db.transaction(tenant=...)``.

What remains possible: someone who controls both the database and the
anchor store; and rows written after the newest anchor can be rewritten
undetected until the next anchor. Run ``toolkit audit anchor`` periodically
(cron, a systemd timer or a Kubernetes CronJob; hourly bounds that window to
an hour) and ``toolkit audit verify`` from a host the database owner does
not control.

Its reads of ``audit_events`` are named queries in ``sql/audit_anchors.sql``,
bound here like any repository's and checked by ``toolkit verify``. The
``toolkit audit anchor`` and ``toolkit audit verify`` commands are
:mod:`toolkit.commands.audit`.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Final
from uuid import UUID

import psycopg
from psycopg.pq import TransactionStatus

from toolkit.config import Settings
from toolkit.db.bind import Many, OneOrNone, Scalar
from toolkit.db.drivers import run
from toolkit.errors import (
    IntegrityError,
    InvalidInput,
    RetentionUnavailable,
    ToolkitError,
    bounded_repr,
)
from toolkit.records import Record
from toolkit.repositories.audit import (
    RETENTION_ANCHORS,
    dropped_by_retention,
    retention_anchors_by_seq,
)
from toolkit.storage.keys import tenant_area
from toolkit.tenants import tenant_id

if TYPE_CHECKING:
    from toolkit.db.database import Connection
    from toolkit.storage.base import RetentionMode, Storage

ANCHOR_PREFIX: Final = "audit-anchors/"
"""Where a tenant's anchors live in its area: ``<area>audit-anchors/<sequence>-<time>.json``
(:func:`anchor_prefix`); the default tenant's area is the store's root."""

ANCHOR_FORMAT: Final = "toolkit.audit-anchor/1"
MAX_ROW_DIGESTS: Final = 10_000
"""Row digests one anchor carries (about 20 bytes each); older rows of a larger batch
are covered by the head hash only, and a rewrite among them is named as a range."""

DIGEST_HEX_CHARS: Final = 16
"""A row digest is the first 64 bits of the row's hash: enough to name a row."""

MAX_ANCHOR_BYTES: Final = 1 << 20
DEFAULT_RETENTION_DAYS: Final = 365

_BATCH: Final = 1000
_SEQUENCE_DIGITS: Final = 20


class FindingKind(StrEnum):
    """What verification found wrong; each kind is a different attack or accident."""

    REWRITTEN = "rewritten"
    TRUNCATED = "truncated"
    HASH_FUNCTION_REPLACED = "hash-function-replaced"
    EDITED = "edited"
    BROKEN_LINK = "broken-link"
    BAD_ANCHOR = "bad-anchor"
    UNANCHORED = "unanchored"
    BAD_RETENTION_ANCHOR = "bad-retention-anchor"


@dataclass(frozen=True)
class Finding:
    """One problem: its kind, the first sequence concerned (if any) and what was seen."""

    kind: FindingKind
    sequence: int | None
    message: str

    def __str__(self) -> str:
        where = f" at seq {self.sequence}" if self.sequence is not None else ""
        return f"{self.kind}{where}: {self.message}"


@dataclass(frozen=True)
class Anchor:
    """A chain head recorded outside the database, with digests of the rows since the last."""

    sequence: int
    hash: str
    """The head row's hash, hex."""
    event_time: datetime
    """The head row's ``created_at``."""
    anchored_at: datetime
    digests_from: int
    """The sequence of the first entry of ``row_digests``."""
    row_digests: tuple[str, ...] = ()
    key: str = ""
    """Where it is stored (empty until written or when read without one)."""

    @property
    def file_name(self) -> str:
        """``<zero-padded sequence>-<anchoring time>.json``: sorts by sequence."""
        stamp = self.anchored_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return f"{self.sequence:0{_SEQUENCE_DIGITS}d}-{stamp}.json"

    def to_json(self) -> bytes:
        """The stored document."""
        document = {
            "format": ANCHOR_FORMAT,
            "sequence": self.sequence,
            "hash": self.hash,
            "event_time": self.event_time.isoformat(),
            "anchored_at": self.anchored_at.isoformat(),
            "digests_from": self.digests_from,
            "row_digests": list(self.row_digests),
        }
        return json.dumps(document, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, key: str) -> Anchor:
        """Parse a stored anchor; InvalidInput naming what is wrong with it."""
        try:
            document = json.loads(data)
            if not isinstance(document, dict) or document.get("format") != ANCHOR_FORMAT:
                raise ValueError(f"not a {ANCHOR_FORMAT} document")
            sequence, digests_from = document["sequence"], document["digests_from"]
            if not all(type(n) is int and n >= 1 for n in (sequence, digests_from)):
                raise ValueError("sequence and digests_from must be positive integers")
            digests = document["row_digests"]
            if not isinstance(digests, list) or not all(_is_hex(d) for d in digests):
                raise ValueError("row_digests must be a list of hex strings")
            if digests and digests_from + len(digests) - 1 != sequence:
                raise ValueError("row_digests must end at the anchored sequence")
            digest = document["hash"]
            if not _is_hex(digest) or len(digest) != 64:
                raise ValueError("hash must be 64 hex characters")
            return cls(
                sequence=sequence,
                hash=digest,
                event_time=datetime.fromisoformat(document["event_time"]),
                anchored_at=datetime.fromisoformat(document["anchored_at"]),
                digests_from=digests_from,
                row_digests=tuple(digests),
                key=key,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(
                f"audit anchor {bounded_repr(key)} is unreadable: {exc}", field="anchor", value=key
            ) from None


def _is_hex(value: object) -> bool:
    if not isinstance(value, str) or not value:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return value == value.lower()


@dataclass(frozen=True)
class AnchorResult:
    """What :func:`write_anchor` stored and how it is protected."""

    anchor: Anchor
    protection: str
    """``create-only``, or the S3 Object Lock mode and retain-until date."""


@dataclass(frozen=True)
class AnchorReport:
    """The outcome of :func:`verify`."""

    rows_checked: int
    head_sequence: int
    anchors_checked: int
    newest_anchor_sequence: int | None
    findings: tuple[Finding, ...] = ()
    dropped_by_retention: int = 0
    """Rows missing from the chain where a retention anchor vouches for their drop."""

    @property
    def ok(self) -> bool:
        """True when nothing was found."""
        return not self.findings

    def kinds(self) -> set[FindingKind]:
        """The kinds of the findings."""
        return {finding.kind for finding in self.findings}

    def first(self, kind: FindingKind) -> Finding | None:
        """The finding of this kind, if any."""
        return next((f for f in self.findings if f.kind == kind), None)

    def summary(self) -> str:
        """One line: intact, or how many findings."""
        if self.ok:
            dropped = (
                f" ({self.dropped_by_retention} older row(s) dropped by retention, from their "
                "retention anchors)"
                if self.dropped_by_retention
                else ""
            )
            return (
                f"{self.rows_checked} rows recomputed and linked{dropped}; "
                f"{self.anchors_checked} anchor(s) agree (newest at seq "
                f"{self.newest_anchor_sequence}, chain head at seq {self.head_sequence})"
            )
        return (
            f"{len(self.findings)} finding(s) in {self.rows_checked} rows against "
            f"{self.anchors_checked} anchor(s)"
        )


# -- the hash, recomputed here ----------------------------------------------------


class ChainRow(Record):
    """One audit row as the verifier reads it (``details`` as jsonb's text form)."""

    seq: int
    id: UUID
    actor_id: UUID | None
    action: str | None
    entity: str | None
    entity_id: UUID | None
    details: str | None
    created_at: datetime
    prev_hash: bytes
    hash: bytes


class ChainHead(Record):
    """The newest audit row's sequence, hash and time."""

    seq: int
    hash: bytes
    created_at: datetime


_chain_tenant = Scalar("audit_anchors.tenant", UUID, ())
_head = OneOrNone("audit_anchors.head", ChainHead, ())
_rows_after = Many("audit_anchors.rows", ChainRow, ("after", "upto", "limit"))
_database_agrees = Scalar("audit_anchors.database_agrees", bool, ("seq",))


def event_hash(row: ChainRow) -> bytes:
    """SHA-256 of one audit row exactly as migration 0001's ``audit_event_hash`` encodes it.

    ``concat_ws('|', ...)`` of the fields as PostgreSQL prints them (NULLs
    skipped), ``created_at`` in UTC to the microsecond, appended to the
    row's ``prev_hash``; ``details`` is jsonb's text form (``details::text``).
    """
    utc = row.created_at.astimezone(UTC)
    fields = (
        str(row.seq),
        str(row.id),
        "" if row.actor_id is None else str(row.actor_id),
        row.action,
        row.entity,
        "" if row.entity_id is None else str(row.entity_id),
        row.details,
        f"{utc.year:04d}-{utc:%m-%dT%H:%M:%S}.{utc.microsecond:06d}",
    )
    text = "|".join(part for part in fields if part is not None)
    return hashlib.sha256(bytes(row.prev_hash) + text.encode("utf-8")).digest()


# -- walking the chain -------------------------------------------------------------


@dataclass
class _Walk:
    """One pass over rows ``after < seq <= upto``: links, recomputed hashes, expectations."""

    expected: dict[int, tuple[str, str]]
    """seq -> (hex hash or hex prefix an anchor recorded, the anchor's key)."""
    retained: dict[int, bytes] = field(default_factory=dict)
    """seq -> hash the tenant's retention anchors record."""
    keep_digests: int = 0
    checked: int = 0
    last_seq: int = 0
    last_hash: bytes = b""
    last_confirmed: int = 0
    broken: Finding | None = None
    contradicted: Finding | None = None
    bad_retention: Finding | None = None
    dropped: int = 0
    first_mismatch: int | None = None
    mismatches: int = 0
    digests: deque[tuple[int, bytes]] = field(default_factory=deque)

    def run(self, conn: Connection, after: int, upto: int, previous_hash: bytes | None) -> None:
        expected_seq = after + 1
        self.last_seq, self.last_hash = after, previous_hash or b""
        for row in _rows(conn, after, upto):
            seq, prev, stored = row.seq, bytes(row.prev_hash), bytes(row.hash)
            if self.broken is None:
                if seq != expected_seq:
                    if seq > expected_seq and dropped_by_retention(self.retained, seq, prev):
                        self.dropped += seq - expected_seq
                        # An anchor's digests run without a gap up to its head.
                        self.digests.clear()
                    else:
                        self.broken = Finding(
                            FindingKind.BROKEN_LINK,
                            seq,
                            f"rows {expected_seq}..{seq - 1} are missing from the chain, and no "
                            f"retention anchor records row {seq - 1} with the hash row {seq} "
                            "links to",
                        )
                elif previous_hash is not None and prev != self.last_hash:
                    self.broken = Finding(
                        FindingKind.BROKEN_LINK,
                        seq,
                        "prev_hash does not match the previous row's hash",
                    )
            if event_hash(row) != stored:
                self.mismatches += 1
                if self.first_mismatch is None:
                    self.first_mismatch = seq
            self._check_expected(seq, stored)
            retained = self.retained.get(seq)
            if retained is not None and retained != stored and self.bad_retention is None:
                self.bad_retention = Finding(
                    FindingKind.BAD_RETENTION_ANCHOR,
                    seq,
                    f"the retention anchor of seq {seq} records a hash that row {seq}, still "
                    "there, does not have: the anchor or the row was altered",
                )
            if self.keep_digests:
                self.digests.append((seq, stored))
                if len(self.digests) > self.keep_digests:
                    self.digests.popleft()
            self.checked += 1
            expected_seq = seq + 1
            self.last_seq, self.last_hash = seq, stored
            previous_hash = stored

    def _check_expected(self, seq: int, stored: bytes) -> None:
        recorded = self.expected.get(seq)
        if recorded is None:
            return
        want, key = recorded
        if stored.hex().startswith(want):
            if self.contradicted is None:
                self.last_confirmed = seq
            return
        if self.contradicted is not None:
            return
        if self.last_confirmed == seq - 1:
            where = f"row {seq} was rewritten (row {seq - 1} still matches)"
            if seq == 1:
                where = "row 1 was rewritten"
        else:
            where = (
                f"a row in {self.last_confirmed + 1}..{seq} was rewritten "
                f"(no anchor records the rows in between)"
            )
        self.contradicted = Finding(
            FindingKind.REWRITTEN,
            seq,
            f"row {seq}'s hash is not the one anchor {key} recorded: {where} and the chain "
            "re-hashed after it",
        )


def _rows(conn: Connection, after: int, upto: int) -> Iterator[ChainRow]:
    while True:
        batch = run(conn, _rows_after, after=after, upto=upto, limit=_BATCH)
        yield from batch
        if len(batch) < _BATCH:
            return
        after = batch[-1].seq


@contextmanager
def _optional(conn: Connection) -> Iterator[None]:
    """Run an optional read whose failure must leave the caller's transaction usable.

    On a bare autocommit connection a failed read leaves nothing behind; inside
    a transaction it runs under a savepoint, undone if it fails. Nothing is
    committed here: the caller's transaction commits through its own door.
    """
    if conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
        yield
        return
    conn.execute("SAVEPOINT toolkit_optional_read")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK TO SAVEPOINT toolkit_optional_read")
        raise
    conn.execute("RELEASE SAVEPOINT toolkit_optional_read")


def _mismatch_finding(conn: Connection, walk: _Walk) -> Finding | None:
    """Name the rows whose stored hash the recomputation disagrees with."""
    seq = walk.first_mismatch
    if seq is None:
        return None
    count = f"{walk.mismatches} row(s) from seq {seq} on"
    try:
        with _optional(conn):
            database_agrees = bool(run(conn, _database_agrees, seq=seq))
        consulted = ""
    except (psycopg.Error, ToolkitError) as exc:  # the diagnosis is optional; the finding stands
        database_agrees = False
        consulted = f" (the database's audit_event_hash could not be called: {type(exc).__name__})"
    if database_agrees:
        return Finding(
            FindingKind.HASH_FUNCTION_REPLACED,
            seq,
            f"{count} carry hashes that the database's audit_event_hash computes now but the "
            "encoding of migration 0001 does not: the function was replaced",
        )
    return Finding(
        FindingKind.EDITED,
        seq,
        f"{count} no longer match their own hash (edited in place){consulted}",
    )


# -- the anchor store ---------------------------------------------------------------


def anchor_prefix(tenant: UUID | str | None) -> str:
    """Where ``tenant``'s anchors are kept: ``audit-anchors/`` for the default tenant (and
    None), ``t/<tenant>/audit-anchors/`` for another; no tenant's prefix is inside another's."""
    return f"{tenant_area(None if tenant is None else tenant_id(tenant))}{ANCHOR_PREFIX}"


def anchor_keys(storage: Storage, tenant: UUID | str | None = None) -> list[str]:
    """Every anchor's key of ``tenant`` (the default tenant's by default), oldest first."""
    return [info.key for info in storage.list(anchor_prefix(tenant)) if info.key.endswith(".json")]


def read_anchor(storage: Storage, key: str) -> Anchor:
    """One stored anchor; InvalidInput if it is not one."""
    return Anchor.from_json(storage.get(key), key)


def store_anchor(
    storage: Storage, anchor: Anchor, *, tenant: UUID | str | None = None, key: str | None = None
) -> Anchor:
    """Write ``anchor`` create-only (Conflict if the key exists); returns it with its key.

    The key is ``key``, else the anchor's file name among ``tenant``'s anchors.
    """
    target = key or f"{anchor_prefix(tenant)}{anchor.file_name}"
    storage.put(target, anchor.to_json(), max_bytes=MAX_ANCHOR_BYTES, allowed_types=None)
    return Anchor(**{**anchor.__dict__, "key": target})


def _protect(storage: Storage, key: str, days: int, mode: RetentionMode) -> str:
    """Retention on the anchor where the store has it (S3 Object Lock); otherwise create-only."""
    try:
        held = storage.retain(key, mode=mode, until=datetime.now(UTC) + timedelta(days=days))
    except RetentionUnavailable as exc:
        return f"create-only ({exc.reason})" if exc.reason else "create-only"
    except ToolkitError as exc:
        raise IntegrityError(f"anchor {key} was written, but its retention failed: {exc}") from exc
    return f"{held.mode} retention until {held.until:%Y-%m-%d}"


def _latest_anchors(
    storage: Storage, tenant: UUID, latest: int | None
) -> tuple[list[Anchor], list[Finding]]:
    keys = anchor_keys(storage, tenant)
    if latest is not None:
        keys = keys[-latest:] if latest > 0 else []
    anchors, findings = [], []
    for key in keys:
        try:
            anchors.append(read_anchor(storage, key))
        except InvalidInput as exc:
            findings.append(Finding(FindingKind.BAD_ANCHOR, None, str(exc)))
    anchors.sort(key=lambda a: (a.sequence, a.anchored_at))
    return anchors, findings


def _expectations(anchors: Sequence[Anchor]) -> dict[int, tuple[str, str]]:
    expected: dict[int, tuple[str, str]] = {}
    for anchor in anchors:
        for offset, digest in enumerate(anchor.row_digests):
            expected.setdefault(anchor.digests_from + offset, (digest, anchor.key))
        expected[anchor.sequence] = (anchor.hash, anchor.key)
    return expected


# -- the two operations -------------------------------------------------------------


def _tenant_of_chain(conn: Connection) -> UUID:
    """The tenant whose chain ``conn``'s queries read, asked of the database in the same
    transaction, so the anchors used are that chain's however its tenant was set."""
    return tenant_id(run(conn, _chain_tenant))


def write_anchor(
    conn: Connection,
    storage: Storage,
    *,
    retention_days: int = DEFAULT_RETENTION_DAYS,
    retention_mode: RetentionMode = "COMPLIANCE",
) -> AnchorResult | None:
    """Anchor the head of the transaction's tenant's chain now; None when it is empty.

    The anchor goes among that tenant's anchors (:func:`anchor_prefix`):
    run it in ``db.transaction(tenant=...)`` to anchor a tenant's chain.

    The rows since the previous anchor are recomputed and linked to it
    first: IntegrityError (and nothing written) when the chain no longer
    extends that anchor. On S3 with Object Lock enabled on the bucket the
    anchor gets ``retention_mode`` retention for ``retention_days`` (unless
    the bucket has a default retention, which then applies).
    """
    if isinstance(retention_days, bool) or not isinstance(retention_days, int):
        raise InvalidInput("retention_days must be an integer", field="retention_days")
    if not 1 <= retention_days <= 36_500:
        raise InvalidInput(
            f"retention_days must be 1 to 36500, got {retention_days}",
            field="retention_days",
            value=retention_days,
        )
    if retention_mode not in ("GOVERNANCE", "COMPLIANCE"):
        raise InvalidInput(
            f"retention_mode must be GOVERNANCE or COMPLIANCE, got {bounded_repr(retention_mode)}",
            field="retention_mode",
            value=retention_mode,
        )
    tenant = _tenant_of_chain(conn)
    head = run(conn, _head)
    if head is None:
        return None
    head_seq, head_hash, head_time = head.seq, head.hash, head.created_at
    anchors, bad = _latest_anchors(storage, tenant, 1)
    if bad:
        raise IntegrityError(f"refusing to anchor: {bad[0].message}; run toolkit audit verify")
    previous = anchors[-1] if anchors else None
    if previous is not None and previous.sequence > head_seq:
        raise IntegrityError(
            f"refusing to anchor: anchor {previous.key} records seq {previous.sequence} but the "
            f"chain ends at seq {head_seq} (truncated); run toolkit audit verify"
        )
    walk = _Walk(
        _expectations(anchors),
        retention_anchors_by_seq(run(conn, RETENTION_ANCHORS)),
        keep_digests=MAX_ROW_DIGESTS,
    )
    start = previous.sequence - 1 if previous else 0
    walk.run(conn, start, head_seq, None if previous else b"")
    problem = (
        walk.broken or walk.contradicted or walk.bad_retention or _mismatch_finding(conn, walk)
    )
    if problem is None and walk.last_seq != head_seq:
        problem = Finding(FindingKind.BROKEN_LINK, head_seq, "the head row vanished while read")
    if problem is not None:
        raise IntegrityError(f"refusing to anchor: {problem}; run toolkit audit verify")
    anchored = previous.sequence if previous else 0
    since = [(seq, digest) for seq, digest in walk.digests if seq > anchored]
    anchor = Anchor(
        sequence=head_seq,
        hash=bytes(head_hash).hex(),
        event_time=head_time,
        anchored_at=datetime.now(UTC),
        digests_from=since[0][0] if since else head_seq,
        row_digests=tuple(digest.hex()[:DIGEST_HEX_CHARS] for _, digest in since),
    )
    stored = store_anchor(storage, anchor, tenant=tenant)
    return AnchorResult(stored, _protect(storage, stored.key, retention_days, retention_mode))


def verify(conn: Connection, storage: Storage, *, latest: int | None = None) -> AnchorReport:
    """Check the transaction's tenant's chain in Python against that tenant's anchors
    (the newest ``latest``, or all); run it in ``db.transaction(tenant=...)`` for a tenant.

    Every row's hash is recomputed here and its link checked; every anchored
    sequence must still exist with the hash recorded.
    """
    if latest is not None and (isinstance(latest, bool) or not isinstance(latest, int)):
        raise InvalidInput("latest must be an integer or None", field="latest")
    anchors, findings = _latest_anchors(storage, _tenant_of_chain(conn), latest)
    expected = _expectations(anchors)
    retained = retention_anchors_by_seq(run(conn, RETENTION_ANCHORS))
    walk = _Walk(expected, retained)
    walk.run(conn, 0, 2**63 - 1, b"")
    contradiction = _retention_contradiction(retained, expected)
    for found in (
        walk.contradicted,
        walk.broken,
        walk.bad_retention or contradiction,
        _mismatch_finding(conn, walk),
    ):
        if found is not None:
            findings.append(found)
    newest = anchors[-1] if anchors else None
    # With every row dropped by retention, the chain ends at its newest retention anchor.
    chain_end = max(walk.last_seq, max(retained, default=0))
    if newest is not None and newest.sequence > chain_end:
        findings.append(
            Finding(
                FindingKind.TRUNCATED,
                chain_end + 1,
                f"anchor {newest.key} records seq {newest.sequence}, but the chain ends at seq "
                f"{chain_end}: rows {chain_end + 1}..{newest.sequence} were deleted",
            )
        )
    if newest is None:
        findings.append(
            Finding(
                FindingKind.UNANCHORED,
                None,
                "no readable anchor in the anchor store: nothing outside the database vouches "
                "for the chain (run toolkit audit anchor)",
            )
        )
    return AnchorReport(
        rows_checked=walk.checked,
        head_sequence=walk.last_seq,
        anchors_checked=len(anchors),
        newest_anchor_sequence=newest.sequence if newest else None,
        findings=tuple(findings),
        dropped_by_retention=walk.dropped,
    )


def _retention_contradiction(
    retained: dict[int, bytes], expected: dict[int, tuple[str, str]]
) -> Finding | None:
    """The first retention anchor whose hash is not what an external anchor recorded for
    its sequence (the rows themselves may be gone: the external anchor still knows)."""
    for seq in sorted(retained):
        recorded = expected.get(seq)
        if recorded is not None and not retained[seq].hex().startswith(recorded[0]):
            return Finding(
                FindingKind.BAD_RETENTION_ANCHOR,
                seq,
                f"the retention anchor of seq {seq} records a hash that anchor {recorded[1]} "
                "does not: the retention anchor was forged",
            )
    return None


def anchor_store_url(settings: Settings) -> str:
    """``TOOLKIT_AUDIT_ANCHOR_URL``, else ``TOOLKIT_STORAGE_URL`` (keys :func:`anchor_prefix`)."""
    return settings.audit_anchor_url or settings.storage_url


__all__ = [
    "ANCHOR_PREFIX",
    "Anchor",
    "AnchorReport",
    "AnchorResult",
    "ChainRow",
    "Finding",
    "FindingKind",
    "anchor_keys",
    "anchor_prefix",
    "anchor_store_url",
    "event_hash",
    "read_anchor",
    "store_anchor",
    "verify",
    "write_anchor",
]

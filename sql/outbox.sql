-- The transactional outbox: messages written with the change they announce,
-- published by a relay and marked sent only after the broker confirmed them.

-- name: outbox.enqueue :exec
-- Add one message to the outbox, in the caller's transaction.
-- As :tenant_id when given (a sweep by a role the policies do not bind
-- re-enqueues each row's own tenant; for a role they bind, WITH CHECK refuses
-- any other than the transaction's), else the transaction's tenant.
INSERT INTO outbox (id, tenant_id, queue, message_type, body, headers)
VALUES (
    :id, coalesce(:tenant_id::uuid, (SELECT toolkit_tenant_or_default())),
    :queue, :message_type, :body, :headers
);

-- name: outbox.enqueue_many :exec
-- Add many messages in the caller's transaction, one array per column.
-- They take the transaction's tenant (the column default's, computed once per
-- statement rather than per row), and their seq, the claim order, in the
-- arrays' order. Not COPY: COPY FROM is refused on a table under row level
-- security for a role the policies bind.
INSERT INTO outbox (id, queue, message_type, body, tenant_id)
SELECT
    batch.id, batch.queue, batch.message_type, batch.body,
    (SELECT toolkit_tenant_or_default()) AS tenant_id
FROM
    unnest(:ids::uuid[], :queues::text[], :message_types::text[], :bodies::jsonb[])
    WITH ORDINALITY AS batch (id, queue, message_type, body, position)
ORDER BY batch.position;

-- name: outbox.claim :many
-- Lock up to :limit unsent, due messages; concurrent relays skip locked rows.
-- tenant: all
-- The relay's queries (claim, mark_sent, mark_failed, prune) name no tenant:
-- the relay publishes every tenant's messages, as a role that bypasses the
-- policies (toolkit_relay, migration 0009); a role they bind sees its own.
-- Each message carries its row's tenant_id in its x-tenant-id header.
-- Empty headers come back NULL: nothing to parse for most rows.
SELECT
    id, tenant_id, queue, message_type, body::text AS body, attempts, created_at,
    nullif(headers, '{}'::jsonb) AS headers
FROM outbox
WHERE sent_at IS NULL AND available_at <= now()
ORDER BY seq
LIMIT :limit
FOR UPDATE SKIP LOCKED;

-- name: outbox.mark_sent :exec
-- Mark messages the broker confirmed as sent.
-- tenant: all
UPDATE outbox SET sent_at = now()
WHERE id = any(:ids::uuid[]) AND sent_at IS NULL;

-- name: outbox.mark_failed :exec
-- Record a failed publish and hold the messages back for :delay_seconds.
-- tenant: all
UPDATE outbox
SET
    attempts = attempts + 1,
    last_error = left(:error, 2000),
    available_at = now() + make_interval(secs => :delay_seconds)
WHERE id = any(:ids::uuid[]) AND sent_at IS NULL;

-- name: outbox.prune :exec
-- Delete up to :limit messages sent more than :retention_seconds ago.
-- tenant: all
DELETE FROM outbox
WHERE id IN (
    SELECT id FROM outbox
    WHERE sent_at < now() - make_interval(secs => :retention_seconds)
    ORDER BY sent_at
    LIMIT :limit
);

-- name: outbox.stats :one
-- How many messages wait, how many were sent, and the oldest wait.
SELECT
    count(*) FILTER (WHERE sent_at IS NULL) AS pending,
    count(*) FILTER (WHERE sent_at IS NOT NULL) AS sent,
    count(*) FILTER (WHERE sent_at IS NULL AND attempts > 0) AS failing,
    min(created_at) FILTER (WHERE sent_at IS NULL) AS oldest_pending_at
FROM outbox
WHERE tenant_id = (SELECT toolkit_tenant_or_default());

-- name: outbox.get :one
-- Fetch one outbox message by id (its message_id).
SELECT
    id, queue, message_type, body::text AS body, headers, attempts, last_error,
    available_at, sent_at, created_at
FROM outbox
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id;

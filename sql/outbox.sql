-- The transactional outbox: messages written with the change they announce,
-- published by a relay and marked sent only after the broker confirmed them.

-- name: outbox.enqueue :exec
-- Add one message to the outbox, in the caller's transaction.
INSERT INTO outbox (id, queue, message_type, body, headers)
VALUES (:id, :queue, :message_type, :body, :headers);

-- name: outbox.enqueue_many :copy
-- Add many messages at once (COPY), in the caller's transaction.
COPY outbox (id, queue, message_type, body, headers) FROM STDIN;

-- name: outbox.claim :many
-- Lock up to :limit unsent, due messages; concurrent relays skip locked rows.
SELECT
    id, queue, message_type, body::text AS body, headers, attempts, created_at
FROM outbox
WHERE sent_at IS NULL AND available_at <= now()
ORDER BY seq
LIMIT :limit
FOR UPDATE SKIP LOCKED;

-- name: outbox.mark_sent :exec
-- Mark messages the broker confirmed as sent.
UPDATE outbox SET sent_at = now()
WHERE id = any(:ids::uuid[]) AND sent_at IS NULL;

-- name: outbox.mark_failed :exec
-- Record a failed publish and hold the messages back for :delay_seconds.
UPDATE outbox
SET
    attempts = attempts + 1,
    last_error = left(:error, 2000),
    available_at = now() + make_interval(secs => :delay_seconds)
WHERE id = any(:ids::uuid[]) AND sent_at IS NULL;

-- name: outbox.prune :exec
-- Delete up to :limit messages sent more than :retention_seconds ago.
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
FROM outbox;

-- name: outbox.get :one
-- Fetch one outbox message by id (its message_id).
SELECT
    id, queue, message_type, body::text AS body, headers, attempts, last_error,
    available_at, sent_at, created_at
FROM outbox
WHERE id = :id;

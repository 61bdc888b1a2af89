-- The consumers' inbox: the messages each consumer applied, recorded in the
-- transaction of the effect so a redelivered message changes nothing.

-- name: inbox.record :returning
-- Record that :consumer applied :message_id; no row if it already had.
INSERT INTO inbox (consumer, message_id, queue)
VALUES (:consumer, :message_id, :queue)
ON CONFLICT (consumer, message_id) DO NOTHING
RETURNING consumer, message_id, queue, received_at;

-- name: inbox.seen :scalar
-- Whether :consumer already applied :message_id.
SELECT count(*) > 0 AS seen
FROM inbox
WHERE consumer = :consumer AND message_id = :message_id;

-- name: inbox.prune :exec
-- Forget up to :limit entries older than :retention_seconds.
DELETE FROM inbox AS i
USING (
    SELECT consumer, message_id FROM inbox
    WHERE received_at < now() - make_interval(secs => :retention_seconds)
    ORDER BY received_at
    LIMIT :limit
) AS old
WHERE i.consumer = old.consumer AND i.message_id = old.message_id;

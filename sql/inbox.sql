-- The consumers' inbox: the messages each consumer applied, recorded in the
-- transaction of the effect so a redelivered message changes nothing.

-- name: inbox.record :returning
-- Record that :consumer applied :message_id; no row if it already had.
INSERT INTO inbox (consumer, message_id, queue)
VALUES (:consumer, :message_id, :queue)
ON CONFLICT (tenant_id, consumer, message_id) DO NOTHING
RETURNING consumer, message_id, queue, received_at;

-- name: inbox.seen :scalar
-- Whether :consumer already applied :message_id.
SELECT count(*) > 0 AS seen
FROM inbox
WHERE
    tenant_id = (SELECT toolkit_tenant_or_default())
    AND consumer = :consumer AND message_id = :message_id;

-- name: inbox.prune :exec
-- Forget up to :limit entries older than :retention_seconds.
-- tenant: all
-- A sweep: a role the policies do not bind forgets every tenant's entries.
DELETE FROM inbox AS i
USING (
    SELECT tenant_id, consumer, message_id FROM inbox
    WHERE received_at < now() - make_interval(secs => :retention_seconds)
    ORDER BY received_at
    LIMIT :limit
) AS old
WHERE
    i.tenant_id = old.tenant_id AND i.consumer = old.consumer
    AND i.message_id = old.message_id;

-- The consumers' inbox: the messages each consumer applied, recorded in the
-- transaction of the effect so a redelivered message changes nothing.
-- Partitioned by the message's creation time (migration 0012); retention is
-- a partition drop by `toolkit maintain`, never a DELETE.

-- name: inbox.record :scalar
-- Record that :consumer applied :message_id, false if it already had.
-- Finds a record whatever creation time it was made with; no partition
-- for :created_at fails the insert (SQLSTATE 23514).
SELECT toolkit_inbox_record(
    :consumer, :message_id::uuid, :queue, :created_at::timestamptz
) AS recorded;

-- name: inbox.seen :scalar
-- Whether :consumer already applied :message_id (in any partition kept).
SELECT count(*) > 0 AS seen
FROM inbox
WHERE
    tenant_id = (SELECT toolkit_tenant_or_default())
    AND consumer = :consumer AND message_id = :message_id;

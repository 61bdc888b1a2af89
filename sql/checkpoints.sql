-- Checkpoints: immutable snapshots of an execution's state, appended with a
-- monotonic sequence per execution.

-- name: checkpoints.append :returning
-- Append a checkpoint; an existing (execution, sequence) is left as it is.
INSERT INTO checkpoints (execution_id, sequence, parent_id, state, metadata)
VALUES (:execution_id, :sequence, :parent_id, :state, :metadata)
ON CONFLICT (tenant_id, execution_id, sequence) DO NOTHING
RETURNING id, execution_id, sequence, parent_id, state, metadata, created_at;

-- name: checkpoints.get :one
-- Fetch one checkpoint by id.
SELECT id, execution_id, sequence, parent_id, state, metadata, created_at
FROM checkpoints
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id;

-- name: checkpoints.get_at :optional
-- Fetch the checkpoint of an execution at a sequence number.
SELECT id, execution_id, sequence, parent_id, state, metadata, created_at
FROM checkpoints
WHERE
    tenant_id = (SELECT toolkit_tenant_or_default())
    AND execution_id = :execution_id
    AND sequence = :sequence;

-- name: checkpoints.latest :optional
-- Fetch the checkpoint with the highest sequence of an execution.
SELECT id, execution_id, sequence, parent_id, state, metadata, created_at
FROM checkpoints
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND execution_id = :execution_id
ORDER BY sequence DESC
LIMIT 1;

-- name: checkpoints.history :many
-- A page of an execution's checkpoints after a sequence, oldest first.
SELECT id, execution_id, sequence, parent_id, state, metadata, created_at
FROM checkpoints
WHERE
    tenant_id = (SELECT toolkit_tenant_or_default())
    AND execution_id = :execution_id
    AND sequence > :after_sequence
ORDER BY sequence
LIMIT :limit;

-- name: checkpoints.count :scalar
-- Count the checkpoints of an execution.
SELECT count(*)
FROM checkpoints
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND execution_id = :execution_id;

-- name: checkpoints.prune :exec
-- Delete all but the newest :keep checkpoints of an execution.
DELETE FROM checkpoints
WHERE
    tenant_id = (SELECT toolkit_tenant_or_default())
    AND execution_id = :execution_id
    AND sequence < (
        SELECT coalesce(min(kept.sequence), 2147483647)
        FROM (
            SELECT sequence FROM checkpoints
            WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND execution_id = :execution_id
            ORDER BY sequence DESC
            LIMIT :keep
        ) AS kept
    );

-- Audit events: the append-only, hash-chained log of changes. A trigger
-- assigns seq, prev_hash and hash; UPDATE, DELETE and TRUNCATE are refused.

-- name: audit_events.record :one
-- Append one audit event and return it.
INSERT INTO audit_events (actor_id, action, entity, entity_id, details, prev_hash, hash)
VALUES (:actor_id, :action, :entity, :entity_id, :details, '\x', '\x')
RETURNING id, seq, actor_id, action, entity, entity_id, details, created_at;

-- name: audit_events.get :one
-- Fetch one audit event by id.
SELECT id, seq, actor_id, action, entity, entity_id, details, created_at
FROM audit_events
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id;

-- name: audit_events.list :many
-- A keyset page of audit events, optionally filtered by entity and actor.
-- sort: created_at timestamptz
SELECT id, seq, actor_id, action, entity, entity_id, details, created_at
FROM audit_events
WHERE
    tenant_id = (SELECT toolkit_tenant_or_default())
    AND (:entity::text IS NULL OR entity = :entity)
    AND (:entity_id::uuid IS NULL OR entity_id = :entity_id)
    AND (:actor_id::uuid IS NULL OR actor_id = :actor_id)
    AND {keyset}
ORDER BY {order}
LIMIT :limit;

-- name: audit_events.count :scalar
-- Count audit events, optionally filtered by entity and actor.
SELECT count(*)
FROM audit_events
WHERE
    tenant_id = (SELECT toolkit_tenant_or_default())
    AND (:entity::text IS NULL OR entity = :entity)
    AND (:entity_id::uuid IS NULL OR entity_id = :entity_id)
    AND (:actor_id::uuid IS NULL OR actor_id = :actor_id);

-- name: audit_events.chain :many
-- A batch of the tenant's chain after a seq, with each row's recomputed hash.
SELECT
    seq, id, prev_hash, hash,
    audit_event_hash(
        prev_hash, seq, id, actor_id, action, entity, entity_id, details, created_at
    ) AS expected_hash
FROM audit_events
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND seq > :after_seq
ORDER BY seq
LIMIT :limit;

-- name: audit_events.retention_anchors :many
-- Where the tenant's chain goes on after partitions dropped by retention (migration 0013).
SELECT seq, hash, created_at, dropped_partition
FROM audit_retention_anchors
WHERE tenant_id = (SELECT toolkit_tenant_or_default())
ORDER BY seq;

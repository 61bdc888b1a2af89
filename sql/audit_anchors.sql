-- Audit anchors: what toolkit.audit_anchors reads to anchor and verify the chain.
-- The chain is per tenant: each query reads the transaction's tenant's (the
-- default tenant's without one).

-- name: audit_anchors.tenant :scalar
-- The tenant whose chain the queries below read: its anchors are kept under its name.
SELECT toolkit_tenant_or_default();

-- name: audit_anchors.head :optional
-- The newest audit event: the chain head an anchor records.
SELECT seq, hash, created_at
FROM audit_events
WHERE tenant_id = (SELECT toolkit_tenant_or_default())
ORDER BY seq DESC
LIMIT 1;

-- name: audit_anchors.rows :many
-- A batch of audit events after a sequence; details as jsonb text, which the hash covers.
SELECT
    seq, id, actor_id, action, entity, entity_id, details::text AS details,
    created_at, prev_hash, hash
FROM audit_events
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND seq > :after AND seq <= :upto
ORDER BY seq
LIMIT :limit;

-- name: audit_anchors.database_agrees :scalar
-- Diagnosis only: whether the database's audit_event_hash yields the stored hash of one row.
SELECT
    hash = audit_event_hash(
        prev_hash, seq, id, actor_id, action, entity, entity_id, details, created_at
    )
FROM audit_events
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND seq = :seq;

-- Executions: runs of a workflow.
-- Status: pending -> running -> succeeded | failed | cancelled, and
-- pending -> cancelled. Every change is a guarded UPDATE: it only matches a
-- row in an allowed status, so a race or an illegal step changes nothing.

-- name: executions.create :one
-- Insert a pending execution of a workflow and return it.
INSERT INTO executions (workflow_id, input)
VALUES (:workflow_id, :input)
RETURNING
    id, workflow_id, status, input, output, error, attempt, worker_id,
    lease_expires_at, started_at, finished_at, version, created_at, updated_at;

-- name: executions.get :one
-- Fetch one execution by id.
SELECT
    id, workflow_id, status, input, output, error, attempt, worker_id,
    lease_expires_at, started_at, finished_at, version, created_at, updated_at
FROM executions
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id;

-- name: executions.list :many
-- A keyset page of executions, optionally filtered by status and workflow.
-- sort: created_at timestamptz
SELECT
    id, workflow_id, status, input, output, error, attempt, worker_id,
    lease_expires_at, started_at, finished_at, version, created_at, updated_at
FROM executions
WHERE
    tenant_id = (SELECT toolkit_tenant_or_default())
    AND (:status::text IS NULL OR status = :status)
    AND (:workflow_id::uuid IS NULL OR workflow_id = :workflow_id)
    AND {keyset}
ORDER BY {order}
LIMIT :limit;

-- name: executions.count :scalar
-- Count executions, optionally filtered by status and workflow.
SELECT count(*)
FROM executions
WHERE
    tenant_id = (SELECT toolkit_tenant_or_default())
    AND (:status::text IS NULL OR status = :status)
    AND (:workflow_id::uuid IS NULL OR workflow_id = :workflow_id);

-- name: executions.start :returning
-- Move one pending execution to running under a worker's lease.
UPDATE executions
SET
    status = 'running',
    attempt = attempt + 1,
    worker_id = :worker_id,
    started_at = now(),
    lease_expires_at = now() + make_interval(secs => :lease_seconds)
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id AND status = 'pending'
RETURNING
    id, workflow_id, status, input, output, error, attempt, worker_id,
    lease_expires_at, started_at, finished_at, version, created_at, updated_at;

-- name: executions.claim_next :returning
-- Claim the oldest pending execution; concurrent claimers skip locked rows.
UPDATE executions AS e
SET
    status = 'running',
    attempt = e.attempt + 1,
    worker_id = :worker_id,
    started_at = now(),
    lease_expires_at = now() + make_interval(secs => :lease_seconds)
FROM (
    SELECT id FROM executions
    WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND status = 'pending'
    ORDER BY created_at, id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
) AS next
WHERE e.id = next.id
RETURNING
    e.id, e.workflow_id, e.status, e.input, e.output, e.error, e.attempt,
    e.worker_id, e.lease_expires_at, e.started_at, e.finished_at, e.version,
    e.created_at, e.updated_at;

-- name: executions.renew_lease :returning
-- Extend the lease of a running execution held by this worker.
UPDATE executions
SET lease_expires_at = now() + make_interval(secs => :lease_seconds)
WHERE
    tenant_id = (SELECT toolkit_tenant_or_default())
    AND id = :id
    AND status = 'running'
    AND worker_id = :worker_id
RETURNING
    id, workflow_id, status, input, output, error, attempt, worker_id,
    lease_expires_at, started_at, finished_at, version, created_at, updated_at;

-- name: executions.succeed :returning
-- Finish a running execution successfully with its output.
UPDATE executions
SET
    status = 'succeeded', output = :output, finished_at = now(),
    lease_expires_at = NULL
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id AND status = 'running'
RETURNING
    id, workflow_id, status, input, output, error, attempt, worker_id,
    lease_expires_at, started_at, finished_at, version, created_at, updated_at;

-- name: executions.fail :returning
-- Finish a running execution as failed with its error.
UPDATE executions
SET
    status = 'failed', error = :error, finished_at = now(),
    lease_expires_at = NULL
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id AND status = 'running'
RETURNING
    id, workflow_id, status, input, output, error, attempt, worker_id,
    lease_expires_at, started_at, finished_at, version, created_at, updated_at;

-- name: executions.cancel :returning
-- Cancel a pending or running execution.
UPDATE executions
SET status = 'cancelled', finished_at = now(), lease_expires_at = NULL
WHERE
    tenant_id = (SELECT toolkit_tenant_or_default())
    AND id = :id
    AND status IN ('pending', 'running')
RETURNING
    id, workflow_id, status, input, output, error, attempt, worker_id,
    lease_expires_at, started_at, finished_at, version, created_at, updated_at;

-- name: executions.requeue_expired :many
-- Return running executions whose lease expired (a dead worker) to pending.
-- tenant: all
-- A sweep: a role the policies do not bind requeues every tenant's; each row
-- names its tenant, whose workflow.execute message it must be.
UPDATE executions
SET status = 'pending', worker_id = NULL, lease_expires_at = NULL, started_at = NULL
WHERE
    id IN (
        SELECT id FROM executions
        WHERE status = 'running' AND lease_expires_at < now()
        ORDER BY lease_expires_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
RETURNING
    id, workflow_id, status, input, output, error, attempt, worker_id,
    lease_expires_at, started_at, finished_at, version, created_at, updated_at, tenant_id;

-- name: executions.current_status :scalar
-- The current status of an execution, to explain a refused transition.
SELECT status FROM executions WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id;

-- name: executions.delete :exec
-- Delete an execution (its checkpoints go with it).
DELETE FROM executions WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id;

-- Workflows: versioned definitions (jsonb) that executions run.
-- Status: draft -> published -> archived (a draft may be archived directly).

-- name: workflows.create :one
-- Insert a workflow as a draft and return it.
INSERT INTO workflows (owner_id, agent_id, name, description, definition)
VALUES (:owner_id, :agent_id, :name, :description, :definition)
RETURNING
    id, owner_id, agent_id, name, description, definition, status, version,
    created_at, updated_at;

-- name: workflows.get :one
-- Fetch one workflow by id.
SELECT
    id, owner_id, agent_id, name, description, definition, status, version,
    created_at, updated_at
FROM workflows
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id;

-- name: workflows.list :many
-- A keyset page of workflows, optionally filtered by status and owner.
-- sort: created_at timestamptz, name text
SELECT
    id, owner_id, agent_id, name, description, definition, status, version,
    created_at, updated_at
FROM workflows
WHERE
    tenant_id = (SELECT toolkit_tenant_or_default())
    AND (:status::text IS NULL OR status = :status)
    AND (:owner_id::uuid IS NULL OR owner_id = :owner_id)
    AND {keyset}
ORDER BY {order}
LIMIT :limit;

-- name: workflows.count :scalar
-- Count workflows, optionally filtered by status and owner.
SELECT count(*)
FROM workflows
WHERE
    tenant_id = (SELECT toolkit_tenant_or_default())
    AND (:status::text IS NULL OR status = :status)
    AND (:owner_id::uuid IS NULL OR owner_id = :owner_id);

-- name: workflows.search :many
-- Workflows whose name contains the text, case-insensitively (% and _ are literal).
SELECT
    id, owner_id, agent_id, name, description, definition, status, version,
    created_at, updated_at
FROM workflows
WHERE
    tenant_id = (SELECT toolkit_tenant_or_default())
    AND name ILIKE '%' || replace(replace(replace(:text, '\', '\\'), '%', '\%'), '_', '\_') || '%'
ORDER BY name, id
LIMIT :limit;

-- name: workflows.update :returning
-- Change the flagged fields of a workflow, only at the expected version.
UPDATE workflows
SET
    agent_id = CASE WHEN :set_agent_id THEN :agent_id ELSE agent_id END,
    name = CASE WHEN :set_name THEN :name ELSE name END,
    description = CASE WHEN :set_description THEN :description ELSE description END,
    definition = CASE WHEN :set_definition THEN :definition ELSE definition END
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id AND version = :expected_version
RETURNING
    id, owner_id, agent_id, name, description, definition, status, version,
    created_at, updated_at;

-- name: workflows.publish :returning
-- Publish a draft workflow.
UPDATE workflows
SET status = 'published'
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id AND status = 'draft'
RETURNING
    id, owner_id, agent_id, name, description, definition, status, version,
    created_at, updated_at;

-- name: workflows.archive :returning
-- Archive a draft or published workflow.
UPDATE workflows
SET status = 'archived'
WHERE
    tenant_id = (SELECT toolkit_tenant_or_default())
    AND id = :id
    AND status IN ('draft', 'published')
RETURNING
    id, owner_id, agent_id, name, description, definition, status, version,
    created_at, updated_at;

-- name: workflows.current_version :scalar
-- The current version of a workflow, to explain a failed guarded update.
SELECT version FROM workflows WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id;

-- name: workflows.current_status :scalar
-- The current status of a workflow, to explain a refused transition.
SELECT status FROM workflows WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id;

-- name: workflows.delete :exec
-- Delete a workflow (its executions go with it).
DELETE FROM workflows WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id;

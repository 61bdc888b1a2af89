-- Agents: AI agents owned by users, with their model configuration as jsonb.

-- name: agents.create :one
-- Insert an agent and return it.
INSERT INTO agents (owner_id, name, type, description, config, is_active)
VALUES (:owner_id, :name, :type, :description, :config, :is_active)
RETURNING
    id, owner_id, name, type, description, config, is_active, version,
    created_at, updated_at;

-- name: agents.create_many :exec
-- Insert many agents, one array per column (ids and times from defaults).
-- Not COPY: COPY FROM is refused on a table under row level security for a
-- role the policies bind. The tenant is the column default's, computed once
-- per statement (an InitPlan) rather than by the default's call per row.
INSERT INTO agents (owner_id, name, type, description, config, is_active, tenant_id)
SELECT
    batch.owner_id, batch.name, batch.type, batch.description, batch.config, batch.is_active,
    (SELECT toolkit_tenant_or_default()) AS tenant_id
FROM unnest(
    :owner_ids::uuid[], :names::text[], :types::text[], :descriptions::text[],
    :configs::jsonb[], :is_active::boolean[]
) AS batch (owner_id, name, type, description, config, is_active);

-- name: agents.get :one
-- Fetch one agent by id.
-- route: replica
SELECT
    id, owner_id, name, type, description, config, is_active, version,
    created_at, updated_at
FROM agents
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id;

-- name: agents.list :many
-- A keyset page of agents, optionally filtered by type, activity and owner.
-- route: replica
-- sort: created_at timestamptz, name text
SELECT
    id, owner_id, name, type, description, config, is_active, version,
    created_at, updated_at
FROM agents
WHERE
    tenant_id = (SELECT toolkit_tenant_or_default())
    AND (:type::text IS NULL OR type = :type)
    AND (:is_active::boolean IS NULL OR is_active = :is_active)
    AND (:owner_id::uuid IS NULL OR owner_id = :owner_id)
    AND {keyset}
ORDER BY {order}
LIMIT :limit;

-- name: agents.count :scalar
-- Count agents, optionally filtered by type, activity and owner.
-- route: replica
SELECT count(*)
FROM agents
WHERE
    tenant_id = (SELECT toolkit_tenant_or_default())
    AND (:type::text IS NULL OR type = :type)
    AND (:is_active::boolean IS NULL OR is_active = :is_active)
    AND (:owner_id::uuid IS NULL OR owner_id = :owner_id);

-- name: agents.search :many
-- Agents whose name contains the text, case-insensitively (% and _ are literal).
SELECT
    id, owner_id, name, type, description, config, is_active, version,
    created_at, updated_at
FROM agents
WHERE
    tenant_id = (SELECT toolkit_tenant_or_default())
    AND name ILIKE '%' || replace(replace(replace(:text, '\', '\\'), '%', '\%'), '_', '\_') || '%'
ORDER BY name, id
LIMIT :limit;

-- name: agents.update :returning
-- Change the flagged fields of an agent, only at the expected version.
UPDATE agents
SET
    name = CASE WHEN :set_name THEN :name ELSE name END,
    type = CASE WHEN :set_type THEN :type ELSE type END,
    description = CASE WHEN :set_description THEN :description ELSE description END,
    config = CASE WHEN :set_config THEN :config ELSE config END,
    is_active = CASE WHEN :set_is_active THEN :is_active ELSE is_active END
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id AND version = :expected_version
RETURNING
    id, owner_id, name, type, description, config, is_active, version,
    created_at, updated_at;

-- name: agents.current_version :scalar
-- The current version of an agent, to explain a failed guarded update.
SELECT version FROM agents WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id;

-- name: agents.delete :exec
-- Delete an agent (its sessions go with it).
DELETE FROM agents WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id;

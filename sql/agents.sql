-- Agents: AI agents owned by users, with their model configuration as jsonb.

-- name: agents.create :one
-- Insert an agent and return it.
INSERT INTO agents (owner_id, name, type, description, config, is_active)
VALUES (:owner_id, :name, :type, :description, :config, :is_active)
RETURNING
    id, owner_id, name, type, description, config, is_active, version,
    created_at, updated_at;

-- name: agents.copy :copy
-- Bulk-load agents through COPY (ids and timestamps from their defaults).
COPY agents (owner_id, name, type, description, config, is_active) FROM STDIN;

-- name: agents.get :one
-- Fetch one agent by id.
SELECT
    id, owner_id, name, type, description, config, is_active, version,
    created_at, updated_at
FROM agents
WHERE id = :id;

-- name: agents.list :many
-- A keyset page of agents, optionally filtered by type, activity and owner.
-- sort: created_at timestamptz, name text
SELECT
    id, owner_id, name, type, description, config, is_active, version,
    created_at, updated_at
FROM agents
WHERE
    (:type::text IS NULL OR type = :type)
    AND (:is_active::boolean IS NULL OR is_active = :is_active)
    AND (:owner_id::uuid IS NULL OR owner_id = :owner_id)
    AND {keyset}
ORDER BY {order}
LIMIT :limit;

-- name: agents.count :scalar
-- Count agents, optionally filtered by type, activity and owner.
SELECT count(*)
FROM agents
WHERE
    (:type::text IS NULL OR type = :type)
    AND (:is_active::boolean IS NULL OR is_active = :is_active)
    AND (:owner_id::uuid IS NULL OR owner_id = :owner_id);

-- name: agents.search :many
-- Agents whose name contains the text, case-insensitively (% and _ are literal).
SELECT
    id, owner_id, name, type, description, config, is_active, version,
    created_at, updated_at
FROM agents
WHERE name ILIKE '%' || replace(replace(replace(:text, '\', '\\'), '%', '\%'), '_', '\_') || '%'
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
WHERE id = :id AND version = :expected_version
RETURNING
    id, owner_id, name, type, description, config, is_active, version,
    created_at, updated_at;

-- name: agents.current_version :scalar
-- The current version of an agent, to explain a failed guarded update.
SELECT version FROM agents WHERE id = :id;

-- name: agents.delete :exec
-- Delete an agent (its sessions go with it).
DELETE FROM agents WHERE id = :id;

-- Sessions: a user's conversation with an agent, with jsonb state and an
-- expiry that touch() extends.

-- name: sessions.create :one
-- Open a session that expires after :ttl_seconds.
INSERT INTO sessions (user_id, agent_id, title, state, expires_at)
VALUES (
    :user_id, :agent_id, :title, :state,
    now() + make_interval(secs => :ttl_seconds)
)
RETURNING
    id, user_id, agent_id, title, state, expires_at, ended_at, version,
    created_at, updated_at;

-- name: sessions.get :one
-- Fetch one session by id.
SELECT
    id, user_id, agent_id, title, state, expires_at, ended_at, version,
    created_at, updated_at
FROM sessions
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id;

-- name: sessions.list :many
-- A keyset page of sessions, optionally filtered by user and agent.
-- sort: created_at timestamptz
SELECT
    id, user_id, agent_id, title, state, expires_at, ended_at, version,
    created_at, updated_at
FROM sessions
WHERE
    tenant_id = (SELECT toolkit_tenant_or_default())
    AND (:user_id::uuid IS NULL OR user_id = :user_id)
    AND (:agent_id::uuid IS NULL OR agent_id = :agent_id)
    AND {keyset}
ORDER BY {order}
LIMIT :limit;

-- name: sessions.count :scalar
-- Count sessions, optionally filtered by user and agent.
SELECT count(*)
FROM sessions
WHERE
    tenant_id = (SELECT toolkit_tenant_or_default())
    AND (:user_id::uuid IS NULL OR user_id = :user_id)
    AND (:agent_id::uuid IS NULL OR agent_id = :agent_id);

-- name: sessions.search :many
-- Sessions whose title contains the text, case-insensitively (% and _ are literal).
SELECT
    id, user_id, agent_id, title, state, expires_at, ended_at, version,
    created_at, updated_at
FROM sessions
WHERE
    tenant_id = (SELECT toolkit_tenant_or_default())
    AND title ILIKE '%' || replace(replace(replace(:text, '\', '\\'), '%', '\%'), '_', '\_') || '%'
ORDER BY title, id
LIMIT :limit;

-- name: sessions.update :returning
-- Change the flagged fields of a live session, only at the expected version.
UPDATE sessions
SET
    title = CASE WHEN :set_title THEN :title ELSE title END,
    state = CASE WHEN :set_state THEN :state ELSE state END
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id AND version = :expected_version
RETURNING
    id, user_id, agent_id, title, state, expires_at, ended_at, version,
    created_at, updated_at;

-- name: sessions.current_version :scalar
-- The current version of a session, to explain a failed guarded update.
SELECT version FROM sessions WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id;

-- name: sessions.touch :returning
-- Extend a live session's expiry to :ttl_seconds from now.
UPDATE sessions
SET expires_at = now() + make_interval(secs => :ttl_seconds)
WHERE
    tenant_id = (SELECT toolkit_tenant_or_default())
    AND id = :id
    AND ended_at IS NULL
    AND expires_at > now()
RETURNING
    id, user_id, agent_id, title, state, expires_at, ended_at, version,
    created_at, updated_at;

-- name: sessions.end :returning
-- End a session that has not ended yet.
UPDATE sessions
SET ended_at = now()
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id AND ended_at IS NULL
RETURNING
    id, user_id, agent_id, title, state, expires_at, ended_at, version,
    created_at, updated_at;

-- name: sessions.current_state :optional
-- Why a session refused a change: its version, expiry and end.
SELECT id, version, expires_at, ended_at, expires_at <= now() AS expired
FROM sessions
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id;

-- name: sessions.purge_expired :exec
-- Delete sessions that expired before now, at most :limit at a time.
-- tenant: all
DELETE FROM sessions
WHERE id IN (
    SELECT id FROM sessions
    WHERE expires_at < now()
    ORDER BY expires_at
    LIMIT :limit
);

-- name: sessions.delete :exec
-- Delete a session.
DELETE FROM sessions WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id;

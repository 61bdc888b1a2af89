-- Files: metadata of stored objects; the bytes live in the configured Storage.

-- name: files.create :one
-- Record a file whose bytes wait at their staging key.
INSERT INTO files (
    id, owner_id, purpose, key, original_name, size, content_type, claimed_type,
    sha256, execution_id, session_id
)
VALUES (
    :id, :owner_id, :purpose, :key, :original_name, :size, :content_type, :claimed_type,
    :sha256, :execution_id, :session_id
)
RETURNING
    id, owner_id, purpose, key, original_name, size, content_type, claimed_type,
    sha256, status, execution_id, session_id, created_at, stored_at;

-- name: files.get :one
-- Fetch one file by id.
SELECT
    id, owner_id, purpose, key, original_name, size, content_type, claimed_type,
    sha256, status, execution_id, session_id, created_at, stored_at
FROM files
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id;

-- name: files.get_many :many
-- The files among the given ids (to reconcile staged objects).
SELECT
    id, owner_id, purpose, key, original_name, size, content_type, claimed_type,
    sha256, status, execution_id, session_id, created_at, stored_at
FROM files
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = any(:ids::uuid[])
ORDER BY id;

-- name: files.existing_keys :many
-- The files among the given keys (to find orphaned objects).
SELECT
    id, owner_id, purpose, key, original_name, size, content_type, claimed_type,
    sha256, status, execution_id, session_id, created_at, stored_at
FROM files
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND key = any(:keys::text[])
ORDER BY key;

-- name: files.list :many
-- A keyset page of files, optionally filtered by owner, purpose, execution and session.
-- sort: created_at timestamptz
SELECT
    id, owner_id, purpose, key, original_name, size, content_type, claimed_type,
    sha256, status, execution_id, session_id, created_at, stored_at
FROM files
WHERE
    tenant_id = (SELECT toolkit_tenant_or_default())
    AND (:owner_id::uuid IS NULL OR owner_id = :owner_id)
    AND (:purpose::text IS NULL OR purpose = :purpose)
    AND (:execution_id::uuid IS NULL OR execution_id = :execution_id)
    AND (:session_id::uuid IS NULL OR session_id = :session_id)
    AND {keyset}
ORDER BY {order}
LIMIT :limit;

-- name: files.mark_stored :returning
-- Mark a staged file as stored, once its bytes are at their final key.
UPDATE files
SET status = 'stored', stored_at = now()
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id AND status = 'staged'
RETURNING
    id, owner_id, purpose, key, original_name, size, content_type, claimed_type,
    sha256, status, execution_id, session_id, created_at, stored_at;

-- name: files.staged_before :many
-- Staged files older than the grace period, whose promotion the sweep finishes.
SELECT
    id, owner_id, purpose, key, original_name, size, content_type, claimed_type,
    sha256, status, execution_id, session_id, created_at, stored_at
FROM files
WHERE
    tenant_id = (SELECT toolkit_tenant_or_default())
    AND status = 'staged'
    AND created_at < now() - make_interval(secs => :grace_seconds)
ORDER BY created_at, id
LIMIT :limit;

-- name: files.delete :returning
-- Delete a file's row and return it, so its bytes can be removed after commit.
DELETE FROM files
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND id = :id
RETURNING
    id, owner_id, purpose, key, original_name, size, content_type, claimed_type,
    sha256, status, execution_id, session_id, created_at, stored_at;

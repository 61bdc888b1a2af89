-- Memberships: which users belong to which tenant (migration 0009). Users
-- are shared identities; a tenant sees the users with a membership in it,
-- and its rows (agents, workflows, sessions, files) may name only those.
-- users.create makes the new user's membership in the transaction's tenant;
-- these add an existing user to it, and remove one from it.

-- name: memberships.add :one
-- Add an existing user to the current tenant and return the membership.
-- The user's key is checked at COMMIT (deferred: create_user() writes the
-- membership before its user).
INSERT INTO memberships (user_id)
VALUES (:user_id)
RETURNING tenant_id, user_id, created_at;

-- name: memberships.list :many
-- A page of the current tenant's memberships after a user id, in user id order.
SELECT tenant_id, user_id, created_at
FROM memberships
WHERE
    tenant_id = (SELECT toolkit_tenant_or_default())
    AND (:after_user_id::uuid IS NULL OR user_id > :after_user_id)
ORDER BY user_id
LIMIT :limit;

-- name: memberships.remove :exec
-- Remove the user :id from the current tenant, with their rows in it.
-- Their agents, workflows (with executions), sessions and files of this
-- tenant go with the membership; the user and their other tenants stay.
DELETE FROM memberships
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND user_id = :id;

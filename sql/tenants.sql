-- Tenants: the workspaces every tenant-owned row belongs to (migration 0009).
-- Row level security shows a tenant only its own row and lets it rename only
-- that; a tenant is created by inserting the row of the tenant the
-- transaction is set to (sign-up). An operator's connection, which the
-- policies do not bind, sees every tenant. Deleting one is an operator's act.

-- name: tenants.create :one
-- Insert a tenant and return it.
-- Without an id: the transaction's tenant, or a new id on a connection without one.
INSERT INTO tenants (id, name)
VALUES (
    coalesce(
        :id::uuid,
        nullif(current_setting('toolkit.tenant_id', TRUE), '')::uuid,
        gen_random_uuid()
    ),
    :name
)
RETURNING id, name, created_at;

-- name: tenants.get :one
-- Fetch one tenant by id.
SELECT id, name, created_at
FROM tenants
WHERE id = :id;

-- name: tenants.list :many
-- A keyset page of the tenants the caller sees.
-- sort: created_at timestamptz, name text
SELECT id, name, created_at
FROM tenants
WHERE {keyset}
ORDER BY {order}
LIMIT :limit;

-- name: tenants.count :scalar
-- Count the tenants the caller sees.
SELECT count(*)
FROM tenants;

-- name: tenants.rename :one
-- Give a tenant a new name and return it.
UPDATE tenants
SET name = :name
WHERE id = :id
RETURNING id, name, created_at;

-- Users: people who use the platform. Ordinary reads never select
-- password_hash; only users.get_credentials does, for authentication
-- (through user_credentials(), the only reader the application role has).
-- Users are shared by tenants: a tenant sees and updates the users with a
-- membership in it (migration 0009), and creating a user makes its
-- membership in the transaction's tenant.

-- name: users.create :one
-- Insert a user and its membership in the current tenant, and return it.
-- (The default tenant without one; email is unique, case-insensitively.)
SELECT id, email, display_name, role, is_active, version, created_at, updated_at
FROM create_user(:email, :display_name, :role, :is_active, :password_hash);

-- name: users.get :one
-- Fetch one user by id.
SELECT id, email, display_name, role, is_active, version, created_at, updated_at
FROM users
WHERE id = :id;

-- name: users.get_by_email :optional
-- Fetch the user with this email, compared case-insensitively.
SELECT id, email, display_name, role, is_active, version, created_at, updated_at
FROM users
WHERE lower(email) = lower(:email);

-- name: users.get_credentials :optional
-- What authentication needs for an email: id, password hash, active flag.
-- The application role cannot select password_hash from users (migration
-- 0007): this security-definer function is the one way to read it, one
-- exact email per call.
SELECT id, email, password_hash, is_active
FROM user_credentials(:email);

-- name: users.list :many
-- A keyset page of users, optionally filtered by role and active flag.
-- sort: created_at timestamptz, email text
SELECT id, email, display_name, role, is_active, version, created_at, updated_at
FROM users
WHERE
    (:role::text IS NULL OR role = :role)
    AND (:is_active::boolean IS NULL OR is_active = :is_active)
    AND {keyset}
ORDER BY {order}
LIMIT :limit;

-- name: users.count :scalar
-- Count users, optionally filtered by role and active flag.
SELECT count(*)
FROM users
WHERE
    (:role::text IS NULL OR role = :role)
    AND (:is_active::boolean IS NULL OR is_active = :is_active);

-- name: users.search :many
-- Users whose email or display name contains the text (% and _ are literal).
SELECT id, email, display_name, role, is_active, version, created_at, updated_at
FROM users
WHERE
    display_name ILIKE '%' || replace(replace(replace(:text, '\', '\\'), '%', '\%'), '_', '\_')
    || '%'
    OR email ILIKE '%' || replace(replace(replace(:text, '\', '\\'), '%', '\%'), '_', '\_')
    || '%'
ORDER BY display_name, id
LIMIT :limit;

-- name: users.update :returning
-- Change the flagged fields of a user, only at the expected version.
UPDATE users
SET
    email = CASE WHEN :set_email THEN :email ELSE email END,
    display_name = CASE WHEN :set_display_name THEN :display_name ELSE display_name END,
    role = CASE WHEN :set_role THEN :role ELSE role END,
    is_active = CASE WHEN :set_is_active THEN :is_active ELSE is_active END
WHERE id = :id AND version = :expected_version
RETURNING
    id, email, display_name, role, is_active, version, created_at, updated_at;

-- name: users.set_password_hash :scalar
-- Replace a user's password hash (None clears it); true if the user exists.
-- The application role cannot UPDATE password_hash (migration 0008): this
-- security-definer function is the one way to change it.
SELECT set_user_password_hash(:id, :password_hash);

-- name: users.current_version :scalar
-- The current version of a user, to explain a failed guarded update.
SELECT version FROM users WHERE id = :id;

-- name: users.delete :exec
-- Delete a user everywhere (their agents, workflows and sessions go with them).
-- A role the policies bind deletes nothing: it would reach other tenants' rows.
DELETE FROM users WHERE id = :id;

-- Least privilege for the application role (toolkit_app): audit events can
-- be read and appended but never changed, nobody but the owner creates
-- objects in public, and the password hash is readable only through
-- user_credentials(), so a bug in any other query cannot leak it.
-- Runs as the migration owner, which must own the tables and the public
-- schema (PostgreSQL 15+ gives the schema to the database owner; on 13 and
-- 14 it belongs to the bootstrap superuser: see the check below).
-- depends: 0006.langgraph-checkpoints

-- The trigger already refuses these; now the privileges do too.
REVOKE UPDATE, DELETE ON audit_events FROM toolkit_app;

-- PostgreSQL 13 and 14 let every role create objects in public (a trojan
-- function or table shadowing a name); 15 already does not.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;  -- noqa: CP02

DO $$
BEGIN
    IF EXISTS (
        SELECT 1
        FROM pg_namespace AS n,
            aclexplode(n.nspacl) AS acl
        WHERE
            n.nspname = 'public'
            AND acl.grantee = 0
            AND acl.privilege_type = 'CREATE'
    ) THEN
        -- A REVOKE by a role that does not own the schema only warns.
        RAISE EXCEPTION
        'every role may still CREATE in schema public: the migration role % does '
        'not own it; as a superuser run ALTER SCHEMA public OWNER TO % (as '
        'PostgreSQL 15 gives it to the database owner), then migrate again',
        current_user, current_user;
    END IF;
END;
$$;

-- Every column of users but password_hash. A later migration that adds a
-- column to users must grant SELECT on it here too.
REVOKE SELECT ON users FROM toolkit_app;
GRANT SELECT (
    id, email, display_name, role, is_active, version, created_at, updated_at
) ON users TO toolkit_app;

-- The one way to read the hash (sql/users.sql: users.get_credentials). It
-- runs with the owner's rights, so its search_path is fixed and every name
-- in it is qualified.
CREATE FUNCTION user_credentials(lookup_email text)
RETURNS TABLE (id uuid, email text, password_hash text, is_active boolean)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT u.id, u.email, u.password_hash, u.is_active
    FROM public.users AS u
    WHERE lower(u.email) = lower(lookup_email)
$$;
REVOKE ALL ON FUNCTION user_credentials(text) FROM PUBLIC;  -- noqa: CP02
GRANT EXECUTE ON FUNCTION user_credentials(text) TO toolkit_app;

-- The tenant functions of 0009 without their SET search_path clause, which
-- made every call save, set and restore a setting: the policies' (SELECT
-- public.toolkit_tenant()) runs once per statement, and every toolkit query
-- names its tenant with (SELECT public.toolkit_tenant_or_default()), so on a
-- short statement that cost is a measurable share (row level security
-- benchmark, list-100). Both are now plpgsql, STABLE, without SET: measured
-- per re-planned statement (the list queries are planned each time), a
-- plpgsql call without SET costs about 3 us over the bare sub-select, with
-- SET 10 to 20 us, and an inlined SQL function 20 us or more (the planner
-- parses and simplifies its body in every plan).
-- Without a pinned search_path, a name in the body would be looked up on
-- the caller's search_path when the body is compiled, in the caller's
-- session. So every name in them is schema-qualified: the function
-- (pg_catalog.current_setting), the types (pg_catalog.text,
-- pg_catalog.uuid) and the operator (OPERATOR(pg_catalog.=)).
-- tests/core/test_roles.py checks that of these two, and that every other
-- toolkit function pins its search_path.
-- Behaviour is unchanged: the same values, and TN001 without a tenant.
-- depends: 0009.tenants

-- The transaction's tenant; TN001 when none is set (unset, or '' once a
-- transaction that set one has ended). Policies call it as
-- (SELECT public.toolkit_tenant()), an InitPlan run once per statement.
CREATE OR REPLACE FUNCTION public.toolkit_tenant() RETURNS uuid
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
DECLARE
    setting constant pg_catalog.text := pg_catalog.current_setting('toolkit.tenant_id', TRUE);
BEGIN
    IF setting IS NULL OR setting OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION
            'no tenant is set for this transaction: rows of tenant-owned tables are '
            'read and written only in a tenant''s transaction'
        USING
            ERRCODE = 'TN001',
            HINT = 'run it in Database.transaction(tenant=...)';
    END IF;
    RETURN setting::pg_catalog.uuid;
END;
$$;

-- Every tenant_id's default: the transaction's tenant, else the default
-- tenant (a superuser or owner connection without one; the policies refuse
-- a role they bind that has none).
CREATE OR REPLACE FUNCTION public.toolkit_tenant_or_default() RETURNS uuid
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
DECLARE
    setting constant pg_catalog.text := pg_catalog.current_setting('toolkit.tenant_id', TRUE);
BEGIN
    IF setting IS NULL OR setting OPERATOR(pg_catalog.=) '' THEN
        RETURN '00000000-0000-0000-0000-000000000000'::pg_catalog.uuid;
    END IF;
    RETURN setting::pg_catalog.uuid;
END;
$$;

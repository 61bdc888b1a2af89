-- Reverts 0010.tenant-functions: the functions of 0009, exactly.

CREATE OR REPLACE FUNCTION public.toolkit_tenant() RETURNS uuid
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    setting constant text := pg_catalog.current_setting('toolkit.tenant_id', true);
BEGIN
    IF setting IS NULL OR setting = '' THEN
        RAISE EXCEPTION
            'no tenant is set for this transaction: rows of tenant-owned tables are '
            'read and written only in a tenant''s transaction'
        USING
            ERRCODE = 'TN001',
            HINT = 'run it in Database.transaction(tenant=...)';
    END IF;
    RETURN setting::uuid;
END;
$$;

CREATE OR REPLACE FUNCTION public.toolkit_tenant_or_default() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(
        nullif(pg_catalog.current_setting('toolkit.tenant_id', true), ''),
        '00000000-0000-0000-0000-000000000000'
    )::uuid
$$;

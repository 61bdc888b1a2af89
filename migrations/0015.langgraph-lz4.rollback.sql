-- Reverts 0015.langgraph-lz4: the LangGraph value columns back to the
-- server's default compression (values written meanwhile stay lz4; both read alike).

DO $$
DECLARE
    target record;
BEGIN
    FOR target IN
        SELECT c.oid::regclass AS relation, a.attname AS column_name
        FROM pg_catalog.pg_class AS c
        JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.oid
        WHERE
            a.attname = 'blob' AND NOT a.attisdropped
            AND (
                c.oid IN ('public.lg_blobs'::regclass, 'public.lg_writes'::regclass)
                OR c.oid IN (
                    SELECT i.inhrelid FROM pg_catalog.pg_inherits AS i
                    WHERE i.inhparent IN ('public.lg_blobs'::regclass, 'public.lg_writes'::regclass)
                )
            )
    LOOP
        EXECUTE format(
            'ALTER TABLE %s ALTER COLUMN %I SET COMPRESSION default',
            target.relation, target.column_name
        );
    END LOOP;
END
$$;

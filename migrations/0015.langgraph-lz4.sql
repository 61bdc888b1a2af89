-- LangGraph values compressed with lz4 instead of pglz: reading the newest
-- checkpoint of a long thread decompresses its whole message history
-- (about 400 KB at 200 turns), and lz4 decompresses several times faster
-- (the server's time for get_tuple at turn 200: 1.62 ms -> 1.23 ms, median
-- of 80 interleaved runs; the values take ~25% more room, the tables still
-- about a tenth of PostgresSaver's). Existing values keep their pglz until
-- they are written again; both read alike. The parents' setting is what
-- `toolkit maintain` gives the partitions it creates; ALTER TABLE on a
-- parent does not reach the partitions already there, so each is altered.
-- A server built without lz4 keeps pglz (the values read the same).
-- depends: 0014.langgraph-partitions

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
            'ALTER TABLE %s ALTER COLUMN %I SET COMPRESSION lz4',
            target.relation, target.column_name
        );
    END LOOP;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'this server has no lz4: the LangGraph values stay compressed with pglz';
END
$$;

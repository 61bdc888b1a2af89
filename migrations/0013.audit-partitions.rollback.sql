-- Reverts 0013.audit-partitions: the unpartitioned audit log of 0009,
-- exactly, holding every row of every partition. Refused, before anything
-- changes, once a partition was dropped by retention: its anchors are where
-- the surviving chains start, which the schema of 0009 cannot record.

ALTER TABLE public.audit_retention_anchors NO FORCE ROW LEVEL SECURITY;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM public.audit_retention_anchors) THEN
        RAISE EXCEPTION
            'audit partitions were dropped by retention: rolling back 0013 would lose the '
            'retention anchors the surviving audit chains start from'
        USING
            ERRCODE = 'object_in_use',
            HINT = 'keep 0013; or, knowing verification will report the dropped rows as '
            'missing, delete the rows of public.audit_retention_anchors first';
    END IF;
END;
$$;

ALTER TABLE public.audit_events NO FORCE ROW LEVEL SECURITY;
ALTER TABLE public.audit_events RENAME TO audit_events_partitioned;
ALTER TABLE public.audit_events_partitioned
RENAME CONSTRAINT audit_events_pkey TO audit_events_partitioned_pkey;
ALTER INDEX public.audit_events_seq_idx RENAME TO audit_events_partitioned_seq_idx;
ALTER INDEX public.audit_events_actor_idx RENAME TO audit_events_partitioned_actor_idx;
ALTER INDEX public.audit_events_created_at_idx
RENAME TO audit_events_partitioned_created_at_idx;
ALTER INDEX public.audit_events_entity_id_idx RENAME TO audit_events_partitioned_entity_id_idx;
ALTER INDEX public.audit_events_entity_idx RENAME TO audit_events_partitioned_entity_idx;

CREATE TABLE public.audit_events (
    -- Named as 0001 and 0009 named them: the partitioned table still holds those names.
    id uuid CONSTRAINT audit_events_pkey PRIMARY KEY DEFAULT gen_random_uuid(),
    seq bigint NOT NULL,
    actor_id uuid,
    action text NOT NULL
    CONSTRAINT audit_events_action_check CHECK (action ~ '^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$'),
    entity text NOT NULL
    CONSTRAINT audit_events_entity_check CHECK (entity ~ '^[a-z][a-z0-9_]{0,63}$'),
    entity_id uuid,
    details jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    prev_hash bytea NOT NULL,
    hash bytea NOT NULL,
    tenant_id uuid NOT NULL DEFAULT public.toolkit_tenant_or_default()
    CONSTRAINT audit_events_tenant_id_fkey REFERENCES public.tenants (id),
    CONSTRAINT audit_events_seq_key UNIQUE (tenant_id, seq)
);
CREATE INDEX audit_events_actor_idx
ON public.audit_events (tenant_id, actor_id, created_at, id);
CREATE INDEX audit_events_created_at_idx ON public.audit_events (tenant_id, created_at, id);
CREATE INDEX audit_events_entity_id_idx ON public.audit_events (tenant_id, entity_id);
CREATE INDEX audit_events_entity_idx
ON public.audit_events (tenant_id, entity, created_at, id);
REVOKE ALL ON public.audit_events FROM toolkit_app;
GRANT SELECT, INSERT ON public.audit_events TO toolkit_app;

-- Every row moves back, unchanged (the chain trigger comes after).
DO $$
DECLARE
    moved bigint;
    kept bigint;
BEGIN
    INSERT INTO public.audit_events (
        id, seq, actor_id, action, entity, entity_id, details, created_at, prev_hash, hash,
        tenant_id
    )
    SELECT
        a.id, a.seq, a.actor_id, a.action, a.entity, a.entity_id, a.details, a.created_at,
        a.prev_hash, a.hash, a.tenant_id
    FROM public.audit_events_partitioned AS a;
    GET DIAGNOSTICS moved = ROW_COUNT;
    SELECT count(*) INTO kept FROM public.audit_events_partitioned;
    IF moved <> kept THEN
        RAISE EXCEPTION 'audit_events conversion moved % of % rows', moved, kept;
    END IF;
END;
$$;
-- The partitions go with their parent.
DROP TABLE public.audit_events_partitioned;
CREATE TRIGGER audit_events_chain BEFORE INSERT ON public.audit_events
FOR EACH ROW EXECUTE FUNCTION public.audit_events_chain();
CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON public.audit_events
FOR EACH ROW EXECUTE FUNCTION public.audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON public.audit_events
FOR EACH STATEMENT EXECUTE FUNCTION public.audit_events_append_only();
DO $$
BEGIN
    PERFORM public.toolkit_make_tenant_owned('public.audit_events');
END;
$$;

-- The chain trigger of 0009 (SECURITY INVOKER again).
CREATE OR REPLACE FUNCTION public.audit_events_chain() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    chain_key constant bigint := public.audit_chain_lock_key(NEW.tenant_id);
    caller_timeout constant text := pg_catalog.current_setting('lock_timeout');
    bound text := '10s';
    holder integer;
    last_seq bigint;
    last_hash bytea;
BEGIN
    IF NOT pg_catalog.pg_try_advisory_xact_lock(chain_key) THEN
        IF caller_timeout <> '0' AND caller_timeout::interval < bound::interval THEN
            bound := caller_timeout;
        END IF;
        BEGIN
            PERFORM pg_catalog.set_config('lock_timeout', bound, true);
            PERFORM pg_catalog.pg_advisory_xact_lock(chain_key);
            PERFORM pg_catalog.set_config('lock_timeout', caller_timeout, true);
        EXCEPTION WHEN lock_not_available THEN
            SELECT l.pid INTO holder
            FROM pg_catalog.pg_locks AS l
            WHERE
                l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                AND ((l.classid::bigint << 32) | l.objid::bigint) = chain_key
            LIMIT 1;
            RAISE EXCEPTION
                'the audit chain lock was not granted within %: another session '
                '(pid %) holds it, in an open transaction that wrote an audit '
                'event of this tenant or by taking advisory lock % itself; this '
                'audit event was not written',
                bound, coalesce(holder::text, 'unknown'), chain_key
            USING
                ERRCODE = 'lock_not_available',
                HINT = 'end that session''s transaction, or pg_terminate_backend() it';
        END;
    END IF;
    SELECT a.seq, a.hash INTO last_seq, last_hash
    FROM public.audit_events AS a
    WHERE a.tenant_id = NEW.tenant_id
    ORDER BY a.seq DESC
    LIMIT 1;
    NEW.seq := coalesce(last_seq, 0) + 1;
    NEW.prev_hash := coalesce(last_hash, '\x'::bytea);
    NEW.created_at := pg_catalog.now();
    NEW.hash := public.audit_event_hash(
        NEW.prev_hash, NEW.seq, NEW.id, NEW.actor_id, NEW.action,
        NEW.entity, NEW.entity_id, NEW.details, NEW.created_at
    );
    RETURN NEW;
END;
$$;

DROP TABLE public.audit_chain_heads;
DROP TABLE public.audit_retention_anchors;
DROP FUNCTION toolkit_partitions.audit_retire(regclass);
DELETE FROM toolkit_partitions.policy WHERE parent = 'public.audit_events';
ALTER TABLE toolkit_partitions.policy DROP COLUMN before_drop;

-- create_partition of 0011.
CREATE OR REPLACE FUNCTION toolkit_partitions.create_partition(
    parent regclass, lower_bound timestamptz, upper_bound timestamptz
)
RETURNS regclass
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    base constant text := (SELECT c.relname FROM pg_catalog.pg_class AS c WHERE c.oid = parent);
    name text;
    made regclass;
BEGIN
    IF lower_bound IS NULL THEN
        name := base || '_before_'
            || pg_catalog.to_char(upper_bound AT TIME ZONE 'UTC', 'YYYYMMDD"_"HH24MISS');
        EXECUTE pg_catalog.format(
            'CREATE TABLE toolkit_partitions.%I PARTITION OF %s FOR VALUES FROM (MINVALUE) TO (%L)',
            name, parent, upper_bound
        );
    ELSE
        name := base || '_'
            || pg_catalog.to_char(lower_bound AT TIME ZONE 'UTC', 'YYYYMMDD"_"HH24MISS');
        EXECUTE pg_catalog.format(
            'CREATE TABLE toolkit_partitions.%I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
            name, parent, lower_bound, upper_bound
        );
    END IF;
    made := pg_catalog.format('toolkit_partitions.%I', name)::regclass;
    EXECUTE pg_catalog.format('REVOKE ALL ON %s FROM PUBLIC', made);
    RETURN made;
END;
$$;

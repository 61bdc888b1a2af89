-- Retention without bloat: the audit log partitioned by time.
-- audit_events is partitioned by created_at (weekly by default, no DEFAULT
-- partition, in the schema toolkit_partitions that no application role may
-- use), and retention is `toolkit maintain` dropping whole partitions whose
-- range ended more than two years ago: never a DELETE.
-- The hash chain (per tenant) survives a drop: before a partition leaves its
-- parent, maintain records in public.audit_retention_anchors, for each
-- tenant, the (seq, hash) of every row of it whose successor is not in it
-- (the partition's last row of each chain, and the row before any gap a
-- transaction that straddled a partition boundary left). The chain goes on
-- from those anchors: verification starts from the anchor just below the
-- oldest surviving row. Only the tables' owner writes anchors; the
-- application role reads its tenant's.
-- Each tenant's chain head (its newest seq and hash) is a row of
-- public.audit_chain_heads that the chain trigger reads and advances: an
-- audited INSERT no longer probes every partition for the newest row, and
-- seq stays unique per tenant (the partitioned table cannot say so itself)
-- whatever the writer's isolation level.
-- depends: 0012.inbox-partitions

-- A policy may name a function that maintain calls with a partition before
-- it leaves its parent and again before it is dropped (idempotent).
ALTER TABLE toolkit_partitions.policy ADD COLUMN before_drop regproc;

-- PostgreSQL clones a partitioned table's row triggers onto its partitions,
-- not its statement triggers: a partition gets its parent's TRUNCATE
-- triggers here, so TRUNCATE of a partition is refused like the parent's.
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
    copied record;
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
    -- tgtype bits: 1 row, 2 before, 32 truncate.
    FOR copied IN
        SELECT t.tgname, t.tgfoid::regproc AS fn, (t.tgtype & 2) <> 0 AS before
        FROM pg_catalog.pg_trigger AS t
        WHERE t.tgrelid = parent AND (t.tgtype & 32) <> 0 AND (t.tgtype & 1) = 0
            AND NOT t.tgisinternal
    LOOP
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER %I %s TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION %s()',
            copied.tgname, CASE WHEN copied.before THEN 'BEFORE' ELSE 'AFTER' END, made,
            copied.fn
        );
    END LOOP;
    RETURN made;
END;
$$;

-- Where each tenant's chain goes on after a drop: the (seq, hash) of a
-- dropped row whose successor was not in its partition, and that row's time.
CREATE TABLE public.audit_retention_anchors (
    tenant_id uuid NOT NULL DEFAULT public.toolkit_tenant_or_default()
    CONSTRAINT audit_retention_anchors_tenant_id_fkey REFERENCES public.tenants (id),
    seq bigint NOT NULL CONSTRAINT audit_retention_anchors_seq_check CHECK (seq >= 1),
    hash bytea NOT NULL
    CONSTRAINT audit_retention_anchors_hash_check CHECK (octet_length(hash) = 32),
    created_at timestamptz NOT NULL,
    dropped_partition text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT audit_retention_anchors_pkey PRIMARY KEY (tenant_id, seq)
);
-- Read by the verifiers (as the application role);
-- written by maintain alone (the owner).
REVOKE ALL ON public.audit_retention_anchors FROM toolkit_app;
GRANT SELECT ON public.audit_retention_anchors TO toolkit_app;
DO $$
BEGIN
    PERFORM public.toolkit_make_tenant_owned('public.audit_retention_anchors');
END;
$$;

-- Records the anchors of the audit partition part (attached or detached):
-- each row whose successor in its tenant's chain is not in part. Recording
-- twice changes nothing; returns how many anchors were new.
CREATE FUNCTION toolkit_partitions.audit_retire(part regclass)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    recorded bigint;
BEGIN
    EXECUTE pg_catalog.format(
        'INSERT INTO public.audit_retention_anchors '
        '(tenant_id, seq, hash, created_at, dropped_partition) '
        'SELECT e.tenant_id, e.seq, e.hash, e.created_at, %L FROM %s AS e '
        'WHERE NOT EXISTS (SELECT 1 FROM %s AS n '
        'WHERE n.tenant_id = e.tenant_id AND n.seq = e.seq + 1) '
        'ON CONFLICT (tenant_id, seq) DO NOTHING',
        part::text, part, part
    );
    GET DIAGNOSTICS recorded = ROW_COUNT;
    RETURN recorded;
END;
$$;
REVOKE ALL ON FUNCTION toolkit_partitions.audit_retire(regclass) FROM PUBLIC;  -- noqa: CP02

-- Each tenant's chain head: the seq and hash of its newest event, dropped
-- by retention or not. Written by the chain trigger alone (it runs as the
-- owner), under the tenant's chain lock, in the statement that appends.
CREATE TABLE public.audit_chain_heads (
    tenant_id uuid NOT NULL DEFAULT public.toolkit_tenant_or_default()
    CONSTRAINT audit_chain_heads_tenant_id_fkey REFERENCES public.tenants (id),
    seq bigint NOT NULL CONSTRAINT audit_chain_heads_seq_check CHECK (seq >= 1),
    hash bytea NOT NULL CONSTRAINT audit_chain_heads_hash_check CHECK (octet_length(hash) = 32),
    CONSTRAINT audit_chain_heads_pkey PRIMARY KEY (tenant_id)
);
REVOKE ALL ON public.audit_chain_heads FROM toolkit_app;
GRANT SELECT ON public.audit_chain_heads TO toolkit_app;

-- Links a new audit row to its tenant's chain head and advances the head, in
-- O(1) whatever the number of partitions. SECURITY DEFINER: the application
-- role cannot write the heads. Locking the head row also refuses a second
-- writer whose snapshot predates the last advance (REPEATABLE READ or above:
-- a serialization failure, never a repeated seq). Otherwise as in 0009.
CREATE OR REPLACE FUNCTION public.audit_events_chain() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
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
    SELECT h.seq, h.hash INTO last_seq, last_hash
    FROM public.audit_chain_heads AS h
    WHERE h.tenant_id = NEW.tenant_id
    FOR UPDATE;
    NEW.seq := coalesce(last_seq, 0) + 1;
    NEW.prev_hash := coalesce(last_hash, '\x'::bytea);
    NEW.created_at := pg_catalog.now();
    NEW.hash := public.audit_event_hash(
        NEW.prev_hash, NEW.seq, NEW.id, NEW.actor_id, NEW.action,
        NEW.entity, NEW.entity_id, NEW.details, NEW.created_at
    );
    IF last_seq IS NULL THEN
        INSERT INTO public.audit_chain_heads (tenant_id, seq, hash)
        VALUES (NEW.tenant_id, NEW.seq, NEW.hash);
    ELSE
        UPDATE public.audit_chain_heads AS h SET seq = NEW.seq, hash = NEW.hash
        WHERE h.tenant_id = NEW.tenant_id;
    END IF;
    RETURN NEW;
END;
$$;

-- Weekly partitions (multiples of seven days since the Unix epoch: they
-- begin on Thursdays, 00:00 UTC), four weeks made ahead, each kept 730 days
-- after its week ended. An operator changes these with an UPDATE of this row.
INSERT INTO toolkit_partitions.policy (
    parent, partition_interval, premake, retention, keep_while, before_drop
)
VALUES (
    'public.audit_events', interval '7 days', 4, interval '730 days', 'false',
    'toolkit_partitions.audit_retire'
);

-- The unpartitioned log steps aside, its names freed for the new one.
ALTER TABLE public.audit_events RENAME TO audit_events_before_0013;
ALTER TABLE public.audit_events_before_0013
RENAME CONSTRAINT audit_events_pkey TO audit_events_before_0013_pkey;
ALTER TABLE public.audit_events_before_0013
RENAME CONSTRAINT audit_events_seq_key TO audit_events_before_0013_seq_key;
ALTER INDEX public.audit_events_actor_idx RENAME TO audit_events_before_0013_actor_idx;
ALTER INDEX public.audit_events_created_at_idx
RENAME TO audit_events_before_0013_created_at_idx;
ALTER INDEX public.audit_events_entity_id_idx RENAME TO audit_events_before_0013_entity_id_idx;
ALTER INDEX public.audit_events_entity_idx RENAME TO audit_events_before_0013_entity_idx;
-- The policies bind the owner too (FORCE): lifted, so every row is copied.
ALTER TABLE public.audit_events_before_0013 NO FORCE ROW LEVEL SECURITY;

-- A partitioned table's unique keys include its partition key: an event is
-- (id, created_at), and (tenant_id, seq) is indexed, not unique: the chain
-- trigger assigns seq from the tenant's row of audit_chain_heads, which it
-- locks (a writer whose snapshot predates the head's last advance fails),
-- and verification reports a repeated seq as a broken link.
CREATE TABLE public.audit_events (
    id uuid NOT NULL DEFAULT gen_random_uuid(),
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
    CONSTRAINT audit_events_pkey PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
CREATE INDEX audit_events_seq_idx ON public.audit_events (tenant_id, seq);
CREATE INDEX audit_events_actor_idx
ON public.audit_events (tenant_id, actor_id, created_at, id);
CREATE INDEX audit_events_created_at_idx ON public.audit_events (tenant_id, created_at, id);
CREATE INDEX audit_events_entity_id_idx ON public.audit_events (tenant_id, entity_id);
CREATE INDEX audit_events_entity_idx
ON public.audit_events (tenant_id, entity, created_at, id);
-- Before any partition exists, so create_partition copies it onto each.
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON public.audit_events
FOR EACH STATEMENT EXECUTE FUNCTION public.audit_events_append_only();
-- Read and appended, never changed (as 0007 made it).
REVOKE ALL ON public.audit_events FROM toolkit_app;
GRANT SELECT, INSERT ON public.audit_events TO toolkit_app;

-- Every existing row moves, unchanged (the chain trigger comes after): one
-- partition holds everything older than the current week, then the current
-- and coming ones.
DO $$
DECLARE
    oldest timestamptz;
    current_start timestamptz;
    moved bigint;
    kept bigint;
BEGIN
    SELECT min(a.created_at) INTO oldest FROM public.audit_events_before_0013 AS a;
    current_start := toolkit_partitions.floor_time(
        now(),
        (SELECT p.partition_interval FROM toolkit_partitions.policy AS p
            WHERE p.parent = 'public.audit_events')
    );
    IF oldest < current_start THEN
        PERFORM toolkit_partitions.create_partition('public.audit_events', NULL, current_start);
    END IF;
    PERFORM toolkit_partitions.create_coming('public.audit_events', now());
    INSERT INTO public.audit_events (
        id, seq, actor_id, action, entity, entity_id, details, created_at, prev_hash, hash,
        tenant_id
    )
    SELECT
        a.id, a.seq, a.actor_id, a.action, a.entity, a.entity_id, a.details, a.created_at,
        a.prev_hash, a.hash, a.tenant_id
    FROM public.audit_events_before_0013 AS a;
    GET DIAGNOSTICS moved = ROW_COUNT;
    SELECT count(*) INTO kept FROM public.audit_events_before_0013;
    IF moved <> kept THEN
        RAISE EXCEPTION 'audit_events conversion moved % of % rows', moved, kept;
    END IF;
END;
$$;
DROP TABLE public.audit_events_before_0013;

-- Each tenant's head is its newest row (no partition was dropped yet).
INSERT INTO public.audit_chain_heads (tenant_id, seq, hash)
SELECT DISTINCT ON (a.tenant_id) a.tenant_id, a.seq, a.hash
FROM public.audit_events AS a
ORDER BY a.tenant_id ASC, a.seq DESC;
DO $$
BEGIN
    PERFORM public.toolkit_make_tenant_owned('public.audit_chain_heads');
END;
$$;

-- Row triggers, cloned by PostgreSQL onto every partition, present and future.
CREATE TRIGGER audit_events_chain BEFORE INSERT ON public.audit_events
FOR EACH ROW EXECUTE FUNCTION public.audit_events_chain();
CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON public.audit_events
FOR EACH ROW EXECUTE FUNCTION public.audit_events_append_only();
DO $$
BEGIN
    PERFORM public.toolkit_make_tenant_owned('public.audit_events');
END;
$$;

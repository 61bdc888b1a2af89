-- Retention without bloat: the outbox partitioned by time.
-- The relay claims unsent rows with SKIP LOCKED and marks them sent, which
-- leaves a dead row version per message. While a long transaction holds
-- back vacuum, those dead versions pile up in one table and every claim
-- walks them. Partitioned by created_at, the dead versions stay in the
-- partitions they belong to, and retention drops a whole partition once
-- every row of it is sent and its range is older than the retention: no
-- DELETE, no dead rows left behind, whatever snapshot is open.
-- There is no DEFAULT partition, so a partition can be detached
-- CONCURRENTLY; `toolkit maintain` creates the coming partitions ahead of
-- time and drops the expired ones (toolkit.db.partitions).
-- depends: 0009.tenants

-- The partitions live in a schema of their own that no application role may
-- use: every read and write goes through the parent, under its policies.
CREATE SCHEMA toolkit_partitions;
REVOKE ALL ON SCHEMA toolkit_partitions FROM PUBLIC;  -- noqa: CP02

-- How each partitioned table is kept: the width of a partition, how many
-- partitions to keep ready ahead of now, how long a partition is kept once
-- its range has ended, and the rows that keep a partition alive whatever
-- its age (a predicate on the partition's own columns).
CREATE TABLE toolkit_partitions.policy (
    parent text PRIMARY KEY,
    partition_interval interval NOT NULL CHECK (partition_interval >= interval '1 second'),
    premake integer NOT NULL CHECK (premake BETWEEN 1 AND 1000),
    retention interval NOT NULL CHECK (retention >= interval '0'),
    keep_while text NOT NULL DEFAULT 'false'
);
REVOKE ALL ON toolkit_partitions.policy FROM PUBLIC;  -- noqa: CP02
INSERT INTO toolkit_partitions.policy (parent, partition_interval, premake, retention, keep_while)
VALUES ('public.outbox', interval '1 day', 3, interval '7 days', 'sent_at IS NULL');

-- The partitions of a parent, with their bounds (NULL lower bound: MINVALUE)
-- and whether a concurrent detach of theirs was interrupted.
CREATE FUNCTION toolkit_partitions.partitions(parent regclass)
RETURNS TABLE (
    partition regclass, lower_bound timestamptz, upper_bound timestamptz, detach_pending boolean
)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT
        c.oid::regclass,
        (pg_catalog.regexp_match(
            pg_catalog.pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']*)''\)'
        ))[1]::timestamptz,
        (pg_catalog.regexp_match(
            pg_catalog.pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']*)''\)'
        ))[1]::timestamptz,
        i.inhdetachpending
    FROM pg_catalog.pg_inherits AS i
    JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
    WHERE i.inhparent = parent
    ORDER BY 3
$$;

-- t rounded down to a multiple of step since the epoch (a day: UTC midnight).
CREATE FUNCTION toolkit_partitions.floor_time(t timestamptz, step interval)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.to_timestamp(
        pg_catalog.floor(
            EXTRACT(EPOCH FROM t) / EXTRACT(EPOCH FROM step)
        ) * EXTRACT(EPOCH FROM step)
    )
$$;

-- Creates the partition of parent for [lower_bound, upper_bound) (NULL
-- lower bound: MINVALUE), named after its lower bound in UTC, with no
-- privilege for anyone but its owner.
CREATE FUNCTION toolkit_partitions.create_partition(
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

-- Creates the partitions target lacks up to premake intervals past at:
-- from the end of the newest partition (a gap left while maintenance did
-- not run becomes one partition up to the current interval), else from the
-- start of the current interval. Idempotent; returns what it created.
CREATE FUNCTION toolkit_partitions.create_coming(target regclass, at timestamptz)
RETURNS SETOF regclass
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rule toolkit_partitions.policy;
    current_start timestamptz;
    horizon timestamptz;
    high timestamptz;
BEGIN
    SELECT * INTO STRICT rule FROM toolkit_partitions.policy AS p WHERE p.parent::regclass = target;
    current_start := toolkit_partitions.floor_time(at, rule.partition_interval);
    horizon := at + rule.premake * rule.partition_interval;
    SELECT max(p.upper_bound) INTO high FROM toolkit_partitions.partitions(target) AS p;
    IF high IS NULL THEN
        high := current_start;
    ELSIF high < current_start THEN
        RETURN NEXT toolkit_partitions.create_partition(target, high, current_start);
        high := current_start;
    END IF;
    WHILE high < horizon LOOP
        RETURN NEXT toolkit_partitions.create_partition(
            target, high, high + rule.partition_interval
        );
        high := high + rule.partition_interval;
    END LOOP;
END;
$$;

-- The unpartitioned outbox steps aside, its names freed for the new one.
ALTER TABLE public.outbox RENAME TO outbox_before_0011;
ALTER TABLE public.outbox_before_0011 RENAME CONSTRAINT outbox_pkey TO outbox_before_0011_pkey;
ALTER TABLE public.outbox_before_0011
RENAME CONSTRAINT outbox_seq_key TO outbox_before_0011_seq_key;
ALTER INDEX public.outbox_unsent_idx RENAME TO outbox_before_0011_unsent_idx;
ALTER INDEX public.outbox_sent_at_idx RENAME TO outbox_before_0011_sent_at_idx;
ALTER INDEX public.outbox_tenant_seq_idx RENAME TO outbox_before_0011_tenant_seq_idx;
ALTER SEQUENCE public.outbox_seq_seq RENAME TO outbox_before_0011_seq_seq;
-- The policies bind the owner too (FORCE): lifted, so every row is copied
-- whoever runs the migration.
ALTER TABLE public.outbox_before_0011 NO FORCE ROW LEVEL SECURITY;

-- The primary key of a partitioned table includes its partition key: a
-- message is (id, created_at). seq stays an identity, so it is still unique
-- and ordered, without a unique index (which would need created_at too).
CREATE TABLE public.outbox (
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    seq bigint GENERATED ALWAYS AS IDENTITY,
    queue text NOT NULL CONSTRAINT outbox_queue_check CHECK (queue ~ '^[a-z][a-z0-9_.-]{0,199}$'),
    message_type text NOT NULL
    CONSTRAINT outbox_message_type_check CHECK (char_length(message_type) BETWEEN 1 AND 200),
    body jsonb NOT NULL,
    headers jsonb NOT NULL DEFAULT '{}',
    attempts integer NOT NULL DEFAULT 0 CONSTRAINT outbox_attempts_check CHECK (attempts >= 0),
    last_error text CONSTRAINT outbox_last_error_check CHECK (char_length(last_error) <= 2000),
    available_at timestamptz NOT NULL DEFAULT now(),
    sent_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    tenant_id uuid NOT NULL DEFAULT public.toolkit_tenant_or_default()
    CONSTRAINT outbox_tenant_id_fkey REFERENCES public.tenants (id),
    CONSTRAINT outbox_pkey PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
CREATE INDEX outbox_unsent_idx ON public.outbox (seq) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent_at_idx ON public.outbox (sent_at) WHERE sent_at IS NOT NULL;
CREATE INDEX outbox_tenant_seq_idx ON public.outbox (tenant_id, seq);
CREATE TRIGGER outbox_notify AFTER INSERT ON public.outbox
FOR EACH STATEMENT EXECUTE FUNCTION public.outbox_notify();
GRANT SELECT, DELETE ON public.outbox TO toolkit_relay;
GRANT UPDATE (sent_at, attempts, last_error, available_at) ON public.outbox TO toolkit_relay;

-- Every existing row moves, unchanged: one partition holds everything
-- older than the current interval, then the current and coming ones.
DO $$
DECLARE
    oldest timestamptz;
    current_start timestamptz;
    moved bigint;
    kept bigint;
BEGIN
    SELECT min(o.created_at) INTO oldest FROM public.outbox_before_0011 AS o;
    current_start := toolkit_partitions.floor_time(
        now(),
        (SELECT p.partition_interval FROM toolkit_partitions.policy AS p
            WHERE p.parent = 'public.outbox')
    );
    IF oldest < current_start THEN
        PERFORM toolkit_partitions.create_partition('public.outbox', NULL, current_start);
    END IF;
    PERFORM toolkit_partitions.create_coming('public.outbox', now());
    INSERT INTO public.outbox (
        id, seq, queue, message_type, body, headers, attempts, last_error, available_at,
        sent_at, created_at, tenant_id
    ) OVERRIDING SYSTEM VALUE
    SELECT
        o.id, o.seq, o.queue, o.message_type, o.body, o.headers, o.attempts, o.last_error,
        o.available_at, o.sent_at, o.created_at, o.tenant_id
    FROM public.outbox_before_0011 AS o;
    GET DIAGNOSTICS moved = ROW_COUNT;
    SELECT count(*) INTO kept FROM public.outbox_before_0011;
    IF moved <> kept THEN
        RAISE EXCEPTION 'outbox conversion moved % of % rows', moved, kept;
    END IF;
    -- The identity goes on from where the old one was.
    PERFORM pg_catalog.setval(
        'public.outbox_seq_seq',
        greatest(
            (SELECT s.last_value FROM public.outbox_before_0011_seq_seq AS s),
            coalesce((SELECT max(o.seq) FROM public.outbox_before_0011 AS o), 1)
        ),
        (SELECT s.is_called FROM public.outbox_before_0011_seq_seq AS s) OR kept > 0
    );
END;
$$;
DROP TABLE public.outbox_before_0011;
-- Row level security on the parent: reads and writes through it are
-- bound; the partitions are reachable by their owner alone.
DO $$
BEGIN
    PERFORM public.toolkit_make_tenant_owned('public.outbox');
END;
$$;

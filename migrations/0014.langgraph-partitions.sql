-- Retention without bloat for LangGraph threads: lg_checkpoints, lg_blobs
-- and lg_writes partitioned by the time a row was stored (stored_at), so
-- that the rows of finished threads go with whole partitions, never with a
-- DELETE. `toolkit maintain` (toolkit.db.partitions) drops them.
--
-- The rule. A thread is live while one of its checkpoints or writes is in a
-- partition that has not expired; it is finished once every one of them is
-- in an expired partition (nothing written to it for the retention, rounded
-- to a partition). Before maintain drops an expired partition, it moves the
-- rows of live threads out of it into the newest partition that holds a row
-- of the same thread (toolkit_partitions.lg_carry_forward: one UPDATE of
-- stored_at, so a row is in exactly one place for every reader, and a
-- channel unchanged for weeks moves with its thread). What is left belongs
-- to finished threads only, and goes with the partition. A finished thread's
-- rows are never moved, so it ends; a live thread loses nothing, so its
-- get_tuple, list and put answer as before.
-- depends: 0013.audit-partitions

-- The present of a maintain run: the time it was given (tests, benchmarks),
-- else now().
CREATE FUNCTION toolkit_partitions.maintain_now()
RETURNS timestamptz
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(
        nullif(pg_catalog.current_setting('toolkit.maintain_now', true), '')::timestamptz,
        pg_catalog.now()
    )
$$;

-- Where parent's expired partitions end: the upper bound of the newest one
-- still attached (-infinity when none is). A row stored at or after it is
-- in a partition maintain keeps.
CREATE FUNCTION toolkit_partitions.horizon(target regclass)
RETURNS timestamptz
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(max(p.upper_bound), '-infinity')
    FROM toolkit_partitions.partitions(target) AS p
    INNER JOIN toolkit_partitions.policy AS r ON r.parent::regclass = target
    WHERE p.upper_bound <= toolkit_partitions.maintain_now() - r.retention
$$;

-- The write lock of a LangGraph thread. Without a unique index on a key
-- (a partitioned table's must hold stored_at), "insert a key only when no row
-- has it" is exact only when the check runs after every earlier writer of
-- the key committed: each saver write takes this advisory lock (transaction
-- scoped) in a statement of its own before it checks, and maintain's carry
-- takes it for the threads it moves (so a saver update never meets a row
-- being moved). Threads share 1024 keys, so the carry takes at most 1024
-- locks however many threads it moves; two threads on one key only wait
-- for each other's statement.
CREATE FUNCTION public.lg_thread_lock_key(tenant uuid, thread text)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.hashtextextended(
        'toolkit.lg_threads:'
        || (pg_catalog.hashtextextended(tenant::text || '/' || thread, 0) & 1023)::text,
        0
    )
$$;

-- What maintain runs before it drops a parent's expired partitions (NULL:
-- nothing): a function of the parent returning how many rows it moved.
ALTER TABLE toolkit_partitions.policy ADD COLUMN carry_forward text;

-- The three tables step aside, their names freed for the partitioned ones.
ALTER TABLE public.lg_checkpoints RENAME TO lg_checkpoints_before_0014;
ALTER TABLE public.lg_checkpoints_before_0014
RENAME CONSTRAINT lg_checkpoints_pkey TO lg_checkpoints_before_0014_pkey;
ALTER INDEX public.lg_checkpoints_run_id_idx RENAME TO lg_checkpoints_before_0014_run_id_idx;
ALTER TABLE public.lg_checkpoints_before_0014 NO FORCE ROW LEVEL SECURITY;
ALTER TABLE public.lg_blobs RENAME TO lg_blobs_before_0014;
ALTER TABLE public.lg_blobs_before_0014
RENAME CONSTRAINT lg_blobs_pkey TO lg_blobs_before_0014_pkey;
ALTER TABLE public.lg_blobs_before_0014 DROP CONSTRAINT lg_blobs_base_fkey;
ALTER INDEX public.lg_blobs_base_idx RENAME TO lg_blobs_before_0014_base_idx;
ALTER TABLE public.lg_blobs_before_0014 NO FORCE ROW LEVEL SECURITY;
ALTER TABLE public.lg_writes RENAME TO lg_writes_before_0014;
ALTER TABLE public.lg_writes_before_0014
RENAME CONSTRAINT lg_writes_pkey TO lg_writes_before_0014_pkey;
ALTER TABLE public.lg_writes_before_0014 NO FORCE ROW LEVEL SECURITY;

-- Every primary key ends with stored_at, the partition key. A row is
-- still one per key: the saver inserts a key only when no row has it, and
-- maintain moves rows, never copies them.
CREATE TABLE public.lg_checkpoints (
    thread_id text NOT NULL
    CONSTRAINT lg_checkpoints_thread_id_check CHECK (char_length(thread_id) BETWEEN 1 AND 2048),
    checkpoint_ns text NOT NULL DEFAULT ''
    CONSTRAINT lg_checkpoints_checkpoint_ns_check CHECK (char_length(checkpoint_ns) <= 2048),
    checkpoint_id text COLLATE "C" NOT NULL
    CONSTRAINT lg_checkpoints_checkpoint_id_check
    CHECK (char_length(checkpoint_id) BETWEEN 1 AND 200),
    parent_checkpoint_id text COLLATE "C",
    checkpoint jsonb NOT NULL,
    metadata jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    tenant_id uuid NOT NULL DEFAULT public.toolkit_tenant_or_default()
    CONSTRAINT lg_checkpoints_tenant_id_fkey REFERENCES public.tenants (id),
    stored_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT lg_checkpoints_pkey
    PRIMARY KEY (tenant_id, thread_id, checkpoint_ns, checkpoint_id, stored_at)
) PARTITION BY RANGE (stored_at);
CREATE INDEX lg_checkpoints_run_id_idx ON public.lg_checkpoints (tenant_id, (metadata ->> 'run_id'))
WHERE metadata ? 'run_id';

CREATE TABLE public.lg_blobs (
    thread_id text NOT NULL,
    checkpoint_ns text NOT NULL DEFAULT '',
    channel text NOT NULL
    CONSTRAINT lg_blobs_channel_check CHECK (char_length(channel) BETWEEN 1 AND 1000),
    version text NOT NULL
    CONSTRAINT lg_blobs_version_check CHECK (char_length(version) BETWEEN 1 AND 200),
    type text NOT NULL CONSTRAINT lg_blobs_type_check CHECK (char_length(type) BETWEEN 1 AND 100),
    base_version text,
    item_count integer CONSTRAINT lg_blobs_item_count_check CHECK (item_count >= 0),
    blob bytea,
    tenant_id uuid NOT NULL DEFAULT public.toolkit_tenant_or_default()
    CONSTRAINT lg_blobs_tenant_id_fkey REFERENCES public.tenants (id),
    stored_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT lg_blobs_pkey
    PRIMARY KEY (tenant_id, thread_id, checkpoint_ns, channel, version, stored_at),
    CONSTRAINT lg_blobs_delta_check CHECK (
        base_version IS NULL OR (item_count IS NOT NULL AND blob IS NOT NULL)
    )
) PARTITION BY RANGE (stored_at);
CREATE INDEX lg_blobs_base_idx
ON public.lg_blobs (tenant_id, thread_id, checkpoint_ns, channel, base_version)
WHERE base_version IS NOT NULL;

CREATE TABLE public.lg_writes (
    thread_id text NOT NULL,
    checkpoint_ns text NOT NULL DEFAULT '',
    checkpoint_id text COLLATE "C" NOT NULL,
    task_id text NOT NULL
    CONSTRAINT lg_writes_task_id_check CHECK (char_length(task_id) BETWEEN 1 AND 1000),
    idx integer NOT NULL,
    channel text NOT NULL
    CONSTRAINT lg_writes_channel_check CHECK (char_length(channel) BETWEEN 1 AND 1000),
    type text NOT NULL CONSTRAINT lg_writes_type_check CHECK (char_length(type) BETWEEN 1 AND 100),
    blob bytea NOT NULL,
    task_path text NOT NULL DEFAULT '',
    tenant_id uuid NOT NULL DEFAULT public.toolkit_tenant_or_default()
    CONSTRAINT lg_writes_tenant_id_fkey REFERENCES public.tenants (id),
    stored_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT lg_writes_pkey
    PRIMARY KEY (tenant_id, thread_id, checkpoint_ns, checkpoint_id, task_id, idx, stored_at)
) PARTITION BY RANGE (stored_at);

-- A delta can never outlive the value it extends. A foreign key cannot say
-- it any more (it would need the base's stored_at, which maintain moves), so
-- two triggers do, as the key did: a delta locks its base (KEY SHARE) or is
-- refused, and a delete that leaves a delta without its base is refused;
-- both with SQLSTATE 23503 and the old key's name.
CREATE FUNCTION public.lg_blobs_base_exists() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    PERFORM FROM public.lg_blobs AS b
    WHERE
        b.tenant_id = NEW.tenant_id AND b.thread_id = NEW.thread_id
        AND b.checkpoint_ns = NEW.checkpoint_ns AND b.channel = NEW.channel
        AND b.version = NEW.base_version
    FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION
            'insert or update on table "lg_blobs" violates foreign key constraint '
            '"lg_blobs_base_fkey"'
        USING
            ERRCODE = 'foreign_key_violation', CONSTRAINT = 'lg_blobs_base_fkey',
            DETAIL = 'the base version of this delta is not stored';
    END IF;
    RETURN NULL;
END;
$$;
-- After the statement's rows are in, as a foreign key checks: a statement
-- may write a base and its deltas in any order.
CREATE TRIGGER lg_blobs_base_exists
AFTER INSERT OR UPDATE OF tenant_id, thread_id, checkpoint_ns, channel, base_version
ON public.lg_blobs
FOR EACH ROW WHEN (new.base_version IS NOT NULL)
EXECUTE FUNCTION public.lg_blobs_base_exists();

CREATE FUNCTION public.lg_blobs_base_kept() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    IF
        EXISTS (
            SELECT FROM public.lg_blobs AS d
            WHERE
                d.tenant_id = OLD.tenant_id AND d.thread_id = OLD.thread_id
                AND d.checkpoint_ns = OLD.checkpoint_ns AND d.channel = OLD.channel
                AND d.base_version = OLD.version
        )
        AND NOT EXISTS (
            SELECT FROM public.lg_blobs AS b
            WHERE
                b.tenant_id = OLD.tenant_id AND b.thread_id = OLD.thread_id
                AND b.checkpoint_ns = OLD.checkpoint_ns AND b.channel = OLD.channel
                AND b.version = OLD.version
        )
    THEN
        RAISE EXCEPTION
            'update or delete on table "lg_blobs" violates foreign key constraint '
            '"lg_blobs_base_fkey" on table "lg_blobs"'
        USING
            ERRCODE = 'foreign_key_violation', CONSTRAINT = 'lg_blobs_base_fkey',
            DETAIL = 'a stored delta extends this version';
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER lg_blobs_base_kept
AFTER DELETE OR UPDATE OF tenant_id, thread_id, checkpoint_ns, channel, version
ON public.lg_blobs
FOR EACH ROW EXECUTE FUNCTION public.lg_blobs_base_kept();

-- Weekly partitions, two ready ahead; a thread is finished four weeks after
-- its last write (rounded up to a week). Every read of a thread probes each
-- attached partition's index, so few wide partitions suit these tables.
-- keep_while is checked again on a detached partition: a thread written to
-- after maintain carried its rows forward (taken up again) keeps it.
INSERT INTO toolkit_partitions.policy (
    parent, partition_interval, premake, retention, keep_while, carry_forward
)
SELECT
    t.parent,
    interval '7 days' AS partition_interval,
    2 AS premake,
    interval '28 days' AS retention,
    '(tenant_id, thread_id) IN ('
    || 'SELECT c.tenant_id, c.thread_id FROM public.lg_checkpoints AS c WHERE c.stored_at >= '
    || '(SELECT toolkit_partitions.horizon(''public.lg_checkpoints'')) UNION ALL '
    || 'SELECT w.tenant_id, w.thread_id FROM public.lg_writes AS w WHERE w.stored_at >= '
    || '(SELECT toolkit_partitions.horizon(''public.lg_writes'')))' AS keep_while,
    'toolkit_partitions.lg_carry_forward' AS carry_forward
FROM unnest(ARRAY['public.lg_checkpoints', 'public.lg_blobs', 'public.lg_writes']) AS t (parent);

-- Moves the rows of live threads out of target's expired partitions into
-- the newest partition holding a checkpoint or write of their thread (never
-- before target's horizon; never past the thread's newest row, so a thread
-- no one writes to ends). A key also found in a kept partition (two writers
-- raced) keeps that row; of several in expired ones, the newest moves. One
-- statement: every reader finds each row in one place. Returns the rows
-- moved.
CREATE FUNCTION toolkit_partitions.lg_carry_forward(target regclass)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    edge constant timestamptz := toolkit_partitions.horizon(target);
    key_columns text[];
    moved bigint;
BEGIN
    IF edge = '-infinity' THEN
        RETURN 0;
    END IF;
    -- The primary key without stored_at: what makes a row one row.
    SELECT array_agg(a.attname::text ORDER BY k.position) INTO STRICT key_columns
    FROM pg_catalog.pg_index AS i
    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k (attnum, position)
    INNER JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = target AND i.indisprimary AND a.attname <> 'stored_at';
    -- The write locks of every thread with a row to move, in key order (as
    -- every taker does); the UPDATE below, a statement of its own, then sees
    -- every saver write that came before.
    EXECUTE pg_catalog.format(
        $q$
        SELECT pg_catalog.count(pg_catalog.pg_advisory_xact_lock(k.key))
        FROM (
            SELECT DISTINCT public.lg_thread_lock_key(d.tenant_id, d.thread_id) AS key
            FROM %1$s AS d WHERE d.stored_at < $1
            ORDER BY key
        ) AS k
        $q$,
        target
    ) USING edge;
    EXECUTE pg_catalog.format(
        $q$
        WITH expiring AS (
            SELECT DISTINCT d.tenant_id, d.thread_id FROM %1$s AS d WHERE d.stored_at < $1
        ),
        live AS (
            SELECT e.tenant_id, e.thread_id, greatest(n.newest, $1) AS destination
            FROM expiring AS e
            CROSS JOIN LATERAL (
                SELECT max(r.stored_at) AS newest
                FROM (
                    SELECT c.stored_at FROM public.lg_checkpoints AS c
                    WHERE
                        c.tenant_id = e.tenant_id AND c.thread_id = e.thread_id
                        AND c.stored_at >= $2
                    UNION ALL
                    SELECT w.stored_at FROM public.lg_writes AS w
                    WHERE
                        w.tenant_id = e.tenant_id AND w.thread_id = e.thread_id
                        AND w.stored_at >= $3
                ) AS r
            ) AS n
            WHERE n.newest IS NOT NULL
        ),
        chosen AS (
            SELECT DISTINCT ON (%2$s) %2$s, d.stored_at, live.destination
            FROM %1$s AS d
            INNER JOIN live ON live.tenant_id = d.tenant_id AND live.thread_id = d.thread_id
            WHERE
                d.stored_at < $1
                AND NOT EXISTS (SELECT FROM %1$s AS o WHERE %3$s AND o.stored_at >= $1)
            ORDER BY %2$s, d.stored_at DESC
        )
        UPDATE %1$s AS d SET stored_at = chosen.destination
        FROM chosen
        WHERE %4$s AND d.stored_at = chosen.stored_at
        $q$,
        target,
        (SELECT string_agg(pg_catalog.format('d.%I', c), ', ') FROM unnest(key_columns) AS c),
        (SELECT string_agg(pg_catalog.format('o.%1$I = d.%1$I', c), ' AND ')
            FROM unnest(key_columns) AS c),
        (SELECT string_agg(pg_catalog.format('d.%1$I = chosen.%1$I', c), ' AND ')
            FROM unnest(key_columns) AS c)
    ) USING
        edge,
        toolkit_partitions.horizon('public.lg_checkpoints'),
        toolkit_partitions.horizon('public.lg_writes');
    GET DIAGNOSTICS moved = ROW_COUNT;
    RETURN moved;
END;
$$;

-- Every existing row moves, unchanged: checkpoints at the time they were
-- made, values and writes at the time of their thread's newest checkpoint
-- (now, for a thread without one). One partition holds everything older
-- than the current interval, then the current and coming ones.
DO $$
DECLARE
    current_start timestamptz;
    moved bigint;
    kept bigint;
    parent text;
BEGIN
    current_start := toolkit_partitions.floor_time(now(), interval '7 days');
    FOREACH parent IN ARRAY ARRAY['public.lg_checkpoints', 'public.lg_blobs', 'public.lg_writes'] LOOP
        PERFORM toolkit_partitions.create_partition(parent::regclass, NULL, current_start);
        PERFORM toolkit_partitions.create_coming(parent::regclass, now());
    END LOOP;

    CREATE TEMPORARY TABLE lg_thread_time ON COMMIT DROP AS
    SELECT c.tenant_id, c.thread_id, max(c.created_at) AS stored_at
    FROM public.lg_checkpoints_before_0014 AS c
    GROUP BY c.tenant_id, c.thread_id;

    INSERT INTO public.lg_checkpoints (
        thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata,
        created_at, tenant_id, stored_at
    )
    SELECT
        c.thread_id, c.checkpoint_ns, c.checkpoint_id, c.parent_checkpoint_id, c.checkpoint,
        c.metadata, c.created_at, c.tenant_id, least(c.created_at, now())
    FROM public.lg_checkpoints_before_0014 AS c;
    GET DIAGNOSTICS moved = ROW_COUNT;
    SELECT count(*) INTO kept FROM public.lg_checkpoints_before_0014;
    IF moved <> kept THEN
        RAISE EXCEPTION 'lg_checkpoints conversion moved % of % rows', moved, kept;
    END IF;

    -- Bases before their deltas: the trigger checks each delta's base.
    INSERT INTO public.lg_blobs (
        thread_id, checkpoint_ns, channel, version, type, base_version, item_count, blob,
        tenant_id, stored_at
    )
    SELECT
        b.thread_id, b.checkpoint_ns, b.channel, b.version, b.type, b.base_version,
        b.item_count, b.blob, b.tenant_id, least(coalesce(t.stored_at, now()), now())
    FROM public.lg_blobs_before_0014 AS b
    LEFT JOIN lg_thread_time AS t ON t.tenant_id = b.tenant_id AND t.thread_id = b.thread_id
    WHERE b.base_version IS NULL;
    GET DIAGNOSTICS moved = ROW_COUNT;
    LOOP
        INSERT INTO public.lg_blobs (
            thread_id, checkpoint_ns, channel, version, type, base_version, item_count, blob,
            tenant_id, stored_at
        )
        SELECT
            b.thread_id, b.checkpoint_ns, b.channel, b.version, b.type, b.base_version,
            b.item_count, b.blob, b.tenant_id, least(coalesce(t.stored_at, now()), now())
        FROM public.lg_blobs_before_0014 AS b
        LEFT JOIN lg_thread_time AS t ON t.tenant_id = b.tenant_id AND t.thread_id = b.thread_id
        WHERE
            b.base_version IS NOT NULL
            AND NOT EXISTS (
                SELECT FROM public.lg_blobs AS n
                WHERE
                    n.tenant_id = b.tenant_id AND n.thread_id = b.thread_id
                    AND n.checkpoint_ns = b.checkpoint_ns AND n.channel = b.channel
                    AND n.version = b.version
            )
            AND EXISTS (
                SELECT FROM public.lg_blobs AS n
                WHERE
                    n.tenant_id = b.tenant_id AND n.thread_id = b.thread_id
                    AND n.checkpoint_ns = b.checkpoint_ns AND n.channel = b.channel
                    AND n.version = b.base_version
            );
        GET DIAGNOSTICS kept = ROW_COUNT;
        EXIT WHEN kept = 0;
        moved := moved + kept;
    END LOOP;
    SELECT count(*) INTO kept FROM public.lg_blobs_before_0014;
    IF moved <> kept THEN
        RAISE EXCEPTION 'lg_blobs conversion moved % of % rows', moved, kept;
    END IF;

    INSERT INTO public.lg_writes (
        thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, blob, task_path,
        tenant_id, stored_at
    )
    SELECT
        w.thread_id, w.checkpoint_ns, w.checkpoint_id, w.task_id, w.idx, w.channel, w.type,
        w.blob, w.task_path, w.tenant_id, least(coalesce(t.stored_at, now()), now())
    FROM public.lg_writes_before_0014 AS w
    LEFT JOIN lg_thread_time AS t ON t.tenant_id = w.tenant_id AND t.thread_id = w.thread_id;
    GET DIAGNOSTICS moved = ROW_COUNT;
    SELECT count(*) INTO kept FROM public.lg_writes_before_0014;
    IF moved <> kept THEN
        RAISE EXCEPTION 'lg_writes conversion moved % of % rows', moved, kept;
    END IF;
END;
$$;
DROP TABLE public.lg_writes_before_0014;
DROP TABLE public.lg_blobs_before_0014;
DROP TABLE public.lg_checkpoints_before_0014;

-- Row level security on the parents; the partitions are reachable by their
-- owner alone.
DO $$
BEGIN
    PERFORM public.toolkit_make_tenant_owned(owned::regclass)
    FROM unnest(ARRAY['public.lg_checkpoints', 'public.lg_blobs', 'public.lg_writes']) AS owned;
END;
$$;

-- Reverts 0014.langgraph-partitions: the unpartitioned lg_checkpoints,
-- lg_blobs and lg_writes of 0009, exactly, holding every row of every
-- partition (of two rows with one key, which two racing writers can leave,
-- the newest).

DELETE FROM toolkit_partitions.policy
WHERE parent IN ('public.lg_checkpoints', 'public.lg_blobs', 'public.lg_writes');
ALTER TABLE toolkit_partitions.policy DROP COLUMN carry_forward;
DROP FUNCTION toolkit_partitions.lg_carry_forward(regclass);

ALTER TABLE public.lg_checkpoints NO FORCE ROW LEVEL SECURITY;
ALTER TABLE public.lg_checkpoints RENAME TO lg_checkpoints_partitioned;
ALTER TABLE public.lg_checkpoints_partitioned
RENAME CONSTRAINT lg_checkpoints_pkey TO lg_checkpoints_partitioned_pkey;
ALTER INDEX public.lg_checkpoints_run_id_idx RENAME TO lg_checkpoints_partitioned_run_id_idx;
ALTER TABLE public.lg_blobs NO FORCE ROW LEVEL SECURITY;
ALTER TABLE public.lg_blobs RENAME TO lg_blobs_partitioned;
ALTER TABLE public.lg_blobs_partitioned
RENAME CONSTRAINT lg_blobs_pkey TO lg_blobs_partitioned_pkey;
ALTER INDEX public.lg_blobs_base_idx RENAME TO lg_blobs_partitioned_base_idx;
ALTER TABLE public.lg_writes NO FORCE ROW LEVEL SECURITY;
ALTER TABLE public.lg_writes RENAME TO lg_writes_partitioned;
ALTER TABLE public.lg_writes_partitioned
RENAME CONSTRAINT lg_writes_pkey TO lg_writes_partitioned_pkey;

-- Named as 0006 and 0009 named them.
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
    CONSTRAINT lg_checkpoints_pkey PRIMARY KEY (tenant_id, thread_id, checkpoint_ns, checkpoint_id)
);
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
    CONSTRAINT lg_blobs_pkey PRIMARY KEY (tenant_id, thread_id, checkpoint_ns, channel, version),
    CONSTRAINT lg_blobs_base_fkey
    FOREIGN KEY (tenant_id, thread_id, checkpoint_ns, channel, base_version)
    REFERENCES public.lg_blobs (tenant_id, thread_id, checkpoint_ns, channel, version),
    CONSTRAINT lg_blobs_delta_check CHECK (
        base_version IS NULL OR (item_count IS NOT NULL AND blob IS NOT NULL)
    )
);
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
    CONSTRAINT lg_writes_pkey
    PRIMARY KEY (tenant_id, thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
);

DO $$
DECLARE
    moved bigint;
    kept bigint;
BEGIN
    INSERT INTO public.lg_checkpoints (
        thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata,
        created_at, tenant_id
    )
    SELECT DISTINCT ON (c.tenant_id, c.thread_id, c.checkpoint_ns, c.checkpoint_id)
        c.thread_id, c.checkpoint_ns, c.checkpoint_id, c.parent_checkpoint_id, c.checkpoint,
        c.metadata, c.created_at, c.tenant_id
    FROM public.lg_checkpoints_partitioned AS c
    ORDER BY c.tenant_id, c.thread_id, c.checkpoint_ns, c.checkpoint_id, c.stored_at DESC;
    GET DIAGNOSTICS moved = ROW_COUNT;
    SELECT count(DISTINCT (c.tenant_id, c.thread_id, c.checkpoint_ns, c.checkpoint_id)) INTO kept
    FROM public.lg_checkpoints_partitioned AS c;
    IF moved <> kept THEN
        RAISE EXCEPTION 'lg_checkpoints conversion moved % of % rows', moved, kept;
    END IF;

    -- The foreign key checks each delta at the end of the statement: every
    -- base is in by then.
    INSERT INTO public.lg_blobs (
        thread_id, checkpoint_ns, channel, version, type, base_version, item_count, blob,
        tenant_id
    )
    SELECT DISTINCT ON (b.tenant_id, b.thread_id, b.checkpoint_ns, b.channel, b.version)
        b.thread_id, b.checkpoint_ns, b.channel, b.version, b.type, b.base_version,
        b.item_count, b.blob, b.tenant_id
    FROM public.lg_blobs_partitioned AS b
    ORDER BY b.tenant_id, b.thread_id, b.checkpoint_ns, b.channel, b.version, b.stored_at DESC;
    GET DIAGNOSTICS moved = ROW_COUNT;
    SELECT count(DISTINCT (b.tenant_id, b.thread_id, b.checkpoint_ns, b.channel, b.version))
    INTO kept
    FROM public.lg_blobs_partitioned AS b;
    IF moved <> kept THEN
        RAISE EXCEPTION 'lg_blobs conversion moved % of % rows', moved, kept;
    END IF;

    INSERT INTO public.lg_writes (
        thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, blob, task_path,
        tenant_id
    )
    SELECT DISTINCT ON (w.tenant_id, w.thread_id, w.checkpoint_ns, w.checkpoint_id, w.task_id, w.idx)
        w.thread_id, w.checkpoint_ns, w.checkpoint_id, w.task_id, w.idx, w.channel, w.type,
        w.blob, w.task_path, w.tenant_id
    FROM public.lg_writes_partitioned AS w
    ORDER BY
        w.tenant_id, w.thread_id, w.checkpoint_ns, w.checkpoint_id, w.task_id, w.idx,
        w.stored_at DESC;
    GET DIAGNOSTICS moved = ROW_COUNT;
    SELECT
        count(DISTINCT (w.tenant_id, w.thread_id, w.checkpoint_ns, w.checkpoint_id, w.task_id, w.idx))
    INTO kept
    FROM public.lg_writes_partitioned AS w;
    IF moved <> kept THEN
        RAISE EXCEPTION 'lg_writes conversion moved % of % rows', moved, kept;
    END IF;
END;
$$;
-- The partitions go with their parents, the triggers with lg_blobs.
DROP TABLE public.lg_writes_partitioned;
DROP TABLE public.lg_blobs_partitioned;
DROP TABLE public.lg_checkpoints_partitioned;
DROP FUNCTION public.lg_thread_lock_key(uuid, text);
DROP FUNCTION public.lg_blobs_base_exists();
DROP FUNCTION public.lg_blobs_base_kept();
DROP FUNCTION toolkit_partitions.horizon(regclass);
DROP FUNCTION toolkit_partitions.maintain_now();
DO $$
BEGIN
    PERFORM public.toolkit_make_tenant_owned(owned::regclass)
    FROM unnest(ARRAY['public.lg_checkpoints', 'public.lg_blobs', 'public.lg_writes']) AS owned;
END;
$$;

-- Retention without bloat: the inbox partitioned by time.
-- The inbox records each message a consumer applied, so a redelivery finds
-- its record and changes nothing. Forgetting old records was a DELETE (one
-- dead row version each, vacuum held back by any long transaction); now
-- `toolkit maintain` drops whole partitions once their range is older than
-- the retention (toolkit_partitions.policy: 14 days), no DEFAULT partition.
--
-- The partition key is the message's creation time (created_at): the AMQP
-- timestamp the publisher set (the relay: the outbox row's created_at), the
-- same on every delivery of the message: a broker redelivery, a trip down
-- the retry ladder, the relay publishing a row again after a lost commit.
-- So the key (tenant_id, consumer, message_id, created_at) still catches
-- every redelivery. A message whose creation time falls in a range the
-- inbox no longer holds (its partition dropped, and with it any record of
-- the message) finds no partition: the insert fails and the consumer
-- refuses the message (parks it), never applies it.
-- depends: 0011.outbox-partitions

INSERT INTO toolkit_partitions.policy (parent, partition_interval, premake, retention)
VALUES ('public.inbox', interval '1 day', 3, interval '14 days');

-- The unpartitioned inbox steps aside, its names freed for the new one.
ALTER TABLE public.inbox RENAME TO inbox_before_0012;
ALTER TABLE public.inbox_before_0012 RENAME CONSTRAINT inbox_pkey TO inbox_before_0012_pkey;
ALTER INDEX public.inbox_received_at_idx RENAME TO inbox_before_0012_received_at_idx;
-- The policies bind the owner too (FORCE): lifted, so every row is copied.
ALTER TABLE public.inbox_before_0012 NO FORCE ROW LEVEL SECURITY;

-- received_at stays (when the consumer applied it); its index served the
-- DELETE that retention no longer is, so it goes.
CREATE TABLE public.inbox (
    consumer text NOT NULL
    CONSTRAINT inbox_consumer_check CHECK (consumer ~ '^[a-z][a-z0-9_.-]{0,199}$'),
    message_id uuid NOT NULL,
    queue text NOT NULL CONSTRAINT inbox_queue_check CHECK (char_length(queue) BETWEEN 1 AND 255),
    received_at timestamptz NOT NULL DEFAULT now(),
    tenant_id uuid NOT NULL DEFAULT public.toolkit_tenant_or_default()
    CONSTRAINT inbox_tenant_id_fkey REFERENCES public.tenants (id),
    created_at timestamptz NOT NULL,
    CONSTRAINT inbox_pkey PRIMARY KEY (tenant_id, consumer, message_id, created_at)
) PARTITION BY RANGE (created_at);

-- Every existing row moves. Its creation time is the one its redelivery
-- will carry when the message came from this database's outbox (the relay
-- sends created_at to the second); else the best known, received_at.
-- One partition always holds everything before the current interval, so a
-- message created before this migration still finds a partition (and any
-- record of it) until that partition expires.
DO $$
DECLARE
    moved bigint;
    kept bigint;
BEGIN
    PERFORM toolkit_partitions.create_partition(
        'public.inbox',
        NULL,
        toolkit_partitions.floor_time(
            now(),
            (SELECT p.partition_interval FROM toolkit_partitions.policy AS p
                WHERE p.parent = 'public.inbox')
        )
    );
    PERFORM toolkit_partitions.create_coming('public.inbox', now());
    INSERT INTO public.inbox (consumer, message_id, queue, received_at, tenant_id, created_at)
    SELECT
        i.consumer, i.message_id, i.queue, i.received_at, i.tenant_id,
        coalesce(
            (SELECT min(pg_catalog.date_trunc('second', o.created_at)) FROM public.outbox AS o
                WHERE o.id = i.message_id AND o.tenant_id = i.tenant_id),
            i.received_at
        )
    FROM public.inbox_before_0012 AS i;
    GET DIAGNOSTICS moved = ROW_COUNT;
    SELECT count(*) INTO kept FROM public.inbox_before_0012;
    IF moved <> kept THEN
        RAISE EXCEPTION 'inbox conversion moved % of % rows', moved, kept;
    END IF;
END;
$$;
DROP TABLE public.inbox_before_0012;
-- Records that consumer applies message_id of the transaction's tenant;
-- false if it already had. The key alone would miss one message published
-- twice under its id with different timestamps (a caller publishing it
-- again itself), so the record is checked in every partition kept, under a
-- transaction-scoped lock on (tenant, consumer, message_id): two deliveries
-- of one message take turns, and the second (each statement of a function
-- sees what committed before it, under READ COMMITTED) finds the first.
-- SECURITY INVOKER: the caller's policies bind the read and the insert.
CREATE FUNCTION public.toolkit_inbox_record(
    consumer text, message_id uuid, queue text, created_at timestamptz
) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tenant constant uuid := public.toolkit_tenant_or_default();
BEGIN
    PERFORM pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtextextended(
            tenant::text || '/' || consumer || '/' || message_id::text, 12
        )
    );
    IF EXISTS (
        SELECT 1 FROM public.inbox AS i
        WHERE
            i.tenant_id = tenant AND i.consumer = toolkit_inbox_record.consumer
            AND i.message_id = toolkit_inbox_record.message_id
    ) THEN
        RETURN false;
    END IF;
    INSERT INTO public.inbox AS i (consumer, message_id, queue, created_at)
    VALUES (
        toolkit_inbox_record.consumer, toolkit_inbox_record.message_id,
        toolkit_inbox_record.queue, toolkit_inbox_record.created_at
    )
    ON CONFLICT ON CONSTRAINT inbox_pkey DO NOTHING;
    RETURN FOUND;
END;
$$;

-- Row level security on the parent; the partitions are their owner's alone.
DO $$
BEGIN
    PERFORM public.toolkit_make_tenant_owned('public.inbox');
END;
$$;

-- Reverts 0012.inbox-partitions: the unpartitioned inbox of 0009, exactly,
-- holding every row of every partition. Two records of one message with
-- different creation times (only a producer publishing one message_id twice
-- makes them) become one: the earliest received is kept.

DROP FUNCTION public.toolkit_inbox_record(text, uuid, text, timestamptz);
ALTER TABLE public.inbox NO FORCE ROW LEVEL SECURITY;
ALTER TABLE public.inbox RENAME TO inbox_partitioned;
ALTER TABLE public.inbox_partitioned RENAME CONSTRAINT inbox_pkey TO inbox_partitioned_pkey;

CREATE TABLE public.inbox (
    consumer text NOT NULL
    CONSTRAINT inbox_consumer_check CHECK (consumer ~ '^[a-z][a-z0-9_.-]{0,199}$'),
    message_id uuid NOT NULL,
    queue text NOT NULL CONSTRAINT inbox_queue_check CHECK (char_length(queue) BETWEEN 1 AND 255),
    received_at timestamptz NOT NULL DEFAULT now(),
    tenant_id uuid NOT NULL DEFAULT public.toolkit_tenant_or_default()
    CONSTRAINT inbox_tenant_id_fkey REFERENCES public.tenants (id),
    CONSTRAINT inbox_pkey PRIMARY KEY (tenant_id, consumer, message_id)
);
CREATE INDEX inbox_received_at_idx ON public.inbox (received_at);

INSERT INTO public.inbox (consumer, message_id, queue, received_at, tenant_id)
SELECT DISTINCT ON (i.tenant_id, i.consumer, i.message_id)
    i.consumer, i.message_id, i.queue, i.received_at, i.tenant_id
FROM public.inbox_partitioned AS i
ORDER BY i.tenant_id, i.consumer, i.message_id, i.received_at;
-- The partitions go with their parent.
DROP TABLE public.inbox_partitioned;
DELETE FROM toolkit_partitions.policy WHERE parent = 'public.inbox';
DO $$
BEGIN
    PERFORM public.toolkit_make_tenant_owned('public.inbox');
END;
$$;

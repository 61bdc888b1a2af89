-- Reverts 0011.outbox-partitions: the unpartitioned outbox of 0009, exactly,
-- holding every row of every partition.

ALTER TABLE public.outbox NO FORCE ROW LEVEL SECURITY;
ALTER TABLE public.outbox RENAME TO outbox_partitioned;
ALTER TABLE public.outbox_partitioned
RENAME CONSTRAINT outbox_pkey TO outbox_partitioned_pkey;
ALTER INDEX public.outbox_unsent_idx RENAME TO outbox_partitioned_unsent_idx;
ALTER INDEX public.outbox_sent_at_idx RENAME TO outbox_partitioned_sent_at_idx;
ALTER INDEX public.outbox_tenant_seq_idx RENAME TO outbox_partitioned_tenant_seq_idx;
ALTER SEQUENCE public.outbox_seq_seq RENAME TO outbox_partitioned_seq_seq;

CREATE TABLE public.outbox (
    -- Named as 0004 named them: the partitioned table still holds those names.
    id uuid CONSTRAINT outbox_pkey PRIMARY KEY DEFAULT gen_random_uuid(),
    seq bigint GENERATED ALWAYS AS IDENTITY CONSTRAINT outbox_seq_key UNIQUE,
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
    CONSTRAINT outbox_tenant_id_fkey REFERENCES public.tenants (id)
);
CREATE INDEX outbox_unsent_idx ON public.outbox (seq) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent_at_idx ON public.outbox (sent_at) WHERE sent_at IS NOT NULL;
CREATE INDEX outbox_tenant_seq_idx ON public.outbox (tenant_id, seq);
CREATE TRIGGER outbox_notify AFTER INSERT ON public.outbox
FOR EACH STATEMENT EXECUTE FUNCTION public.outbox_notify();
GRANT SELECT, DELETE ON public.outbox TO toolkit_relay;
GRANT UPDATE (sent_at, attempts, last_error, available_at) ON public.outbox TO toolkit_relay;

DO $$
DECLARE
    moved bigint;
    kept bigint;
BEGIN
    INSERT INTO public.outbox (
        id, seq, queue, message_type, body, headers, attempts, last_error, available_at,
        sent_at, created_at, tenant_id
    ) OVERRIDING SYSTEM VALUE
    SELECT
        o.id, o.seq, o.queue, o.message_type, o.body, o.headers, o.attempts, o.last_error,
        o.available_at, o.sent_at, o.created_at, o.tenant_id
    FROM public.outbox_partitioned AS o;
    GET DIAGNOSTICS moved = ROW_COUNT;
    SELECT count(*) INTO kept FROM public.outbox_partitioned;
    IF moved <> kept THEN
        RAISE EXCEPTION 'outbox conversion moved % of % rows', moved, kept;
    END IF;
    PERFORM pg_catalog.setval(
        'public.outbox_seq_seq',
        greatest(
            (SELECT s.last_value FROM public.outbox_partitioned_seq_seq AS s),
            coalesce((SELECT max(o.seq) FROM public.outbox_partitioned AS o), 1)
        ),
        (SELECT s.is_called FROM public.outbox_partitioned_seq_seq AS s) OR kept > 0
    );
END;
$$;
-- The partitions go with their parent.
DROP TABLE public.outbox_partitioned;
DO $$
BEGIN
    PERFORM public.toolkit_make_tenant_owned('public.outbox');
END;
$$;
DROP SCHEMA toolkit_partitions CASCADE;

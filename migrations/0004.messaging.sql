-- Messaging: the transactional outbox and the consumers' inbox.
-- The outbox holds messages written in the same transaction as the change
-- they announce; a relay publishes them and marks them sent after the
-- broker's confirm. The inbox records each message a consumer applied, in
-- the transaction of its effect, so a redelivery changes nothing.
-- depends: 0003.files

CREATE TABLE outbox (
    -- The AMQP message_id: a redelivered copy carries the same id.
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Claim order only; the relay never keeps an "id > last seen" cursor.
    seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    queue text NOT NULL CHECK (queue ~ '^[a-z][a-z0-9_.-]{0,199}$'),
    message_type text NOT NULL CHECK (char_length(message_type) BETWEEN 1 AND 200),
    body jsonb NOT NULL,
    headers jsonb NOT NULL DEFAULT '{}',
    attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error text CHECK (char_length(last_error) <= 2000),
    available_at timestamptz NOT NULL DEFAULT now(),
    sent_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- What the relay claims: unsent rows in enqueue order.
CREATE INDEX outbox_unsent_idx ON outbox (seq) WHERE sent_at IS NULL;
-- What pruning deletes: sent rows past their retention.
CREATE INDEX outbox_sent_at_idx ON outbox (sent_at) WHERE sent_at IS NOT NULL;

-- Wakes the relays. Identical notifications in one transaction are folded
-- by PostgreSQL, so a transaction sends at most one however many rows it
-- enqueues, and only when it commits.
CREATE FUNCTION outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('toolkit_outbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- One row per (consumer, message) applied. The natural key is the primary
-- key: the insert that finds it taken is how a duplicate is recognised.
CREATE TABLE inbox (
    consumer text NOT NULL CHECK (consumer ~ '^[a-z][a-z0-9_.-]{0,199}$'),
    message_id uuid NOT NULL,
    queue text NOT NULL CHECK (char_length(queue) BETWEEN 1 AND 255),
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX inbox_received_at_idx ON inbox (received_at);

-- Reverts 0008.pinned-functions: the functions of 0001, 0004 and 0007 as
-- they were (no fixed search_path, unqualified names, an unbounded wait for
-- the chain lock), and toolkit_app may UPDATE every column of users again.
DROP FUNCTION IF EXISTS set_user_password_hash(uuid, text);
REVOKE UPDATE (
    id, email, display_name, role, is_active, version, created_at, updated_at
) ON users FROM toolkit_app;
GRANT UPDATE ON users TO toolkit_app;

CREATE OR REPLACE FUNCTION user_credentials(lookup_email text)
RETURNS TABLE (id uuid, email text, password_hash text, is_active boolean)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT u.id, u.email, u.password_hash, u.is_active
    FROM public.users AS u
    WHERE lower(u.email) = lower(lookup_email)
$$;

CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('toolkit_outbox', '');
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % rejected', tg_op
    USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE OR REPLACE FUNCTION audit_events_chain() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    last_seq bigint;
    last_hash bytea;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('toolkit.audit_events'));
    SELECT a.seq, a.hash INTO last_seq, last_hash
    FROM audit_events AS a ORDER BY a.seq DESC LIMIT 1;
    NEW.seq := coalesce(last_seq, 0) + 1;
    NEW.prev_hash := coalesce(last_hash, '\x'::bytea);
    NEW.created_at := now();
    NEW.hash := audit_event_hash(
        NEW.prev_hash, NEW.seq, NEW.id, NEW.actor_id, NEW.action,
        NEW.entity, NEW.entity_id, NEW.details, NEW.created_at
    );
    RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION audit_event_hash(
    prev_hash bytea, seq bigint, id uuid, actor_id uuid, action text,
    entity text, entity_id uuid, details jsonb, created_at timestamptz
) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT sha256(
        prev_hash || convert_to(
            concat_ws(
                '|', seq::text, id::text, coalesce(actor_id::text, ''), action,
                entity, coalesce(entity_id::text, ''), details::text,
                to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US')
            ),
            'UTF8'
        )
    )
$$;

CREATE OR REPLACE FUNCTION toolkit_touch_row() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    NEW.version := OLD.version + 1;
    RETURN NEW;
END;
$$;

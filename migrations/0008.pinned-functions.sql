-- Every toolkit function runs with a fixed search_path (pg_temp last) and
-- names what it touches by schema, so a session cannot steer it with its
-- own objects: before this, a TEMP table named audit_events decided the
-- chain trigger's seq and prev_hash (a forged link, or a huge seq that made
-- every later audited write fail). The chain trigger also waits at most
-- 10 seconds for the chain lock and then names the cause. And toolkit_app
-- may no longer UPDATE users.password_hash: set_user_password_hash() is
-- the one way to change it.
-- depends: 0007.least-privilege

CREATE OR REPLACE FUNCTION public.toolkit_touch_row() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    NEW.updated_at := pg_catalog.now();
    NEW.version := OLD.version + 1;
    RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION public.audit_event_hash(
    prev_hash bytea, seq bigint, id uuid, actor_id uuid, action text,
    entity text, entity_id uuid, details jsonb, created_at timestamptz
) RETURNS bytea
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT pg_catalog.sha256(
        prev_hash || pg_catalog.convert_to(
            pg_catalog.concat_ws(
                '|', seq::text, id::text, coalesce(actor_id::text, ''), action,
                entity, coalesce(entity_id::text, ''), details::text,
                pg_catalog.to_char(
                    created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'
                )
            ),
            'UTF8'
        )
    )
$$;

-- Links a new audit row to the chain; the advisory lock orders writers.
-- The lock is held until the writer's transaction ends, so a session that
-- keeps one open (or takes the lock itself) stops every audited write: the
-- wait is bounded by the caller's lock_timeout or 10 seconds, whichever is
-- shorter, and then fails with lock_not_available naming the holder.
CREATE OR REPLACE FUNCTION public.audit_events_chain() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    chain_key constant bigint := pg_catalog.hashtext('toolkit.audit_events');
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
                'event or by taking advisory lock % itself; this audit event was '
                'not written',
                bound, coalesce(holder::text, 'unknown'), chain_key
            USING
                ERRCODE = 'lock_not_available',
                HINT = 'end that session''s transaction, or pg_terminate_backend() it';
        END;
    END IF;
    SELECT a.seq, a.hash INTO last_seq, last_hash
    FROM public.audit_events AS a
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

CREATE OR REPLACE FUNCTION public.audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % rejected', tg_op
    USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE OR REPLACE FUNCTION public.outbox_notify() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('toolkit_outbox', '');
    RETURN NULL;
END;
$$;

-- The one way to read the hash (sql/users.sql: users.get_credentials): one
-- exact email, at most one row. It hides the column from every other query;
-- it does not stop a role that runs arbitrary SQL from calling it for each
-- email it can read (see the README, Security).
CREATE OR REPLACE FUNCTION public.user_credentials(lookup_email text)
RETURNS TABLE (id uuid, email text, password_hash text, is_active boolean)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT u.id, u.email, u.password_hash, u.is_active
    FROM public.users AS u
    WHERE pg_catalog.lower(u.email) = pg_catalog.lower(lookup_email)
$$;

-- Every column of users but password_hash may be updated. A later
-- migration that adds a column to users must grant UPDATE on it here too.
REVOKE UPDATE ON public.users FROM toolkit_app;
GRANT UPDATE (
    id, email, display_name, role, is_active, version, created_at, updated_at
) ON public.users TO toolkit_app;

-- The one way to change the hash (sql/users.sql: users.set_password_hash):
-- one user by id per call; true if that user exists.
CREATE FUNCTION public.set_user_password_hash(user_id uuid, new_hash text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    UPDATE public.users AS u SET password_hash = new_hash WHERE u.id = user_id;
    RETURN found;
END;
$$;
REVOKE ALL ON FUNCTION public.set_user_password_hash(uuid, text) FROM PUBLIC;  -- noqa: CP02
GRANT EXECUTE ON FUNCTION public.set_user_password_hash(uuid, text) TO toolkit_app;

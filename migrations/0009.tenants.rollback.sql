-- Reverts 0009.tenants: the single-tenant schema of 0008, exactly. Refused,
-- before anything changes, while rows of a tenant other than the default
-- one exist: rolling back would merge them into one workspace.
-- The role toolkit_relay stays (it is cluster-wide and may serve other
-- databases); its rights in this database go.

-- The policies bind the owner too (FORCE): lift them first, so the count
-- below sees every row.
DO $$
DECLARE
    bound text;
BEGIN
    FOREACH bound IN ARRAY ARRAY[
        'memberships', 'agents', 'workflows', 'executions', 'checkpoints', 'sessions',
        'audit_events', 'files', 'outbox', 'inbox', 'lg_checkpoints', 'lg_blobs',
        'lg_writes', 'tenants', 'users'
    ] LOOP
        EXECUTE format('DROP POLICY tenant_select ON public.%I', bound);
        EXECUTE format('DROP POLICY tenant_insert ON public.%I', bound);
        EXECUTE format('DROP POLICY tenant_update ON public.%I', bound);
        EXECUTE format('DROP POLICY tenant_delete ON public.%I', bound);
        EXECUTE format(
            'ALTER TABLE public.%I NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY',
            bound
        );
    END LOOP;
END;
$$;

DO $$
DECLARE
    owned text;
    counted bigint;
    total bigint := 0;
    found text[] := '{}';
BEGIN
    FOREACH owned IN ARRAY ARRAY[
        'memberships', 'agents', 'workflows', 'executions', 'checkpoints', 'sessions',
        'audit_events', 'files', 'outbox', 'inbox', 'lg_checkpoints', 'lg_blobs', 'lg_writes'
    ] LOOP
        EXECUTE format(
            'SELECT count(*) FROM public.%I '
            'WHERE tenant_id <> ''00000000-0000-0000-0000-000000000000''',
            owned
        ) INTO counted;
        IF counted > 0 THEN
            total := total + counted;
            found := found || format('%s in %s', counted, owned);
        END IF;
    END LOOP;
    SELECT count(*) INTO counted
    FROM public.tenants WHERE id <> '00000000-0000-0000-0000-000000000000';
    IF counted > 0 THEN
        total := total + counted;
        found := found || format('%s in tenants', counted);
    END IF;
    IF total > 0 THEN
        RAISE EXCEPTION
            'cannot roll back 0009.tenants: % row(s) belong to tenants other than the '
            'default one (%); rolling it back would merge them into one workspace, '
            'so nothing was changed',
            total, array_to_string(found, ', ')
        USING HINT = 'export or delete the other tenants'' rows (and their tenants rows) first';
    END IF;
END;
$$;

REVOKE ALL ON public.outbox FROM toolkit_relay;
REVOKE USAGE ON SCHEMA public FROM toolkit_relay;

DROP FUNCTION public.toolkit_make_tenant_owned(regclass);
DROP FUNCTION public.create_user(text, text, text, boolean, text);

CREATE OR REPLACE FUNCTION public.user_credentials(lookup_email text)
RETURNS TABLE (id uuid, email text, password_hash text, is_active boolean)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT u.id, u.email, u.password_hash, u.is_active
    FROM public.users AS u
    WHERE pg_catalog.lower(u.email) = pg_catalog.lower(lookup_email)
$$;

CREATE OR REPLACE FUNCTION public.set_user_password_hash(user_id uuid, new_hash text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    UPDATE public.users AS u SET password_hash = new_hash WHERE u.id = user_id;
    RETURN found;
END;
$$;
DROP FUNCTION public.toolkit_caller_tenant();

-- The one chain of 0008.
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
DROP FUNCTION public.audit_chain_lock_key(uuid);
ALTER TABLE public.audit_events DROP CONSTRAINT audit_events_seq_key;
ALTER TABLE public.audit_events ADD CONSTRAINT audit_events_seq_key UNIQUE (seq);

-- The trigram indexes of 0002, where it made them.
DO $$
BEGIN
    IF to_regclass('public.agents_name_trgm_idx') IS NOT NULL THEN
        DROP INDEX public.agents_name_trgm_idx;
        CREATE INDEX agents_name_trgm_idx ON public.agents USING gin (name gin_trgm_ops);
        DROP INDEX public.workflows_name_trgm_idx;
        CREATE INDEX workflows_name_trgm_idx ON public.workflows USING gin (name gin_trgm_ops);
        DROP INDEX public.sessions_title_trgm_idx;
        CREATE INDEX sessions_title_trgm_idx ON public.sessions USING gin (title gin_trgm_ops);
    END IF;
END;
$$;

-- The indexes of 0001, 0003 and 0006.
DROP INDEX public.agents_owner_created_at_idx;
CREATE INDEX agents_owner_created_at_idx ON public.agents (owner_id, created_at, id);
DROP INDEX public.agents_created_at_idx;
CREATE INDEX agents_created_at_idx ON public.agents (created_at, id);
DROP INDEX public.agents_name_idx;
CREATE INDEX agents_name_idx ON public.agents (name, id);
DROP INDEX public.agents_type_created_at_idx;
CREATE INDEX agents_type_created_at_idx ON public.agents (type, created_at, id);
DROP INDEX public.agents_active_created_at_idx;
CREATE INDEX agents_active_created_at_idx ON public.agents (created_at, id) WHERE is_active;

DROP INDEX public.workflows_owner_created_at_idx;
CREATE INDEX workflows_owner_created_at_idx ON public.workflows (owner_id, created_at, id);
DROP INDEX public.workflows_agent_idx;
CREATE INDEX workflows_agent_idx ON public.workflows (agent_id);
DROP INDEX public.workflows_created_at_idx;
CREATE INDEX workflows_created_at_idx ON public.workflows (created_at, id);
DROP INDEX public.workflows_name_idx;
CREATE INDEX workflows_name_idx ON public.workflows (name, id);
DROP INDEX public.workflows_status_created_at_idx;
CREATE INDEX workflows_status_created_at_idx ON public.workflows (status, created_at, id);

DROP INDEX public.executions_workflow_created_at_idx;
CREATE INDEX executions_workflow_created_at_idx
ON public.executions (workflow_id, created_at, id);
DROP INDEX public.executions_created_at_idx;
CREATE INDEX executions_created_at_idx ON public.executions (created_at, id);
DROP INDEX public.executions_status_created_at_idx;
CREATE INDEX executions_status_created_at_idx ON public.executions (status, created_at, id);
DROP INDEX public.executions_pending_idx;
CREATE INDEX executions_pending_idx ON public.executions (created_at, id)
WHERE status = 'pending';

DROP INDEX public.checkpoints_parent_idx;
CREATE INDEX checkpoints_parent_idx ON public.checkpoints (parent_id);

DROP INDEX public.sessions_user_created_at_idx;
CREATE INDEX sessions_user_created_at_idx ON public.sessions (user_id, created_at, id);
DROP INDEX public.sessions_agent_created_at_idx;
CREATE INDEX sessions_agent_created_at_idx ON public.sessions (agent_id, created_at, id);
DROP INDEX public.sessions_created_at_idx;
CREATE INDEX sessions_created_at_idx ON public.sessions (created_at, id);

DROP INDEX public.audit_events_entity_idx;
CREATE INDEX audit_events_entity_idx ON public.audit_events (entity, created_at, id);
DROP INDEX public.audit_events_entity_id_idx;
CREATE INDEX audit_events_entity_id_idx ON public.audit_events (entity_id);
DROP INDEX public.audit_events_actor_idx;
CREATE INDEX audit_events_actor_idx ON public.audit_events (actor_id, created_at, id);
DROP INDEX public.audit_events_created_at_idx;
CREATE INDEX audit_events_created_at_idx ON public.audit_events (created_at, id);

DROP INDEX public.files_owner_created_at_idx;
CREATE INDEX files_owner_created_at_idx ON public.files (owner_id, created_at, id);
DROP INDEX public.files_created_at_idx;
CREATE INDEX files_created_at_idx ON public.files (created_at, id);
DROP INDEX public.files_execution_idx;
CREATE INDEX files_execution_idx ON public.files (execution_id);
DROP INDEX public.files_session_idx;
CREATE INDEX files_session_idx ON public.files (session_id);
DROP INDEX public.files_staged_idx;
CREATE INDEX files_staged_idx ON public.files (created_at) WHERE status = 'staged';

DROP INDEX public.outbox_tenant_seq_idx;

DROP INDEX public.lg_checkpoints_run_id_idx;
CREATE INDEX lg_checkpoints_run_id_idx ON public.lg_checkpoints ((metadata ->> 'run_id'))
WHERE metadata ? 'run_id';
DROP INDEX public.lg_blobs_base_idx;
CREATE INDEX lg_blobs_base_idx ON public.lg_blobs (thread_id, checkpoint_ns, channel, base_version)
WHERE base_version IS NOT NULL;

-- The keys of 0001, 0004 and 0006.
ALTER TABLE public.lg_blobs DROP CONSTRAINT lg_blobs_base_fkey;
ALTER TABLE public.lg_blobs DROP CONSTRAINT lg_blobs_pkey;
ALTER TABLE public.lg_blobs ADD PRIMARY KEY (thread_id, checkpoint_ns, channel, version);
ALTER TABLE public.lg_blobs ADD CONSTRAINT lg_blobs_base_fkey
FOREIGN KEY (thread_id, checkpoint_ns, channel, base_version)
REFERENCES public.lg_blobs (thread_id, checkpoint_ns, channel, version);
ALTER TABLE public.lg_writes DROP CONSTRAINT lg_writes_pkey;
ALTER TABLE public.lg_writes
ADD PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, task_id, idx);
ALTER TABLE public.lg_checkpoints DROP CONSTRAINT lg_checkpoints_pkey;
ALTER TABLE public.lg_checkpoints ADD PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id);
ALTER TABLE public.inbox DROP CONSTRAINT inbox_pkey;
ALTER TABLE public.inbox ADD PRIMARY KEY (consumer, message_id);

ALTER TABLE public.checkpoints DROP CONSTRAINT checkpoints_execution_sequence_key;
ALTER TABLE public.checkpoints ADD CONSTRAINT checkpoints_execution_sequence_key
UNIQUE (execution_id, sequence);

ALTER TABLE public.files DROP CONSTRAINT files_session_id_fkey;
ALTER TABLE public.files ADD CONSTRAINT files_session_id_fkey
FOREIGN KEY (session_id) REFERENCES public.sessions (id) ON DELETE SET NULL;
ALTER TABLE public.files DROP CONSTRAINT files_execution_id_fkey;
ALTER TABLE public.files ADD CONSTRAINT files_execution_id_fkey
FOREIGN KEY (execution_id) REFERENCES public.executions (id) ON DELETE SET NULL;
ALTER TABLE public.files DROP CONSTRAINT files_owner_id_fkey;
ALTER TABLE public.files ADD CONSTRAINT files_owner_id_fkey
FOREIGN KEY (owner_id) REFERENCES public.users (id) ON DELETE CASCADE;

ALTER TABLE public.sessions DROP CONSTRAINT sessions_agent_id_fkey;
ALTER TABLE public.sessions ADD CONSTRAINT sessions_agent_id_fkey
FOREIGN KEY (agent_id) REFERENCES public.agents (id) ON DELETE CASCADE;
ALTER TABLE public.sessions DROP CONSTRAINT sessions_user_id_fkey;
ALTER TABLE public.sessions ADD CONSTRAINT sessions_user_id_fkey
FOREIGN KEY (user_id) REFERENCES public.users (id) ON DELETE CASCADE;

ALTER TABLE public.checkpoints DROP CONSTRAINT checkpoints_parent_id_fkey;
ALTER TABLE public.checkpoints ADD CONSTRAINT checkpoints_parent_id_fkey
FOREIGN KEY (parent_id) REFERENCES public.checkpoints (id) ON DELETE SET NULL;
ALTER TABLE public.checkpoints DROP CONSTRAINT checkpoints_execution_id_fkey;
ALTER TABLE public.checkpoints ADD CONSTRAINT checkpoints_execution_id_fkey
FOREIGN KEY (execution_id) REFERENCES public.executions (id) ON DELETE CASCADE;

ALTER TABLE public.executions DROP CONSTRAINT executions_workflow_id_fkey;
ALTER TABLE public.executions ADD CONSTRAINT executions_workflow_id_fkey
FOREIGN KEY (workflow_id) REFERENCES public.workflows (id) ON DELETE CASCADE;

ALTER TABLE public.workflows DROP CONSTRAINT workflows_agent_id_fkey;
ALTER TABLE public.workflows ADD CONSTRAINT workflows_agent_id_fkey
FOREIGN KEY (agent_id) REFERENCES public.agents (id) ON DELETE SET NULL;
ALTER TABLE public.workflows DROP CONSTRAINT workflows_owner_id_fkey;
ALTER TABLE public.workflows ADD CONSTRAINT workflows_owner_id_fkey
FOREIGN KEY (owner_id) REFERENCES public.users (id) ON DELETE CASCADE;

ALTER TABLE public.agents DROP CONSTRAINT agents_owner_id_fkey;
ALTER TABLE public.agents ADD CONSTRAINT agents_owner_id_fkey
FOREIGN KEY (owner_id) REFERENCES public.users (id) ON DELETE CASCADE;

ALTER TABLE public.sessions DROP CONSTRAINT sessions_tenant_id_id_key;
ALTER TABLE public.checkpoints DROP CONSTRAINT checkpoints_tenant_id_id_key;
ALTER TABLE public.executions DROP CONSTRAINT executions_tenant_id_id_key;
ALTER TABLE public.workflows DROP CONSTRAINT workflows_tenant_id_id_key;
ALTER TABLE public.agents DROP CONSTRAINT agents_tenant_id_id_key;

ALTER TABLE public.lg_writes DROP COLUMN tenant_id;
ALTER TABLE public.lg_blobs DROP COLUMN tenant_id;
ALTER TABLE public.lg_checkpoints DROP COLUMN tenant_id;
ALTER TABLE public.inbox DROP COLUMN tenant_id;
ALTER TABLE public.outbox DROP COLUMN tenant_id;
ALTER TABLE public.files DROP COLUMN tenant_id;
ALTER TABLE public.audit_events DROP COLUMN tenant_id;
ALTER TABLE public.sessions DROP COLUMN tenant_id;
ALTER TABLE public.checkpoints DROP COLUMN tenant_id;
ALTER TABLE public.executions DROP COLUMN tenant_id;
ALTER TABLE public.workflows DROP COLUMN tenant_id;
ALTER TABLE public.agents DROP COLUMN tenant_id;

DROP TABLE public.memberships;
DROP TABLE public.tenants;
DROP FUNCTION public.toolkit_tenant_or_default();
DROP FUNCTION public.toolkit_tenant();

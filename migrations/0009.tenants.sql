-- Tenants (workspaces) that the database enforces. Every tenant-owned table
-- carries tenant_id; composite keys make a row unable to reference another
-- tenant's row; and row level security, forced on the owner too, shows and
-- accepts only the rows of the transaction's tenant, the setting
-- toolkit.tenant_id that Database.transaction(tenant=...) sets with
-- set_config(..., true). Without a tenant, a role the policies bind is
-- refused (SQLSTATE TN001) as soon as a statement examines a row of such a
-- table, never shown nothing (the toolkit's own queries, which name their
-- tenant too, before they examine any). Users are shared identities: a
-- tenant sees those with a membership in it.
-- An existing database is converted in place: every row goes to the default
-- tenant (00000000-0000-0000-0000-000000000000), which a superuser and
-- single-workspace use keep working in.
-- depends: 0008.pinned-functions

-- This migration runs without a tenant, so every default below yields the default tenant.
DO $$
BEGIN
    PERFORM pg_catalog.set_config('toolkit.tenant_id', '', true);
END;
$$;

-- The transaction's tenant; TN001 when none is set. Policies call it as
-- (SELECT public.toolkit_tenant()), an InitPlan run once per statement.
CREATE FUNCTION public.toolkit_tenant() RETURNS uuid
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    setting constant text := pg_catalog.current_setting('toolkit.tenant_id', true);
BEGIN
    IF setting IS NULL OR setting = '' THEN
        RAISE EXCEPTION
            'no tenant is set for this transaction: rows of tenant-owned tables are '
            'read and written only in a tenant''s transaction'
        USING
            ERRCODE = 'TN001',
            HINT = 'run it in Database.transaction(tenant=...)';
    END IF;
    RETURN setting::uuid;
END;
$$;

-- Every tenant_id's default: the transaction's tenant, else the default
-- tenant (a superuser or owner connection without one; the policies refuse
-- a role they bind that has none).
CREATE FUNCTION public.toolkit_tenant_or_default() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(
        nullif(pg_catalog.current_setting('toolkit.tenant_id', true), ''),
        '00000000-0000-0000-0000-000000000000'
    )::uuid
$$;

CREATE TABLE public.tenants (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now()
);
-- An operator (whom the policies do not bind) pages through every tenant.
CREATE INDEX tenants_created_at_idx ON public.tenants (created_at, id);
CREATE INDEX tenants_name_idx ON public.tenants (name, id);
INSERT INTO public.tenants (id, name)
VALUES ('00000000-0000-0000-0000-000000000000', 'default');

-- A user's place in a tenant. Its user comes second (deferred): the user's
-- own policies look for the membership, so create_user() writes it first.
CREATE TABLE public.memberships (
    tenant_id uuid NOT NULL DEFAULT public.toolkit_tenant_or_default()
    REFERENCES public.tenants (id),
    user_id uuid NOT NULL REFERENCES public.users (id) ON DELETE CASCADE
    DEFERRABLE INITIALLY DEFERRED,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX memberships_user_idx ON public.memberships (user_id);
INSERT INTO public.memberships (user_id) SELECT u.id FROM public.users AS u;
-- Checked now: a pending check would block the ALTER TABLEs below.
SET CONSTRAINTS public.memberships_user_id_fkey IMMEDIATE;

-- tenant_id on every tenant-owned table; existing rows take the default tenant.
ALTER TABLE public.agents ADD COLUMN tenant_id uuid NOT NULL
DEFAULT public.toolkit_tenant_or_default() REFERENCES public.tenants (id);
ALTER TABLE public.workflows ADD COLUMN tenant_id uuid NOT NULL
DEFAULT public.toolkit_tenant_or_default() REFERENCES public.tenants (id);
ALTER TABLE public.executions ADD COLUMN tenant_id uuid NOT NULL
DEFAULT public.toolkit_tenant_or_default() REFERENCES public.tenants (id);
ALTER TABLE public.checkpoints ADD COLUMN tenant_id uuid NOT NULL
DEFAULT public.toolkit_tenant_or_default() REFERENCES public.tenants (id);
ALTER TABLE public.sessions ADD COLUMN tenant_id uuid NOT NULL
DEFAULT public.toolkit_tenant_or_default() REFERENCES public.tenants (id);
ALTER TABLE public.audit_events ADD COLUMN tenant_id uuid NOT NULL
DEFAULT public.toolkit_tenant_or_default() REFERENCES public.tenants (id);
ALTER TABLE public.files ADD COLUMN tenant_id uuid NOT NULL
DEFAULT public.toolkit_tenant_or_default() REFERENCES public.tenants (id);
ALTER TABLE public.outbox ADD COLUMN tenant_id uuid NOT NULL
DEFAULT public.toolkit_tenant_or_default() REFERENCES public.tenants (id);
ALTER TABLE public.inbox ADD COLUMN tenant_id uuid NOT NULL
DEFAULT public.toolkit_tenant_or_default() REFERENCES public.tenants (id);
ALTER TABLE public.lg_checkpoints ADD COLUMN tenant_id uuid NOT NULL
DEFAULT public.toolkit_tenant_or_default() REFERENCES public.tenants (id);
ALTER TABLE public.lg_blobs ADD COLUMN tenant_id uuid NOT NULL
DEFAULT public.toolkit_tenant_or_default() REFERENCES public.tenants (id);
ALTER TABLE public.lg_writes ADD COLUMN tenant_id uuid NOT NULL
DEFAULT public.toolkit_tenant_or_default() REFERENCES public.tenants (id);

-- Composite keys: a reference carries the tenant, so it can only reach a
-- row of the same tenant. The foreign keys keep their names.
ALTER TABLE public.agents ADD CONSTRAINT agents_tenant_id_id_key UNIQUE (tenant_id, id);
ALTER TABLE public.workflows ADD CONSTRAINT workflows_tenant_id_id_key UNIQUE (tenant_id, id);
ALTER TABLE public.executions ADD CONSTRAINT executions_tenant_id_id_key UNIQUE (tenant_id, id);
ALTER TABLE public.checkpoints
ADD CONSTRAINT checkpoints_tenant_id_id_key UNIQUE (tenant_id, id);
ALTER TABLE public.sessions ADD CONSTRAINT sessions_tenant_id_id_key UNIQUE (tenant_id, id);

ALTER TABLE public.agents DROP CONSTRAINT agents_owner_id_fkey;
ALTER TABLE public.agents ADD CONSTRAINT agents_owner_id_fkey
FOREIGN KEY (tenant_id, owner_id) REFERENCES public.memberships (tenant_id, user_id)
ON DELETE CASCADE;

ALTER TABLE public.workflows DROP CONSTRAINT workflows_owner_id_fkey;
ALTER TABLE public.workflows ADD CONSTRAINT workflows_owner_id_fkey
FOREIGN KEY (tenant_id, owner_id) REFERENCES public.memberships (tenant_id, user_id)
ON DELETE CASCADE;
ALTER TABLE public.workflows DROP CONSTRAINT workflows_agent_id_fkey;
ALTER TABLE public.workflows ADD CONSTRAINT workflows_agent_id_fkey
FOREIGN KEY (tenant_id, agent_id) REFERENCES public.agents (tenant_id, id)
ON DELETE SET NULL (agent_id);

ALTER TABLE public.executions DROP CONSTRAINT executions_workflow_id_fkey;
ALTER TABLE public.executions ADD CONSTRAINT executions_workflow_id_fkey
FOREIGN KEY (tenant_id, workflow_id) REFERENCES public.workflows (tenant_id, id)
ON DELETE CASCADE;

ALTER TABLE public.checkpoints DROP CONSTRAINT checkpoints_execution_id_fkey;
ALTER TABLE public.checkpoints ADD CONSTRAINT checkpoints_execution_id_fkey
FOREIGN KEY (tenant_id, execution_id) REFERENCES public.executions (tenant_id, id)
ON DELETE CASCADE;
ALTER TABLE public.checkpoints DROP CONSTRAINT checkpoints_parent_id_fkey;
ALTER TABLE public.checkpoints ADD CONSTRAINT checkpoints_parent_id_fkey
FOREIGN KEY (tenant_id, parent_id) REFERENCES public.checkpoints (tenant_id, id)
ON DELETE SET NULL (parent_id);

ALTER TABLE public.sessions DROP CONSTRAINT sessions_user_id_fkey;
ALTER TABLE public.sessions ADD CONSTRAINT sessions_user_id_fkey
FOREIGN KEY (tenant_id, user_id) REFERENCES public.memberships (tenant_id, user_id)
ON DELETE CASCADE;
ALTER TABLE public.sessions DROP CONSTRAINT sessions_agent_id_fkey;
ALTER TABLE public.sessions ADD CONSTRAINT sessions_agent_id_fkey
FOREIGN KEY (tenant_id, agent_id) REFERENCES public.agents (tenant_id, id)
ON DELETE CASCADE;

ALTER TABLE public.files DROP CONSTRAINT files_owner_id_fkey;
ALTER TABLE public.files ADD CONSTRAINT files_owner_id_fkey
FOREIGN KEY (tenant_id, owner_id) REFERENCES public.memberships (tenant_id, user_id)
ON DELETE CASCADE;
ALTER TABLE public.files DROP CONSTRAINT files_execution_id_fkey;
ALTER TABLE public.files ADD CONSTRAINT files_execution_id_fkey
FOREIGN KEY (tenant_id, execution_id) REFERENCES public.executions (tenant_id, id)
ON DELETE SET NULL (execution_id);
ALTER TABLE public.files DROP CONSTRAINT files_session_id_fkey;
ALTER TABLE public.files ADD CONSTRAINT files_session_id_fkey
FOREIGN KEY (tenant_id, session_id) REFERENCES public.sessions (tenant_id, id)
ON DELETE SET NULL (session_id);

-- Checkpoint sequences are per execution, hence per tenant.
ALTER TABLE public.checkpoints DROP CONSTRAINT checkpoints_execution_sequence_key;
ALTER TABLE public.checkpoints ADD CONSTRAINT checkpoints_execution_sequence_key
UNIQUE (tenant_id, execution_id, sequence);

-- Inbox entries and LangGraph thread ids are per tenant: two tenants may
-- use the same consumer and message id, or the same thread id.
ALTER TABLE public.inbox DROP CONSTRAINT inbox_pkey;
ALTER TABLE public.inbox ADD PRIMARY KEY (tenant_id, consumer, message_id);
ALTER TABLE public.lg_checkpoints DROP CONSTRAINT lg_checkpoints_pkey;
ALTER TABLE public.lg_checkpoints
ADD PRIMARY KEY (tenant_id, thread_id, checkpoint_ns, checkpoint_id);
ALTER TABLE public.lg_writes DROP CONSTRAINT lg_writes_pkey;
ALTER TABLE public.lg_writes
ADD PRIMARY KEY (tenant_id, thread_id, checkpoint_ns, checkpoint_id, task_id, idx);
ALTER TABLE public.lg_blobs DROP CONSTRAINT lg_blobs_base_fkey;
ALTER TABLE public.lg_blobs DROP CONSTRAINT lg_blobs_pkey;
ALTER TABLE public.lg_blobs
ADD PRIMARY KEY (tenant_id, thread_id, checkpoint_ns, channel, version);
ALTER TABLE public.lg_blobs ADD CONSTRAINT lg_blobs_base_fkey
FOREIGN KEY (tenant_id, thread_id, checkpoint_ns, channel, base_version)
REFERENCES public.lg_blobs (tenant_id, thread_id, checkpoint_ns, channel, version);

-- Indexes that a tenant's queries filter or sort by lead with tenant_id
-- (the policy's tenant_id = $1 makes the rest of the index the sort order).
-- Sweeps an operator may run across every tenant keep theirs as they were:
-- outbox_unsent_idx, outbox_sent_at_idx, sessions_expires_at_idx,
-- executions_lease_idx, inbox_received_at_idx.
DROP INDEX public.agents_owner_created_at_idx;
CREATE INDEX agents_owner_created_at_idx ON public.agents (tenant_id, owner_id, created_at, id);
DROP INDEX public.agents_created_at_idx;
CREATE INDEX agents_created_at_idx ON public.agents (tenant_id, created_at, id);
DROP INDEX public.agents_name_idx;
CREATE INDEX agents_name_idx ON public.agents (tenant_id, name, id);
DROP INDEX public.agents_type_created_at_idx;
CREATE INDEX agents_type_created_at_idx ON public.agents (tenant_id, type, created_at, id);
DROP INDEX public.agents_active_created_at_idx;
CREATE INDEX agents_active_created_at_idx ON public.agents (tenant_id, created_at, id)
WHERE is_active;

DROP INDEX public.workflows_owner_created_at_idx;
CREATE INDEX workflows_owner_created_at_idx
ON public.workflows (tenant_id, owner_id, created_at, id);
DROP INDEX public.workflows_agent_idx;
CREATE INDEX workflows_agent_idx ON public.workflows (tenant_id, agent_id);
DROP INDEX public.workflows_created_at_idx;
CREATE INDEX workflows_created_at_idx ON public.workflows (tenant_id, created_at, id);
DROP INDEX public.workflows_name_idx;
CREATE INDEX workflows_name_idx ON public.workflows (tenant_id, name, id);
DROP INDEX public.workflows_status_created_at_idx;
CREATE INDEX workflows_status_created_at_idx
ON public.workflows (tenant_id, status, created_at, id);

DROP INDEX public.executions_workflow_created_at_idx;
CREATE INDEX executions_workflow_created_at_idx
ON public.executions (tenant_id, workflow_id, created_at, id);
DROP INDEX public.executions_created_at_idx;
CREATE INDEX executions_created_at_idx ON public.executions (tenant_id, created_at, id);
DROP INDEX public.executions_status_created_at_idx;
CREATE INDEX executions_status_created_at_idx
ON public.executions (tenant_id, status, created_at, id);
DROP INDEX public.executions_pending_idx;
CREATE INDEX executions_pending_idx ON public.executions (tenant_id, created_at, id)
WHERE status = 'pending';

DROP INDEX public.checkpoints_parent_idx;
CREATE INDEX checkpoints_parent_idx ON public.checkpoints (tenant_id, parent_id);

DROP INDEX public.sessions_user_created_at_idx;
CREATE INDEX sessions_user_created_at_idx
ON public.sessions (tenant_id, user_id, created_at, id);
DROP INDEX public.sessions_agent_created_at_idx;
CREATE INDEX sessions_agent_created_at_idx
ON public.sessions (tenant_id, agent_id, created_at, id);
DROP INDEX public.sessions_created_at_idx;
CREATE INDEX sessions_created_at_idx ON public.sessions (tenant_id, created_at, id);

DROP INDEX public.audit_events_entity_idx;
CREATE INDEX audit_events_entity_idx
ON public.audit_events (tenant_id, entity, created_at, id);
DROP INDEX public.audit_events_entity_id_idx;
CREATE INDEX audit_events_entity_id_idx ON public.audit_events (tenant_id, entity_id);
DROP INDEX public.audit_events_actor_idx;
CREATE INDEX audit_events_actor_idx
ON public.audit_events (tenant_id, actor_id, created_at, id);
DROP INDEX public.audit_events_created_at_idx;
CREATE INDEX audit_events_created_at_idx ON public.audit_events (tenant_id, created_at, id);

DROP INDEX public.files_owner_created_at_idx;
CREATE INDEX files_owner_created_at_idx ON public.files (tenant_id, owner_id, created_at, id);
DROP INDEX public.files_created_at_idx;
CREATE INDEX files_created_at_idx ON public.files (tenant_id, created_at, id);
DROP INDEX public.files_execution_idx;
CREATE INDEX files_execution_idx ON public.files (tenant_id, execution_id);
DROP INDEX public.files_session_idx;
CREATE INDEX files_session_idx ON public.files (tenant_id, session_id);
DROP INDEX public.files_staged_idx;
CREATE INDEX files_staged_idx ON public.files (tenant_id, created_at) WHERE status = 'staged';

-- A tenant's own outbox rows (get, stats, and the foreign key to tenants).
CREATE INDEX outbox_tenant_seq_idx ON public.outbox (tenant_id, seq);

DROP INDEX public.lg_checkpoints_run_id_idx;
CREATE INDEX lg_checkpoints_run_id_idx ON public.lg_checkpoints (tenant_id, (metadata ->> 'run_id'))
WHERE metadata ? 'run_id';
DROP INDEX public.lg_blobs_base_idx;
CREATE INDEX lg_blobs_base_idx
ON public.lg_blobs (tenant_id, thread_id, checkpoint_ns, channel, base_version)
WHERE base_version IS NOT NULL;

-- The trigram indexes of 0002 (where it made them) lead with tenant_id too,
-- through btree_gin, so one tenant's search never walks another's entries.
DO $$
BEGIN
    IF
        to_regclass('public.agents_name_trgm_idx') IS NOT NULL
        AND EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'btree_gin')
    THEN
        CREATE EXTENSION IF NOT EXISTS btree_gin;
        DROP INDEX public.agents_name_trgm_idx;
        CREATE INDEX agents_name_trgm_idx ON public.agents
        USING gin (tenant_id, name gin_trgm_ops);
        DROP INDEX public.workflows_name_trgm_idx;
        CREATE INDEX workflows_name_trgm_idx ON public.workflows
        USING gin (tenant_id, name gin_trgm_ops);
        DROP INDEX public.sessions_title_trgm_idx;
        CREATE INDEX sessions_title_trgm_idx ON public.sessions
        USING gin (tenant_id, title gin_trgm_ops);
    END IF;
END;
$$;

-- The audit chain is per tenant: seq counts within a tenant, each row links
-- to its tenant's previous row, and writers of one tenant wait only for each
-- other. Existing rows are the default tenant's chain, unchanged.
ALTER TABLE public.audit_events DROP CONSTRAINT audit_events_seq_key;
ALTER TABLE public.audit_events ADD CONSTRAINT audit_events_seq_key UNIQUE (tenant_id, seq);

-- The advisory lock key of a tenant's audit chain.
CREATE FUNCTION public.audit_chain_lock_key(tenant uuid) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT pg_catalog.hashtextextended('toolkit.audit_events:' || tenant::text, 0)
$$;

-- Links a new audit row to its tenant's chain; the advisory lock of that
-- chain orders its writers. The lock is held until the writer's transaction
-- ends, so a session that keeps one open (or takes the lock itself) stops
-- every audited write of that tenant: the wait is bounded by the caller's
-- lock_timeout or 10 seconds, whichever is shorter, and then fails with
-- lock_not_available naming the holder.
CREATE OR REPLACE FUNCTION public.audit_events_chain() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    chain_key constant bigint := public.audit_chain_lock_key(NEW.tenant_id);
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
                'event of this tenant or by taking advisory lock % itself; this '
                'audit event was not written',
                bound, coalesce(holder::text, 'unknown'), chain_key
            USING
                ERRCODE = 'lock_not_available',
                HINT = 'end that session''s transaction, or pg_terminate_backend() it';
        END;
    END IF;
    SELECT a.seq, a.hash INTO last_seq, last_hash
    FROM public.audit_events AS a
    WHERE a.tenant_id = NEW.tenant_id
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

-- Row level security on a tenant-owned table: ENABLE, FORCE (the owner is
-- bound too), and one policy per verb comparing tenant_id with the
-- transaction's tenant. TO PUBLIC, so a role without a tenant is refused
-- (TN001), never silently shown nothing. An application makes its own table
-- tenant-owned the same way, in its migration, after giving it
--   tenant_id uuid NOT NULL DEFAULT public.toolkit_tenant_or_default()
--   REFERENCES public.tenants (id)
-- and calling SELECT public.toolkit_make_tenant_owned('my_table');
CREATE FUNCTION public.toolkit_make_tenant_owned(target regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    tenant_check constant text := 'tenant_id = (SELECT public.toolkit_tenant())';
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_attribute AS a
        WHERE
            a.attrelid = target AND a.attname = 'tenant_id' AND a.attnotnull
            AND a.atttypid = 'uuid'::regtype AND NOT a.attisdropped
    ) THEN
        RAISE EXCEPTION '% has no column tenant_id uuid NOT NULL', target
        USING
            ERRCODE = 'invalid_table_definition',
            HINT = 'add tenant_id uuid NOT NULL DEFAULT public.toolkit_tenant_or_default() '
            'REFERENCES public.tenants (id) first';
    END IF;
    EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', target);
    EXECUTE pg_catalog.format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', target);
    EXECUTE pg_catalog.format(
        'CREATE POLICY tenant_select ON %s FOR SELECT TO PUBLIC USING (%s)',
        target, tenant_check
    );
    EXECUTE pg_catalog.format(
        'CREATE POLICY tenant_insert ON %s FOR INSERT TO PUBLIC WITH CHECK (%s)',
        target, tenant_check
    );
    EXECUTE pg_catalog.format(
        'CREATE POLICY tenant_update ON %s FOR UPDATE TO PUBLIC USING (%s) WITH CHECK (%s)',
        target, tenant_check, tenant_check
    );
    EXECUTE pg_catalog.format(
        'CREATE POLICY tenant_delete ON %s FOR DELETE TO PUBLIC USING (%s)',
        target, tenant_check
    );
END;
$$;
REVOKE ALL ON FUNCTION public.toolkit_make_tenant_owned(regclass) FROM PUBLIC;  -- noqa: CP02

DO $$
BEGIN
    PERFORM public.toolkit_make_tenant_owned(owned::regclass)
    FROM unnest(ARRAY[
        'public.memberships', 'public.agents', 'public.workflows', 'public.executions',
        'public.checkpoints', 'public.sessions', 'public.audit_events', 'public.files',
        'public.outbox', 'public.inbox', 'public.lg_checkpoints', 'public.lg_blobs',
        'public.lg_writes'
    ]) AS owned;
END;
$$;

-- A tenant sees, and may rename, only itself. Creating a tenant is
-- inserting the row of the tenant the transaction is set to; deleting one
-- is an operator's act (its rows must go first).
ALTER TABLE public.tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_select ON public.tenants FOR SELECT TO PUBLIC  -- noqa: CP02
USING (id = (SELECT public.toolkit_tenant()));
CREATE POLICY tenant_insert ON public.tenants FOR INSERT TO PUBLIC  -- noqa: CP02
WITH CHECK (id = (SELECT public.toolkit_tenant()));
CREATE POLICY tenant_update ON public.tenants FOR UPDATE TO PUBLIC  -- noqa: CP02
USING (id = (SELECT public.toolkit_tenant()))
WITH CHECK (id = (SELECT public.toolkit_tenant()));
CREATE POLICY tenant_delete ON public.tenants FOR DELETE TO PUBLIC  -- noqa: CP02
USING (id = (SELECT public.toolkit_tenant()));
REVOKE UPDATE, DELETE ON public.tenants FROM toolkit_app;
GRANT UPDATE (name) ON public.tenants TO toolkit_app;

-- Users are shared identities. A tenant reads and updates the users with a
-- membership in it, and inserts a user only once its membership is there
-- (create_user()). The check is a correlated EXISTS, one probe of the
-- membership key per user row: an IN (SELECT ...) would hash every member
-- of the tenant in each statement, a get by id included. Nobody bound by
-- the policies deletes a user: the delete would cascade into every tenant
-- the user belongs to. Leaving one tenant is deleting the membership;
-- deleting a person everywhere is an operator's act.
ALTER TABLE public.users ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.users FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_select ON public.users FOR SELECT TO PUBLIC  -- noqa: CP02
USING (
    EXISTS (
        SELECT FROM public.memberships AS m
        WHERE m.tenant_id = (SELECT public.toolkit_tenant()) AND m.user_id = users.id
    )
);
CREATE POLICY tenant_insert ON public.users FOR INSERT TO PUBLIC  -- noqa: CP02
WITH CHECK (
    EXISTS (
        SELECT FROM public.memberships AS m
        WHERE m.tenant_id = (SELECT public.toolkit_tenant()) AND m.user_id = users.id
    )
);
CREATE POLICY tenant_update ON public.users FOR UPDATE TO PUBLIC  -- noqa: CP02
USING (
    EXISTS (
        SELECT FROM public.memberships AS m
        WHERE m.tenant_id = (SELECT public.toolkit_tenant()) AND m.user_id = users.id
    )
)
WITH CHECK (
    EXISTS (
        SELECT FROM public.memberships AS m
        WHERE m.tenant_id = (SELECT public.toolkit_tenant()) AND m.user_id = users.id
    )
);
CREATE POLICY tenant_delete ON public.users FOR DELETE TO PUBLIC USING (FALSE);  -- noqa: CP02

-- Creates a user and its membership in the transaction's tenant (the
-- default one without a tenant), membership first: the policies on users
-- check the new row, and RETURNING checks it against the SELECT policy,
-- before anything a trigger or a CTE of the same statement wrote is visible.
CREATE FUNCTION public.create_user(
    new_email text, new_display_name text, new_role text, new_is_active boolean,
    new_password_hash text
)
RETURNS TABLE (
    id uuid, email text, display_name text, role text, is_active boolean,
    version integer, created_at timestamptz, updated_at timestamptz
)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    new_id constant uuid := pg_catalog.gen_random_uuid();
BEGIN
    INSERT INTO public.memberships (user_id) VALUES (new_id);
    RETURN QUERY
    INSERT INTO public.users AS u (id, email, display_name, role, is_active, password_hash)
    VALUES (new_id, new_email, new_display_name, new_role, new_is_active, new_password_hash)
    RETURNING
        u.id, u.email, u.display_name, u.role, u.is_active, u.version, u.created_at,
        u.updated_at;
END;
$$;

-- The tenant a security-definer function acts for. It runs as the owner,
-- whom the policies do not bind when the owner is a superuser, so it names
-- the tenant itself: the transaction's; without one, the default tenant
-- only for a session the policies do not bind (superuser or BYPASSRLS),
-- else TN001 as the policies would answer.
CREATE FUNCTION public.toolkit_caller_tenant() RETURNS uuid
LANGUAGE sql STABLE
SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT
        CASE
            WHEN r.rolsuper OR r.rolbypassrls THEN public.toolkit_tenant_or_default()
            ELSE public.toolkit_tenant()
        END
    FROM pg_catalog.pg_roles AS r
    WHERE r.rolname = SESSION_USER
$$;

-- The credential functions of 0008, now for the users of the caller's tenant.
CREATE OR REPLACE FUNCTION public.user_credentials(lookup_email text)
RETURNS TABLE (id uuid, email text, password_hash text, is_active boolean)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT u.id, u.email, u.password_hash, u.is_active
    FROM public.users AS u
    WHERE
        pg_catalog.lower(u.email) = pg_catalog.lower(lookup_email)
        AND EXISTS (
            SELECT FROM public.memberships AS m
            WHERE m.tenant_id = (SELECT public.toolkit_caller_tenant()) AND m.user_id = u.id
        )
$$;

CREATE OR REPLACE FUNCTION public.set_user_password_hash(user_id uuid, new_hash text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    UPDATE public.users AS u SET password_hash = new_hash
    WHERE
        u.id = user_id
        AND EXISTS (
            SELECT FROM public.memberships AS m
            WHERE m.tenant_id = (SELECT public.toolkit_caller_tenant()) AND m.user_id = u.id
        );
    RETURN found;
END;
$$;

-- The outbox relay publishes every tenant's messages. Its login role has
-- BYPASSRLS (an attribute, never inherited) and is a member of this role,
-- which grants only what the relay does: claim, mark and prune outbox rows.
--   CREATE ROLE my_relay LOGIN BYPASSRLS IN ROLE toolkit_relay;
DO $$
BEGIN
    CREATE ROLE toolkit_relay NOLOGIN;
EXCEPTION
    WHEN duplicate_object THEN NULL;  -- another database of the cluster made it
END;
$$;
GRANT USAGE ON SCHEMA public TO toolkit_relay;
GRANT SELECT, DELETE ON public.outbox TO toolkit_relay;
GRANT UPDATE (sent_at, attempts, last_error, available_at) ON public.outbox TO toolkit_relay;

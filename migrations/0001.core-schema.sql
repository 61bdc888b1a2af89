-- The core schema: users, agents, workflows, executions, checkpoints,
-- sessions and the append-only, hash-chained audit log.
-- Rules: UUID keys, timestamptz kept by the database, an index for every
-- foreign key, a CHECK for every status, a version column on mutable rows.

-- Keeps updated_at current and bumps the optimistic-lock version.
CREATE FUNCTION toolkit_touch_row() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    NEW.version := OLD.version + 1;
    RETURN NEW;
END;
$$;

CREATE TABLE users (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email text NOT NULL CHECK (char_length(email) BETWEEN 3 AND 320),
    display_name text NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 200),
    role text NOT NULL DEFAULT 'member' CHECK (role IN ('admin', 'member', 'viewer')),
    is_active boolean NOT NULL DEFAULT TRUE,
    password_hash text CHECK (char_length(password_hash) <= 1024),
    version integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE INDEX users_created_at_idx ON users (created_at, id);
CREATE INDEX users_email_sort_idx ON users (email, id);
CREATE INDEX users_role_created_at_idx ON users (role, created_at, id);
CREATE TRIGGER users_touch BEFORE UPDATE ON users
FOR EACH ROW EXECUTE FUNCTION toolkit_touch_row();

CREATE TABLE agents (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    type text NOT NULL CHECK (type ~ '^[a-z][a-z0-9_-]{0,63}$'),
    description text CHECK (char_length(description) <= 4000),
    config jsonb NOT NULL DEFAULT '{}',
    is_active boolean NOT NULL DEFAULT TRUE,
    version integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agents_owner_created_at_idx ON agents (owner_id, created_at, id);
CREATE INDEX agents_created_at_idx ON agents (created_at, id);
CREATE INDEX agents_name_idx ON agents (name, id);
CREATE INDEX agents_type_created_at_idx ON agents (type, created_at, id);
CREATE INDEX agents_active_created_at_idx ON agents (created_at, id) WHERE is_active;
CREATE TRIGGER agents_touch BEFORE UPDATE ON agents
FOR EACH ROW EXECUTE FUNCTION toolkit_touch_row();

CREATE TABLE workflows (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    agent_id uuid REFERENCES agents (id) ON DELETE SET NULL,
    name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    description text CHECK (char_length(description) <= 4000),
    definition jsonb NOT NULL DEFAULT '{"steps": []}',
    status text NOT NULL DEFAULT 'draft'
    CHECK (status IN ('draft', 'published', 'archived')),
    version integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workflows_owner_created_at_idx ON workflows (owner_id, created_at, id);
CREATE INDEX workflows_agent_idx ON workflows (agent_id);
CREATE INDEX workflows_created_at_idx ON workflows (created_at, id);
CREATE INDEX workflows_name_idx ON workflows (name, id);
CREATE INDEX workflows_status_created_at_idx ON workflows (status, created_at, id);
CREATE TRIGGER workflows_touch BEFORE UPDATE ON workflows
FOR EACH ROW EXECUTE FUNCTION toolkit_touch_row();

CREATE TABLE executions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workflow_id uuid NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    status text NOT NULL DEFAULT 'pending'
    CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    input jsonb NOT NULL DEFAULT '{}',
    output jsonb,
    error text CHECK (char_length(error) <= 10000),
    attempt integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    worker_id text CHECK (char_length(worker_id) <= 200),
    lease_expires_at timestamptz,
    started_at timestamptz,
    finished_at timestamptz,
    version integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((status IN ('succeeded', 'failed', 'cancelled')) = (finished_at IS NOT NULL))
);
CREATE INDEX executions_workflow_created_at_idx ON executions (workflow_id, created_at, id);
CREATE INDEX executions_created_at_idx ON executions (created_at, id);
CREATE INDEX executions_status_created_at_idx ON executions (status, created_at, id);
CREATE INDEX executions_pending_idx ON executions (created_at, id) WHERE status = 'pending';
CREATE INDEX executions_lease_idx ON executions (lease_expires_at) WHERE status = 'running';
CREATE TRIGGER executions_touch BEFORE UPDATE ON executions
FOR EACH ROW EXECUTE FUNCTION toolkit_touch_row();

-- Checkpoints are immutable snapshots appended per execution; a LangGraph
-- checkpointer extends this table with thread and namespace columns.
CREATE TABLE checkpoints (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    execution_id uuid NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    sequence integer NOT NULL CHECK (sequence >= 0),
    parent_id uuid REFERENCES checkpoints (id) ON DELETE SET NULL,
    state jsonb NOT NULL,
    metadata jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT checkpoints_execution_sequence_key UNIQUE (execution_id, sequence)
);
CREATE INDEX checkpoints_parent_idx ON checkpoints (parent_id);

CREATE TABLE sessions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    agent_id uuid NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    title text CHECK (char_length(title) <= 200),
    state jsonb NOT NULL DEFAULT '{}',
    expires_at timestamptz NOT NULL,
    ended_at timestamptz,
    version integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_user_created_at_idx ON sessions (user_id, created_at, id);
CREATE INDEX sessions_agent_created_at_idx ON sessions (agent_id, created_at, id);
CREATE INDEX sessions_created_at_idx ON sessions (created_at, id);
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);
CREATE TRIGGER sessions_touch BEFORE UPDATE ON sessions
FOR EACH ROW EXECUTE FUNCTION toolkit_touch_row();

-- The audit log is append-only and hash-chained: each row's hash covers the
-- previous row's hash and its own content, so an edit or a deletion breaks
-- the chain at that row. Rows are chained in the order they are written.
CREATE TABLE audit_events (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq bigint NOT NULL UNIQUE,
    -- No foreign key: the record of who acted outlives the user row.
    actor_id uuid,
    action text NOT NULL CHECK (action ~ '^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$'),
    entity text NOT NULL CHECK (entity ~ '^[a-z][a-z0-9_]{0,63}$'),
    entity_id uuid,
    details jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    prev_hash bytea NOT NULL,
    hash bytea NOT NULL
);
CREATE INDEX audit_events_entity_idx ON audit_events (entity, created_at, id);
CREATE INDEX audit_events_entity_id_idx ON audit_events (entity_id);
CREATE INDEX audit_events_actor_idx ON audit_events (actor_id, created_at, id);
CREATE INDEX audit_events_created_at_idx ON audit_events (created_at, id);

-- The hash of one audit row given the previous row's hash.
CREATE FUNCTION audit_event_hash(
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

-- Links a new audit row to the chain; the advisory lock orders writers.
CREATE FUNCTION audit_events_chain() RETURNS trigger
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

-- Rejects any change to a written audit row.
CREATE FUNCTION audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % rejected', tg_op
    USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER audit_events_chain BEFORE INSERT ON audit_events
FOR EACH ROW EXECUTE FUNCTION audit_events_chain();
CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON audit_events
FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

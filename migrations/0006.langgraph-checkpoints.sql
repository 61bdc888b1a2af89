-- LangGraph checkpoints (toolkit.integrations.langgraph): threads of
-- checkpoints keyed by LangGraph's own text ids, the channel values they
-- point to, stored once per (channel, version), and the pending writes of
-- each checkpoint's next step. The execution checkpoints of 0001 are keyed
-- by execution and sequence with a foreign key; LangGraph threads are free
-- text ids that need not be executions, so they get tables of their own.
-- depends: 0005.application-role

CREATE TABLE lg_checkpoints (
    thread_id text NOT NULL CHECK (char_length(thread_id) BETWEEN 1 AND 2048),
    checkpoint_ns text NOT NULL DEFAULT '' CHECK (char_length(checkpoint_ns) <= 2048),
    -- Ids sort bytewise ("C"): LangGraph's ids are time-ordered UUIDs.
    checkpoint_id text COLLATE "C" NOT NULL
    CHECK (char_length(checkpoint_id) BETWEEN 1 AND 200),
    -- No foreign key: retention deletes a kept checkpoint's ancestors.
    parent_checkpoint_id text COLLATE "C",
    -- The checkpoint without its channel values (those are in lg_blobs).
    checkpoint jsonb NOT NULL,
    metadata jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id)
);
-- delete_for_runs finds a run's checkpoints without a scan.
CREATE INDEX lg_checkpoints_run_id_idx ON lg_checkpoints ((metadata ->> 'run_id'))
WHERE metadata ? 'run_id';

-- One row per (channel, version): a value that does not change is never
-- written again. A row with a base_version holds only the list items
-- appended after that version's list (raw msgpack items, item_count items in
-- all); reading follows base_version down to a row that holds a whole value.
CREATE TABLE lg_blobs (
    thread_id text NOT NULL,
    checkpoint_ns text NOT NULL DEFAULT '',
    channel text NOT NULL CHECK (char_length(channel) BETWEEN 1 AND 1000),
    version text NOT NULL CHECK (char_length(version) BETWEEN 1 AND 200),
    type text NOT NULL CHECK (char_length(type) BETWEEN 1 AND 100),
    base_version text,
    item_count integer CHECK (item_count >= 0),
    blob bytea,
    PRIMARY KEY (thread_id, checkpoint_ns, channel, version),
    -- A delta can never outlive the value it extends.
    CONSTRAINT lg_blobs_base_fkey FOREIGN KEY (thread_id, checkpoint_ns, channel, base_version)
    REFERENCES lg_blobs (thread_id, checkpoint_ns, channel, version),
    CONSTRAINT lg_blobs_delta_check CHECK (
        base_version IS NULL OR (item_count IS NOT NULL AND blob IS NOT NULL)
    )
);
CREATE INDEX lg_blobs_base_idx ON lg_blobs (thread_id, checkpoint_ns, channel, base_version)
WHERE base_version IS NOT NULL;

-- Pending writes of a checkpoint's next step. No foreign key: a run saves
-- a step's writes in the background, and they may commit before the
-- checkpoint they belong to.
CREATE TABLE lg_writes (
    thread_id text NOT NULL,
    checkpoint_ns text NOT NULL DEFAULT '',
    checkpoint_id text COLLATE "C" NOT NULL,
    task_id text NOT NULL CHECK (char_length(task_id) BETWEEN 1 AND 1000),
    idx integer NOT NULL,
    channel text NOT NULL CHECK (char_length(channel) BETWEEN 1 AND 1000),
    type text NOT NULL CHECK (char_length(type) BETWEEN 1 AND 100),
    blob bytea NOT NULL,
    task_path text NOT NULL DEFAULT '',
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
);

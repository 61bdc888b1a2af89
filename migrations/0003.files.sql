-- Files: metadata of stored objects (attachments and generated files).
-- The bytes live in the configured Storage under `key`; a row is written in
-- the caller's transaction while the bytes wait at a staging key, and
-- becomes 'stored' once they are promoted to `key` (see toolkit.storage.filestore).
-- depends: 0002.name-search-trigram

CREATE TABLE files (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose text NOT NULL CHECK (purpose IN ('attachment', 'generated')),
    key text NOT NULL UNIQUE CHECK (char_length(key) BETWEEN 1 AND 512),
    original_name text CHECK (char_length(original_name) BETWEEN 1 AND 255),
    size bigint NOT NULL CHECK (size >= 0),
    content_type text NOT NULL CHECK (char_length(content_type) BETWEEN 1 AND 255),
    claimed_type text CHECK (char_length(claimed_type) BETWEEN 1 AND 255),
    sha256 text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    status text NOT NULL DEFAULT 'staged' CHECK (status IN ('staged', 'stored')),
    execution_id uuid REFERENCES executions (id) ON DELETE SET NULL,
    session_id uuid REFERENCES sessions (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    stored_at timestamptz,
    CHECK ((status = 'stored') = (stored_at IS NOT NULL))
);
CREATE INDEX files_owner_created_at_idx ON files (owner_id, created_at, id);
CREATE INDEX files_created_at_idx ON files (created_at, id);
CREATE INDEX files_execution_idx ON files (execution_id);
CREATE INDEX files_session_idx ON files (session_id);
CREATE INDEX files_staged_idx ON files (created_at) WHERE status = 'staged';

-- Trigram GIN indexes for case-insensitive substring search on names.
-- Created only where pg_trgm is available (an embedded PostgreSQL may lack
-- it); search still works without them, by scanning.
-- depends: 0001.core-schema

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm') THEN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
        CREATE INDEX users_name_trgm_idx ON users
        USING gin (display_name gin_trgm_ops);
        CREATE INDEX users_email_trgm_idx ON users
        USING gin (email gin_trgm_ops);
        CREATE INDEX agents_name_trgm_idx ON agents
        USING gin (name gin_trgm_ops);
        CREATE INDEX workflows_name_trgm_idx ON workflows
        USING gin (name gin_trgm_ops);
        CREATE INDEX sessions_title_trgm_idx ON sessions
        USING gin (title gin_trgm_ops);
    END IF;
END;
$$;

-- Reverts 0001.core-schema: drops every core table and function.
DROP TABLE IF EXISTS audit_events;
DROP FUNCTION IF EXISTS audit_events_append_only();
DROP FUNCTION IF EXISTS audit_events_chain();
DROP FUNCTION IF EXISTS audit_event_hash(
    bytea, bigint, uuid, uuid, text, text, uuid, jsonb, timestamptz
);
DROP TABLE IF EXISTS sessions;
DROP TABLE IF EXISTS checkpoints;
DROP TABLE IF EXISTS executions;
DROP TABLE IF EXISTS workflows;
DROP TABLE IF EXISTS agents;
DROP TABLE IF EXISTS users;
DROP FUNCTION IF EXISTS toolkit_touch_row();

-- Reverts 0007.least-privilege: the application role reads every column
-- of users and may UPDATE and DELETE audit events again (the trigger still
-- refuses them). CREATE on schema public is not granted back to PUBLIC:
-- that would widen what PostgreSQL 15+ grants by default.
DROP FUNCTION IF EXISTS user_credentials(text);
GRANT SELECT ON users TO toolkit_app;
GRANT UPDATE, DELETE ON audit_events TO toolkit_app;

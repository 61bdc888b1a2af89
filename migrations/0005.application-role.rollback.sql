-- Reverts 0005.application-role: withdraws the application role's rights in
-- this database (the role itself is cluster-wide and may serve others).
ALTER DEFAULT PRIVILEGES IN SCHEMA public
REVOKE USAGE, SELECT ON SEQUENCES FROM toolkit_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM toolkit_app;
REVOKE USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public FROM toolkit_app;
REVOKE SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public FROM toolkit_app;
REVOKE USAGE ON SCHEMA public FROM toolkit_app;

-- The application's role: it reads and writes rows but owns nothing, so it
-- cannot ALTER, DROP or TRUNCATE. Migrations run as the owner (the role of
-- TOOLKIT_MIGRATION_DATABASE_URL); the application's login role is made a
-- member: GRANT toolkit_app TO my_service_login;
-- depends: 0002.name-search-trigram

DO $$
BEGIN
    CREATE ROLE toolkit_app NOLOGIN;
EXCEPTION
    WHEN duplicate_object THEN NULL;  -- another database of the cluster made it
END;
$$;

GRANT USAGE ON SCHEMA public TO toolkit_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO toolkit_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO toolkit_app;
-- The migration log is the owner's alone.
REVOKE ALL ON _yoyo_migration, _yoyo_log, _yoyo_version, yoyo_lock FROM toolkit_app;
-- Tables that later migrations create get the same rights.
ALTER DEFAULT PRIVILEGES IN SCHEMA public
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO toolkit_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
GRANT USAGE, SELECT ON SEQUENCES TO toolkit_app;

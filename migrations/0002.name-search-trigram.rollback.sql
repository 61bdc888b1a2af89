-- Reverts 0002.name-search-trigram: drops the trigram indexes.
DROP INDEX IF EXISTS sessions_title_trgm_idx;
DROP INDEX IF EXISTS workflows_name_trgm_idx;
DROP INDEX IF EXISTS agents_name_trgm_idx;
DROP INDEX IF EXISTS users_email_trgm_idx;
DROP INDEX IF EXISTS users_name_trgm_idx;

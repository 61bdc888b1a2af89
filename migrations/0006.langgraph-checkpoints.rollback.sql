-- Reverts 0006.langgraph-checkpoints: drops the LangGraph checkpoint tables.
DROP TABLE IF EXISTS lg_writes;
DROP TABLE IF EXISTS lg_blobs;
DROP TABLE IF EXISTS lg_checkpoints;

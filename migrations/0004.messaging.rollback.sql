-- Reverts 0004.messaging: drops the inbox and the outbox (its trigger goes with it).
DROP TABLE IF EXISTS inbox;
DROP TABLE IF EXISTS outbox;
DROP FUNCTION IF EXISTS outbox_notify();

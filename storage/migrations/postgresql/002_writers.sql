-- Which process writes each answer, and whether that process is still alive: rows `pending`
-- from a writer that stopped heart-beating are closed as `interrupted` (see Store.close_abandoned).
ALTER TABLE messages ADD COLUMN writer text;
CREATE TABLE writers (
    id            text PRIMARY KEY,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now()
);
-- Finding the pending rows is cheap however long the table grows.
CREATE INDEX messages_pending_idx ON messages (writer) WHERE status = 'pending';

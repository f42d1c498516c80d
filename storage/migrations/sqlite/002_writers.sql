-- Which process writes each answer, and whether that process is still alive (as in PostgreSQL).
ALTER TABLE messages ADD COLUMN writer TEXT;
CREATE TABLE writers (
    id            TEXT PRIMARY KEY,
    started_at    TEXT NOT NULL,
    heartbeat_at  TEXT NOT NULL
);
CREATE INDEX messages_pending_idx ON messages (writer) WHERE status = 'pending';

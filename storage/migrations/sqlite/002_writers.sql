-- Which process writes each answer, and whether that process is still alive (as in PostgreSQL).
ALTER TABLE messages ADD COLUMN writer TEXT;
CREATE TABLE writers (
    id            TEXT PRIMARY KEY,
    started_at    TEXT NOT NULL,
    heartbeat_at  TEXT NOT NULL
);
CREATE INDEX messages_pending_idx ON messages (writer) WHERE status = 'pending';

-- Thread ids are namespaced by owner (storage.base.scoped_thread_id), as in PostgreSQL. The
-- foreign key is checked at commit, once both tables carry the new ids.
PRAGMA defer_foreign_keys = ON;
UPDATE messages SET thread_id = (
    SELECT t.key_name || '/' || COALESCE(t.user_id, '') || '/' || t.id FROM threads AS t WHERE t.id = messages.thread_id
);
UPDATE threads SET id = key_name || '/' || COALESCE(user_id, '') || '/' || id;

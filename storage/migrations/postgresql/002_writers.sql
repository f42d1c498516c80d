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

-- Thread ids are namespaced by owner (storage.base.scoped_thread_id): a thread is stored under
-- "<key name>/<user id or empty>/<the client's id>", so two owners never share an id.
ALTER TABLE messages DROP CONSTRAINT messages_thread_id_fkey;
UPDATE messages AS m SET thread_id = t.key_name || '/' || COALESCE(t.user_id, '') || '/' || t.id
FROM threads AS t WHERE m.thread_id = t.id;
UPDATE threads SET id = key_name || '/' || COALESCE(user_id, '') || '/' || id;
ALTER TABLE messages ADD CONSTRAINT messages_thread_id_fkey
    FOREIGN KEY (thread_id) REFERENCES threads (id) ON DELETE CASCADE;

-- The thread list: a title (from the first user message, or set by a rename) and the time of
-- the last turn, which orders the list.
ALTER TABLE threads ADD COLUMN title text, ADD COLUMN updated_at timestamptz;

-- Threads stored before: active at their newest message, titled by the first line of their
-- first user message (cut at 80 characters).
UPDATE threads SET updated_at = COALESCE(
    (SELECT max(m.created_at) FROM messages m WHERE m.thread_id = threads.id), threads.created_at);
UPDATE threads SET title = (
    SELECT NULLIF(left(btrim(regexp_replace(split_part(m.content, E'\n', 1), '\s+', ' ', 'g')), 80), '')
    FROM messages m
    WHERE m.thread_id = threads.id AND m.role = 'user'
    ORDER BY m.seq
    LIMIT 1);

ALTER TABLE threads ALTER COLUMN updated_at SET DEFAULT now(), ALTER COLUMN updated_at SET NOT NULL;

-- One owner's threads, newest activity first, a page at a time.
CREATE INDEX threads_owner_activity_idx ON threads (key_name, user_id, updated_at DESC, id DESC);

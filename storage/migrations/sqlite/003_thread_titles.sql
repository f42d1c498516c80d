-- The thread list: a title (from the first user message, or set by a rename) and the time of
-- the last turn (ISO-8601 UTC text like created_at), which orders the list.
ALTER TABLE threads ADD COLUMN title TEXT;
ALTER TABLE threads ADD COLUMN updated_at TEXT NOT NULL DEFAULT '';

-- Threads stored before: active at their newest message, titled by the first line of their
-- first user message (cut at 80 characters). SQLite has no regexp_replace: tabs become spaces
-- and runs of spaces are halved five times, which collapses runs of up to 32.
UPDATE threads SET updated_at = COALESCE(
    (SELECT max(m.created_at) FROM messages m WHERE m.thread_id = threads.id), threads.created_at);
UPDATE threads SET title = (
    SELECT NULLIF(substr(trim(
        replace(replace(replace(replace(replace(replace(
            CASE WHEN instr(m.content, char(10)) > 0
                 THEN substr(m.content, 1, instr(m.content, char(10)) - 1)
                 ELSE m.content END,
            char(9), ' '), '  ', ' '), '  ', ' '), '  ', ' '), '  ', ' '), '  ', ' '),
        ' ' || char(13)), 1, 80), '')
    FROM messages m
    WHERE m.thread_id = threads.id AND m.role = 'user'
    ORDER BY m.seq
    LIMIT 1);

-- One owner's threads, newest activity first, a page at a time.
CREATE INDEX threads_owner_activity_idx ON threads (key_name, user_id, updated_at DESC, id DESC);

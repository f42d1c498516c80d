"""The SQL of the PostgreSQL store (`storage.postgres`): named statements with `$n` parameters."""

from __future__ import annotations

from .base import MESSAGE_COLUMNS, SUMMARY_COLUMNS

# Any constant works as long as every replica uses the same one.
MIGRATION_LOCK_KEY = 0x61695F73747265  # "ai_stre"

ADVISORY_LOCK = "SELECT pg_advisory_lock($1)"
ADVISORY_UNLOCK = "SELECT pg_advisory_unlock($1)"
CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)"""
SELECT_APPLIED_VERSIONS = "SELECT version FROM schema_migrations"
RECORD_MIGRATION = "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)"

PING = "SELECT 1"
INSERT_THREAD = """
INSERT INTO threads (id, key_name, user_id) VALUES ($1, $2, $3)
ON CONFLICT (id) DO NOTHING"""
LOCK_THREAD = "SELECT key_name, user_id FROM threads WHERE id = $1 FOR UPDATE"
SELECT_THREAD_OWNER = "SELECT key_name, user_id FROM threads WHERE id = $1"
SELECT_HISTORY = f"""
SELECT * FROM (
    SELECT {MESSAGE_COLUMNS}
    FROM messages
    WHERE thread_id = $1 AND status <> 'pending' AND content <> ''
    ORDER BY seq DESC
    LIMIT $2
) AS recent ORDER BY seq"""
SELECT_LAST_SEQ = "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE thread_id = $1"
INSERT_MESSAGE = """
INSERT INTO messages (id, thread_id, seq, role, content, status, writer)
VALUES ($1, $2, $3, $4, $5, $6, $7)"""
SAVE_PARTIAL = "UPDATE messages SET content = $2 WHERE id = $1 AND status = 'pending'"
HEARTBEAT = """
INSERT INTO writers (id) VALUES ($1)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()"""
RETIRE_WRITER = "DELETE FROM writers WHERE id = $1"
# $1: seconds without a heartbeat after which a writer is taken for dead; $2: the same for rows
# that name no writer (written before writers were recorded).
CLOSE_ABANDONED = """
UPDATE messages SET status = 'interrupted'
WHERE status = 'pending'
  AND CASE WHEN writer IS NULL THEN created_at < now() - make_interval(secs => $2)
           ELSE writer NOT IN (SELECT id FROM writers WHERE heartbeat_at > now() - make_interval(secs => $1))
      END"""
SELECT_THREAD_MESSAGES = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE thread_id = $1 ORDER BY seq"
DELETE_MESSAGES_FROM_SEQ = "DELETE FROM messages WHERE thread_id = $1 AND seq >= $2"
INSERT_CLIENT_MESSAGE = """
INSERT INTO messages (id, thread_id, seq, role, content, status, writer, client_message_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"""
FINISH_MESSAGE = """
UPDATE messages
SET content = $2, status = $3, model = $4, provider = $5, stop_reason = $6,
    input_tokens = $7, output_tokens = $8, cache_read_input_tokens = $9, cache_creation_input_tokens = $10,
    replay_from_seq = $11, summary_through_seq = $12
WHERE id = $1 AND role = 'assistant' AND status = 'pending'"""
# Cuts (regenerate, edit): the message a cut names, or the thread's last user message.
SELECT_CUT_MESSAGE = "SELECT seq, role FROM messages WHERE id = $1 AND thread_id = $2"
SELECT_LAST_USER_MESSAGE = "SELECT seq, role FROM messages WHERE thread_id = $1 AND role = 'user' ORDER BY seq DESC LIMIT 1"
DELETE_MESSAGES_FROM = "DELETE FROM messages WHERE thread_id = $1 AND seq >= $2"
DELETE_SUMMARIES_FROM = "DELETE FROM summaries WHERE thread_id = $1 AND through_seq >= $2"
SELECT_LATEST_SUMMARY = f"SELECT {SUMMARY_COLUMNS} FROM summaries WHERE thread_id = $1 ORDER BY through_seq DESC LIMIT 1"
INSERT_SUMMARY = f"""
INSERT INTO summaries ({SUMMARY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now())
ON CONFLICT (thread_id, through_seq) DO NOTHING"""
SELECT_MESSAGE_SEQ = "SELECT seq FROM messages WHERE id = $1 AND thread_id = $2"
# $3 is the seq of the `before` message, or NULL for the newest page.
SELECT_PAGE = f"""
SELECT * FROM (
    SELECT {MESSAGE_COLUMNS}
    FROM messages
    WHERE thread_id = $1 AND ($3::bigint IS NULL OR seq < $3)
    ORDER BY seq DESC
    LIMIT $2
) AS page ORDER BY seq"""
DELETE_THREAD = """
DELETE FROM threads
WHERE id = $1 AND key_name = $2 AND user_id IS NOT DISTINCT FROM $3"""
# A turn is activity; its first user message names a thread that has no title yet.
TOUCH_THREAD = "UPDATE threads SET updated_at = clock_timestamp(), title = COALESCE(title, $2) WHERE id = $1"
# The thread list, newest activity first, after the position ($3, $4). Two statements so that
# both use the (key_name, user_id, updated_at, id) index: IS NOT DISTINCT FROM would not.
SELECT_THREADS_OF_USER = """
SELECT t.id, t.title, t.created_at, t.updated_at,
       (SELECT count(*) FROM messages m WHERE m.thread_id = t.id) AS message_count
FROM threads t
WHERE t.key_name = $1 AND t.user_id = $2 AND (t.updated_at, t.id) < ($3, $4)
ORDER BY t.updated_at DESC, t.id DESC
LIMIT $5"""
SELECT_THREADS_WITHOUT_USER = """
SELECT t.id, t.title, t.created_at, t.updated_at,
       (SELECT count(*) FROM messages m WHERE m.thread_id = t.id) AS message_count
FROM threads t
WHERE t.key_name = $1 AND t.user_id IS NULL AND (t.updated_at, t.id) < ($2, $3)
ORDER BY t.updated_at DESC, t.id DESC
LIMIT $4"""
RENAME_THREAD = """
UPDATE threads SET title = $4
WHERE id = $1 AND key_name = $2 AND user_id IS NOT DISTINCT FROM $3
RETURNING id, title, created_at, updated_at,
          (SELECT count(*) FROM messages m WHERE m.thread_id = threads.id) AS message_count"""

"""The SQL of the SQLite store (`storage.sqlite`): named statements with `?` parameters.

Timestamps are ISO-8601 UTC text of one format, written by the application, so text order is
time order."""

from __future__ import annotations

from .base import MESSAGE_COLUMNS, SUMMARY_COLUMNS

# WAL lets readers in other processes work during a write; NORMAL sync is safe with WAL
# (a power cut may lose the last commits, never corrupt the file).
CONNECTION_PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA foreign_keys = ON",  # per connection; needed for ON DELETE CASCADE
)
BEGIN_IMMEDIATE = "BEGIN IMMEDIATE"
COMMIT = "COMMIT"
ROLLBACK = "ROLLBACK"

CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    applied_at  TEXT NOT NULL
)"""
SELECT_APPLIED_VERSIONS = "SELECT version FROM schema_migrations"
RECORD_MIGRATION = "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)"

PING = "SELECT 1"
INSERT_THREAD = """
INSERT OR IGNORE INTO threads (id, key_name, user_id, created_at) VALUES (?, ?, ?, ?)"""
SELECT_THREAD_OWNER = "SELECT key_name, user_id FROM threads WHERE id = ?"
SELECT_HISTORY = f"""
SELECT * FROM (
    SELECT {MESSAGE_COLUMNS}
    FROM messages
    WHERE thread_id = ? AND status <> 'pending' AND content <> ''
    ORDER BY seq DESC
    LIMIT ?
) ORDER BY seq"""
SELECT_LAST_SEQ = "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE thread_id = ?"
INSERT_MESSAGE = """
INSERT INTO messages (id, thread_id, seq, role, content, status, writer, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)"""
SAVE_PARTIAL = "UPDATE messages SET content = ? WHERE id = ? AND status = 'pending'"
HEARTBEAT = """
INSERT INTO writers (id, started_at, heartbeat_at) VALUES (?1, ?2, ?2)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = ?2"""
RETIRE_WRITER = "DELETE FROM writers WHERE id = ?"
# ?1: the oldest heartbeat of a live writer; ?2: the same for rows that name no writer. The
# timestamps are ISO-8601 UTC text of one format, so text order is time order.
CLOSE_ABANDONED = """
UPDATE messages SET status = 'interrupted'
WHERE status = 'pending'
  AND CASE WHEN writer IS NULL THEN created_at < ?2
           ELSE writer NOT IN (SELECT id FROM writers WHERE heartbeat_at > ?1)
      END"""
SELECT_THREAD_MESSAGES = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE thread_id = ? ORDER BY seq"
DELETE_MESSAGES_FROM_SEQ = "DELETE FROM messages WHERE thread_id = ? AND seq >= ?"
INSERT_CLIENT_MESSAGE = """
INSERT INTO messages (id, thread_id, seq, role, content, status, writer, client_message_id, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"""
FINISH_MESSAGE = """
UPDATE messages
SET content = ?, status = ?, model = ?, provider = ?, stop_reason = ?,
    input_tokens = ?, output_tokens = ?, cache_read_input_tokens = ?, cache_creation_input_tokens = ?,
    replay_from_seq = ?, summary_through_seq = ?
WHERE id = ? AND role = 'assistant' AND status = 'pending'"""
# Cuts (regenerate, edit): the message a cut names, or the thread's last user message.
SELECT_CUT_MESSAGE = "SELECT seq, role FROM messages WHERE id = ? AND thread_id = ?"
SELECT_LAST_USER_MESSAGE = "SELECT seq, role FROM messages WHERE thread_id = ? AND role = 'user' ORDER BY seq DESC LIMIT 1"
DELETE_MESSAGES_FROM = "DELETE FROM messages WHERE thread_id = ? AND seq >= ?"
DELETE_SUMMARIES_FROM = "DELETE FROM summaries WHERE thread_id = ? AND through_seq >= ?"
SELECT_LATEST_SUMMARY = f"SELECT {SUMMARY_COLUMNS} FROM summaries WHERE thread_id = ? ORDER BY through_seq DESC LIMIT 1"
INSERT_SUMMARY = f"""
INSERT OR IGNORE INTO summaries ({SUMMARY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"""
SELECT_MESSAGE_SEQ = "SELECT seq FROM messages WHERE id = ? AND thread_id = ?"
# ?3 is the seq of the `before` message, or NULL for the newest page.
SELECT_PAGE = f"""
SELECT * FROM (
    SELECT {MESSAGE_COLUMNS}
    FROM messages
    WHERE thread_id = ?1 AND (?3 IS NULL OR seq < ?3)
    ORDER BY seq DESC
    LIMIT ?2
) ORDER BY seq"""
DELETE_THREAD = "DELETE FROM threads WHERE id = ? AND key_name = ? AND user_id IS ?"
# A turn is activity; its first user message names a thread that has no title yet.
TOUCH_THREAD = "UPDATE threads SET updated_at = ?, title = COALESCE(title, ?) WHERE id = ?"
# The thread list, newest activity first, after the position (?3, ?4). SQLite uses the
# (key_name, user_id, updated_at, id) index for `IS` as for `=`.
THREAD_SUMMARY_COLUMNS = """
t.id, t.title, t.created_at, t.updated_at,
(SELECT count(*) FROM messages m WHERE m.thread_id = t.id) AS message_count"""
SELECT_THREADS = f"""
SELECT {THREAD_SUMMARY_COLUMNS}
FROM threads t
WHERE t.key_name = ?1 AND t.user_id IS ?2 AND (t.updated_at, t.id) < (?3, ?4)
ORDER BY t.updated_at DESC, t.id DESC
LIMIT ?5"""
RENAME_THREAD = "UPDATE threads SET title = ? WHERE id = ? AND key_name = ? AND user_id IS ?"
SELECT_THREAD_SUMMARY = f"SELECT {THREAD_SUMMARY_COLUMNS} FROM threads t WHERE t.id = ?"

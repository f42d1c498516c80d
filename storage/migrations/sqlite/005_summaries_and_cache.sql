-- As in PostgreSQL: prompt-cache figures and the prompt's shape per answer, and summaries.
ALTER TABLE messages ADD COLUMN cache_read_input_tokens INTEGER;
ALTER TABLE messages ADD COLUMN cache_creation_input_tokens INTEGER;
ALTER TABLE messages ADD COLUMN replay_from_seq INTEGER;
ALTER TABLE messages ADD COLUMN summary_through_seq INTEGER;

CREATE TABLE summaries (
    thread_id           TEXT NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    from_seq            INTEGER NOT NULL,
    through_seq         INTEGER NOT NULL,
    from_message_id     TEXT NOT NULL,
    through_message_id  TEXT NOT NULL,
    content             TEXT NOT NULL,
    model               TEXT,
    provider            TEXT,
    created_at          TEXT NOT NULL,
    PRIMARY KEY (thread_id, through_seq)
);

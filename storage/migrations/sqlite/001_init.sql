-- Same model as the PostgreSQL schema. Timestamps are ISO-8601 UTC text written by the
-- application (e.g. 2024-05-01T12:00:00.123456+00:00).
CREATE TABLE threads (
    id          TEXT PRIMARY KEY,
    key_name    TEXT NOT NULL,
    user_id     TEXT,
    created_at  TEXT NOT NULL
);

CREATE TABLE messages (
    id             TEXT PRIMARY KEY,
    thread_id      TEXT NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    seq            INTEGER NOT NULL,
    role           TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content        TEXT NOT NULL DEFAULT '',
    model          TEXT,
    provider       TEXT,
    stop_reason    TEXT,
    status         TEXT NOT NULL
                   CHECK (status IN ('pending', 'complete', 'interrupted', 'error')),
    input_tokens   INTEGER,
    output_tokens  INTEGER,
    created_at     TEXT NOT NULL,
    UNIQUE (thread_id, seq)
);

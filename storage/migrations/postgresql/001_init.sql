-- Threads belong to one owner: the API key name plus an optional end-user id.
CREATE TABLE threads (
    id          text PRIMARY KEY,
    key_name    text NOT NULL,
    user_id     text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- seq orders a thread's messages; begin_turn allocates it under a lock on the thread row.
CREATE TABLE messages (
    id             text PRIMARY KEY,
    thread_id      text NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    seq            bigint NOT NULL,
    role           text NOT NULL CHECK (role IN ('user', 'assistant')),
    content        text NOT NULL DEFAULT '',
    model          text,
    provider       text,
    stop_reason    text,
    status         text NOT NULL
                   CHECK (status IN ('pending', 'complete', 'interrupted', 'error')),
    input_tokens   integer,
    output_tokens  integer,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- Also the index behind every per-thread read (ORDER BY seq).
    CONSTRAINT messages_thread_seq_key UNIQUE (thread_id, seq)
);

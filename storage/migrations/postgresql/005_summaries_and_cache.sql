-- Per answer: the prompt-cache figures the model reported, and the shape of the prompt that
-- produced it (where its replayed history began, and the summary it carried), so that the next
-- turn knows the size of that prompt exactly from its input_tokens.
ALTER TABLE messages
    ADD COLUMN cache_read_input_tokens integer,
    ADD COLUMN cache_creation_input_tokens integer,
    ADD COLUMN replay_from_seq bigint,
    ADD COLUMN summary_through_seq bigint;

-- Summaries of the turns a thread's token budget leaves out: each covers the thread's messages
-- from from_seq through through_seq (and includes the summary before it); the newest is
-- replayed as a note in the system prompt.
CREATE TABLE summaries (
    thread_id           text NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    from_seq            bigint NOT NULL,
    through_seq         bigint NOT NULL,
    from_message_id     text NOT NULL,
    through_message_id  text NOT NULL,
    content             text NOT NULL,
    model               text,
    provider            text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (thread_id, through_seq)
);

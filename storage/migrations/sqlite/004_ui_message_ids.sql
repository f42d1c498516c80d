-- The id a client gave a message (the Vercel AI SDK's useChat names every message), so that
-- /ai/ui/chat stores each message once and sees where the client's conversation diverges
-- from the stored thread. NULL for messages the service named itself (their id is `id`).
ALTER TABLE messages ADD COLUMN client_message_id TEXT;
CREATE UNIQUE INDEX messages_thread_client_message_id_key
    ON messages (thread_id, client_message_id) WHERE client_message_id IS NOT NULL;

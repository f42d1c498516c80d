"use client";

import { useChat } from "@ai-sdk/react";
import type { UIMessage } from "ai";
import { useEffect, useState } from "react";

// The chat id lives in the address (?chat=...), so a reload shows the same stored chat.
function chatIdFromAddress(): string {
  const url = new URL(window.location.href);
  let id = url.searchParams.get("chat");
  if (!id) {
    id = crypto.randomUUID().replaceAll("-", "");
    url.searchParams.set("chat", id);
    window.history.replaceState(null, "", url);
  }
  return id;
}

export default function Page() {
  const [chat, setChat] = useState<{ id: string; messages: UIMessage[] } | null>(null);
  useEffect(() => {
    const id = chatIdFromAddress();
    fetch(`/api/chat/${id}/messages`)
      .then((response) => (response.ok ? response.json() : []))
      .then((messages: UIMessage[]) => setChat({ id, messages }));
  }, []);
  if (chat === null) return <p>Loading…</p>;
  return <Chat id={chat.id} initialMessages={chat.messages} />;
}

function Chat({ id, initialMessages }: { id: string; initialMessages: UIMessage[] }) {
  // The default transport posts { id, messages, trigger, messageId } to /api/chat.
  const { messages, sendMessage, regenerate, status, error } = useChat({ id, messages: initialMessages });
  const [input, setInput] = useState("");
  const busy = status === "submitted" || status === "streaming";
  return (
    <main>
      <h1>Chat</h1>
      <ol id="messages" style={{ listStyle: "none", padding: 0 }}>
        {messages.map((message) => (
          <li key={message.id} data-role={message.role} data-id={message.id} style={{ margin: "0.75rem 0" }}>
            <strong>{message.role === "user" ? "You" : "Assistant"}: </strong>
            <span className="text">
              {message.parts.map((part) => (part.type === "text" ? part.text : "")).join("")}
            </span>
          </li>
        ))}
      </ol>
      {error && <p role="alert">{error.message}</p>}
      <form
        onSubmit={(event) => {
          event.preventDefault();
          if (!input.trim()) return;
          sendMessage({ text: input });
          setInput("");
        }}
      >
        <input
          name="prompt"
          value={input}
          onChange={(event) => setInput(event.target.value)}
          placeholder="Ask something"
          style={{ width: "70%" }}
        />
        <button type="submit" disabled={busy}>Send</button>
        <button type="button" onClick={() => regenerate()} disabled={busy || messages.length === 0}>
          Regenerate
        </button>
      </form>
      <p id="status" data-status={status}>{status}</p>
    </main>
  );
}

// The Vercel AI SDK's own client against a running ai-stream (see tests/test_ui_chat_js.py, which
// starts the service and the fake model server and picks scenarios by a tag in the prompt).
import { test } from "node:test";
import assert from "node:assert/strict";
import { DefaultChatTransport, readUIMessageStream, parseJsonEventStream, uiMessageChunkSchema } from "ai";
import * as ai700 from "ai-7.0.0";

const BASE = process.env.AI_STREAM_URL;
const KEY = process.env.AI_STREAM_KEY;
assert.ok(BASE && KEY, "AI_STREAM_URL and AI_STREAM_KEY must be set");
const AUTH = { Authorization: `Bearer ${KEY}` };

let counter = 0;
const newId = (prefix) => `${prefix}-${process.pid}-${Date.now()}-${++counter}`;
const userMessage = (text, id = newId("u")) => ({ id, role: "user", parts: [{ type: "text", text }] });
const textOf = (message) => message.parts.filter((p) => p.type === "text").map((p) => p.text).join("");

function transport(body = {}) {
  return new DefaultChatTransport({ api: `${BASE}/ai/ui/chat`, headers: AUTH, body });
}

// One request through DefaultChatTransport, read with readUIMessageStream as useChat does.
async function ask({ chatId = newId("chat"), messages, trigger = "submit-message", messageId, body, signal }) {
  const stream = await transport(body).sendMessages({
    chatId, messages, trigger, messageId, abortSignal: signal ?? new AbortController().signal,
  });
  const errors = [];
  const snapshots = [];
  for await (const message of readUIMessageStream({ stream, onError: (e) => errors.push(e) })) {
    snapshots.push(structuredClone(message));
  }
  return { chatId, message: snapshots.at(-1), snapshots, errors };
}

async function stored(chatId) {
  const response = await fetch(`${BASE}/ai/ui/chat/${chatId}/messages`, { headers: AUTH });
  return { status: response.status, messages: response.ok ? await response.json() : null };
}

// The raw chunks of one request, each checked against a schema (the SDK's parser's verdict).
async function rawChunks(body, schema) {
  const response = await fetch(`${BASE}/ai/ui/chat`, {
    method: "POST", headers: { ...AUTH, "content-type": "application/json" }, body: JSON.stringify(body),
  });
  assert.equal(response.headers.get("x-vercel-ai-ui-message-stream"), "v1");
  const results = [];
  const reader = parseJsonEventStream({ stream: response.body, schema }).getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    results.push(value);
  }
  return results;
}

test("text is relayed exactly, and every chunk passes ai@7.0.0's strict schema", async () => {
  const { message, errors } = await ask({ messages: [userMessage("hello there, UI stream")] });
  assert.deepEqual(errors, []);
  assert.equal(message.role, "assistant");
  assert.equal(textOf(message), "Echo: hello there, UI stream");
  assert.deepEqual(Object.keys(message.metadata).sort(), ["model", "persisted", "provider", "usage"]);
  assert.equal(message.metadata.model, "claude-primary");
  const body = { id: newId("chat"), messages: [userMessage("strict check")], trigger: "submit-message" };
  for (const schema of [ai700.uiMessageChunkSchema, uiMessageChunkSchema]) {
    const chunks = await rawChunks(body.id ? { ...body, id: newId("chat") } : body, schema);
    assert.ok(chunks.length >= 8);
    for (const chunk of chunks) assert.ok(chunk.success, JSON.stringify(chunk.error?.message));
    assert.deepEqual(chunks.map((c) => c.value.type).slice(0, 3), ["start", "start-step", "text-start"]);
    assert.deepEqual(chunks.map((c) => c.value.type).slice(-3), ["text-end", "finish-step", "finish"]);
  }
});

test("start.messageId is the id the answer is stored under", async () => {
  const question = userMessage("remember me");
  const { chatId, message } = await ask({ messages: [question] });
  assert.equal(message.metadata.persisted, true);
  const { status, messages } = await stored(chatId);
  assert.equal(status, 200);
  assert.deepEqual(messages.map((m) => [m.id, m.role, textOf(m)]), [
    [question.id, "user", "remember me"],
    [message.id, "assistant", "Echo: remember me"],
  ]);
  // The next turn sends the answer back under that id: nothing is stored twice.
  const next = userMessage("and again");
  await ask({ chatId, messages: [question, message, next] });
  const after = await stored(chatId);
  assert.deepEqual(after.messages.map((m) => m.id).slice(0, 3), [question.id, message.id, next.id]);
  assert.equal(after.messages.length, 4);
});

test("regenerate replaces the answer", async () => {
  const question = userMessage("say it twice");
  const first = await ask({ messages: [question] });
  // useChat's regenerate(): the list without the answer, and the answer's id.
  const again = await ask({
    chatId: first.chatId, messages: [question], trigger: "regenerate-message", messageId: first.message.id,
  });
  assert.notEqual(again.message.id, first.message.id);
  const { messages } = await stored(first.chatId);
  assert.deepEqual(messages.map((m) => m.id), [question.id, again.message.id]);
});

test("an edited message makes the stored thread follow the client", async () => {
  const q1 = userMessage("first question");
  const first = await ask({ messages: [q1] });
  const q2 = userMessage("second question");
  const second = await ask({ chatId: first.chatId, messages: [q1, first.message, q2] });
  // sendMessage({ text, messageId }) keeps the id and replaces the text; what followed is dropped.
  const edited = { ...q2, parts: [{ type: "text", text: "second question, edited" }] };
  const third = await ask({ chatId: first.chatId, messages: [q1, first.message, edited], messageId: q2.id });
  assert.equal(textOf(third.message), "Echo: second question, edited");
  const { messages } = await stored(first.chatId);
  assert.deepEqual(messages.map((m) => textOf(m)), [
    "first question", "Echo: first question", "second question, edited", "Echo: second question, edited",
  ]);
  assert.ok(!messages.some((m) => m.id === second.message.id));
});

test("store: false stores nothing", async () => {
  const { chatId, message } = await ask({ messages: [userMessage("forget me")], body: { store: false } });
  assert.equal(textOf(message), "Echo: forget me");
  assert.equal(message.metadata.persisted, undefined);
  assert.equal((await stored(chatId)).status, 404);
});

test("an error before any text is one error chunk with a safe sentence", async () => {
  const { message, errors } = await ask({ messages: [userMessage("[error-before] anyone?")] });
  assert.equal(errors.length, 1);
  assert.match(errors[0].message, /^No model could answer \(3 models tried\)\./);
  assert.ok(!/fake upstream|127\.0\.0\.1|Traceback/.test(errors[0].message));
  assert.equal(textOf(message ?? { parts: [] }), "");
});

test("an error after text keeps the text and ends with the error", async () => {
  const { message, errors } = await ask({ messages: [userMessage("[error-after] go")] });
  assert.equal(textOf(message), "Partial text");
  assert.equal(errors.length, 1);
  assert.ok(errors[0].message.length > 0 && !/fake upstream/.test(errors[0].message));
});

test("a fallback before text names the model that answered", async () => {
  const { message, errors } = await ask({ messages: [userMessage("[fallback] who answers?")] });
  assert.deepEqual(errors, []);
  assert.equal(message.metadata.model, "claude-backup");
  assert.equal(textOf(message), "Echo: who answers?");
});

test("restart_on_failure: reset-step, then one clean answer from the next model", async () => {
  const question = userMessage("[restart] try");
  const { chatId, message, snapshots, errors } = await ask({ messages: [question], body: { restart_on_failure: true } });
  assert.deepEqual(errors, []);
  assert.ok(snapshots.some((s) => textOf(s) === "Broken start"), "the failed model's text was shown first");
  assert.equal(textOf(message), "Clean answer");
  assert.equal(message.parts.filter((p) => p.type === "text").length, 1);
  assert.equal(message.metadata.model, "claude-backup");
  const { messages } = await stored(chatId);
  assert.equal(textOf(messages[1]), "Clean answer");
  assert.equal(messages[1].metadata.model, "claude-backup");
  // Why it is opt-in: ai@7.0.0 does not know the chunk.
  const chunks = await rawChunks(
    { id: newId("chat"), messages: [userMessage("[restart] again")], restart_on_failure: true, store: false },
    ai700.uiMessageChunkSchema,
  );
  assert.deepEqual(chunks.filter((c) => !c.success).map((c) => c.rawValue?.type), ["reset-step"]);
});

test("aborting the request ends the model's request too", async () => {
  const controller = new AbortController();
  const stream = await transport({ store: false }).sendMessages({
    chatId: newId("chat"), messages: [userMessage("[stall] wait")], trigger: "submit-message",
    messageId: undefined, abortSignal: controller.signal,
  });
  const seen = [];
  await assert.rejects(async () => {
    for await (const message of readUIMessageStream({ stream, terminateOnError: true })) {
      seen.push(textOf(message));
      if (textOf(message) === "Waiting") controller.abort();
    }
  });
  assert.equal(seen.at(-1), "Waiting");
  // The service closes the upstream request: tests/test_ui_chat_js.py checks the fake saw it.
  await new Promise((resolve) => setTimeout(resolve, 1500));
});

test("validation errors are JSON the SDK reports as the error", async () => {
  const bad = { id: newId("u"), role: "user", parts: [{ type: "file", mediaType: "image/png", url: "data:," }] };
  await assert.rejects(
    transport().sendMessages({
      chatId: newId("chat"), messages: [bad], trigger: "submit-message", messageId: undefined,
      abortSignal: new AbortController().signal,
    }),
    (error) => /messages\.0\.parts\.0 is a file part/.test(error.message),
  );
});

test("useChat({ resume: true }): reconnectToStream rebuilds an answer in progress from its start", async () => {
  const chatId = newId("chat");
  const question = userMessage("[slow] come back later");
  const controller = new AbortController();
  const first = await fetch(`${BASE}/ai/ui/chat`, {
    method: "POST", headers: { ...AUTH, "content-type": "application/json" }, signal: controller.signal,
    body: JSON.stringify({ id: chatId, messages: [question], trigger: "submit-message" }),
  });
  const answerId = first.headers.get("x-answer-id");
  const reader = first.body.getReader();
  await reader.read(); // the stream has started...
  controller.abort(); // ...and the page is reloaded
  // What useChat({ resume: true }) does on mount: GET {api}/{chatId}/stream, a full replay.
  const stream = await transport().reconnectToStream({ chatId });
  assert.ok(stream, "an answer in progress is found");
  const errors = [];
  let message;
  for await (const snapshot of readUIMessageStream({ stream, onError: (e) => errors.push(e) })) message = snapshot;
  assert.deepEqual(errors, []);
  assert.equal(message.id, answerId);
  assert.equal(textOf(message), "Echo: come back later and more words to read");
  assert.equal(message.metadata.persisted, true);
  const { messages } = await stored(chatId);
  assert.deepEqual(messages.map((m) => [m.id, m.metadata?.status ?? null, textOf(m)]), [
    [question.id, null, "[slow] come back later"],
    [answerId, "complete", "Echo: come back later and more words to read"],
  ]);
});

test("reconnectToStream finds nothing for a chat without an answer in progress", async () => {
  const { chatId } = await ask({ messages: [userMessage("done already")] });
  assert.equal(await transport().reconnectToStream({ chatId }), null);
  assert.equal(await transport().reconnectToStream({ chatId: newId("chat") }), null);
});

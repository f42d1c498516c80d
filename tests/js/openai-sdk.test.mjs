// The `openai` npm package, unchanged, against the service's OpenAI-compatible routes.
// Run by tests/test_compat_js.py, which starts the fake upstream and the service and passes
// AI_STREAM_URL (the service's base URL) and AI_STREAM_KEY (a key it accepts).
import assert from "node:assert/strict";
import { test } from "node:test";
import OpenAI from "openai";

const baseURL = `${process.env.AI_STREAM_URL}/v1`;
const client = new OpenAI({ baseURL, apiKey: process.env.AI_STREAM_KEY, maxRetries: 0 });
const hi = [{ role: "user", content: "Hi" }];

test("create answers one chat completion", async () => {
  const completion = await client.chat.completions.create({ model: "ai-stream", messages: hi });
  assert.equal(completion.object, "chat.completion");
  assert.equal(completion.model, "claude-primary");
  assert.equal(completion.choices[0].message.content, "Hello, world!");
  assert.equal(completion.choices[0].finish_reason, "stop");
  assert.deepEqual(completion.usage, { prompt_tokens: 11, completion_tokens: 4, total_tokens: 15 });
});

test("a stream with include_usage", async () => {
  const stream = await client.chat.completions.create({
    model: "ai-stream", messages: hi, stream: true, stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  assert.equal(new Set(chunks.map((c) => c.id)).size, 1);
  assert.equal(chunks[0].choices[0].delta.role, "assistant");
  const text = chunks.flatMap((c) => c.choices.map((choice) => choice.delta.content ?? "")).join("");
  assert.equal(text, "Hello, world!");
  const last = chunks.at(-1);
  assert.deepEqual(last.choices, []);
  assert.equal(last.usage.total_tokens, 15);
});

test("the stream helper's final completion", async () => {
  const runner = client.chat.completions.stream({ model: "anthropic/claude-primary", messages: hi });
  const pieces = [];
  runner.on("content", (delta) => pieces.push(delta));
  const final = await runner.finalChatCompletion();
  assert.equal(pieces.join(""), "Hello, world!");
  assert.equal(final.choices[0].message.content, "Hello, world!");
});

test("models list the chain's alias first", async () => {
  const ids = [];
  for await (const model of client.models.list()) ids.push(model.id);
  assert.deepEqual(ids, ["ai-stream", "anthropic/claude-primary", "anthropic/claude-backup", "openai/gpt-fallback"]);
});

test("a failure mid-stream is thrown after the text", async () => {
  const stream = await client.chat.completions.create({ model: "claude-backup", messages: hi, stream: true });
  let text = "";
  await assert.rejects(async () => {
    for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? "";
  }, (error) => error instanceof OpenAI.APIError && /overloaded or unavailable/.test(error.message));
  assert.equal(text, "Hello,");
});

test("errors arrive as the SDK's error classes", async () => {
  await assert.rejects(client.chat.completions.create({ model: "gpt-unknown", messages: hi }),
    (error) => error instanceof OpenAI.NotFoundError && error.code === "model_not_found");
  await assert.rejects(
    client.chat.completions.create({ model: "ai-stream", messages: hi, tools: [{ type: "function", function: { name: "f" } }] }),
    (error) => error instanceof OpenAI.BadRequestError && error.param === "tools");
  const stranger = new OpenAI({ baseURL, apiKey: "not-a-key-of-this-service", maxRetries: 0 });
  await assert.rejects(stranger.chat.completions.create({ model: "ai-stream", messages: hi }),
    (error) => error instanceof OpenAI.AuthenticationError && error.code === "invalid_api_key");
});

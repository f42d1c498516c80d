// The playground and live status of ai-stream. Plain JavaScript, no dependencies: it calls
// the service's own API (/health, /ai/stream/chat, /ai/threads, /ai/status) from this origin.
"use strict";

(() => {
  const KEY_STORAGE = "ai-stream.api-key"; // sessionStorage only: gone when the tab closes
  const STATUS_EVERY_MS = 5000;
  const THREAD_PAGE = 30;
  const $ = (id) => document.getElementById(id);

  const state = {
    key: sessionStorage.getItem(KEY_STORAGE) || "",
    needKey: false,
    threadId: null, // the thread being written to, in thread mode
    threadStored: false, // whether it exists in the store yet
    history: [], // the conversation sent with each request when not in thread mode
    controller: null, // aborts the answer in progress
    resumable: null, // the id of the answer in progress when it outlives its request (a thread's)
    threadsBefore: null,
  };

  class KeyNeeded extends Error {}

  // --- talking to the service -------------------------------------------------------------

  function headers(json) {
    const h = {};
    if (json) h["Content-Type"] = "application/json";
    if (state.key) h.Authorization = "Bearer " + state.key;
    return h;
  }

  async function sentence(resp) {
    // The service's own words: every error it sends is {"error", "code", "details"}.
    try {
      const body = await resp.json();
      if (body && typeof body.error === "string") return body.error;
    } catch (_) { /* not JSON */ }
    return "The service answered " + resp.status + ".";
  }

  async function api(path, options = {}) {
    const resp = await fetch(path, { ...options, headers: headers(options.body !== undefined) });
    if (resp.status === 401) {
      askForKey(await sentence(resp));
      throw new KeyNeeded("key needed");
    }
    if (!resp.ok) throw new Error(await sentence(resp));
    return resp.status === 204 ? null : resp.json();
  }

  function userQuery(extra = {}) {
    const params = new URLSearchParams(extra);
    const user = $("user-id").value.trim();
    if (user) params.set("user_id", user);
    const text = params.toString();
    return text ? "?" + text : "";
  }

  async function* readEvents(body) {
    // Server-Sent Events: `data: <json>` lines; `:` lines are keep-alive comments.
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n")) >= 0) {
          let line = buffer.slice(0, end);
          buffer = buffer.slice(end + 1);
          if (line.endsWith("\r")) line = line.slice(0, -1);
          if (line.startsWith("data:")) {
            const data = line.slice(5);
            yield JSON.parse(data.startsWith(" ") ? data.slice(1) : data);
          }
        }
      }
    } finally {
      reader.releaseLock();
    }
  }

  // --- the key ----------------------------------------------------------------------------

  function askForKey(message) {
    state.needKey = true;
    $("key-button").hidden = false;
    const error = $("key-error");
    error.hidden = !state.key;
    error.textContent = state.key ? message : "";
    const dialog = $("key-dialog");
    if (!dialog.open) dialog.showModal();
    $("key-input").focus();
  }

  function useKey(event) {
    event.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) return;
    state.key = key;
    state.needKey = false;
    sessionStorage.setItem(KEY_STORAGE, key);
    $("key-input").value = "";
    $("key-dialog").close();
    refreshStatus().then((ok) => ok && loadThreads());
  }

  // --- messages ---------------------------------------------------------------------------

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function addMessage(role, text) {
    $("empty").hidden = true;
    const item = element("li", "message " + role);
    item.append(element("div", "who", role === "user" ? "You" : "Answer"));
    const body = element("div", "text", text);
    const meta = element("div", "meta");
    item.append(body, meta);
    $("messages").append(item);
    item.scrollIntoView({ block: "end" });
    return { item, body, meta };
  }

  function badge(text, kind, title) {
    const node = element("span", "badge " + kind, text);
    if (title) node.title = title;
    return node;
  }

  function usageText(usage) {
    if (!usage) return null;
    const parts = ["in " + usage.input_tokens, "out " + usage.output_tokens];
    if (usage.cache_read_input_tokens != null) parts.push("cache read " + usage.cache_read_input_tokens);
    if (usage.cache_creation_input_tokens != null) parts.push("cache write " + usage.cache_creation_input_tokens);
    return parts.join(" · ");
  }

  function showDone(answer, done, timing) {
    const meta = answer.meta;
    meta.append(badge(done.provider + "/" + done.model, "model", "The model that answered"));
    for (const attempt of done.attempts || []) {
      meta.append(badge("fallback: " + attempt.model + " (" + attempt.code + ")", "fallback",
        "This model failed before the answer started; the next one answered"));
    }
    if (timing.ttftMs !== null) meta.append(badge("TTFT " + Math.round(timing.ttftMs) + " ms", "figure", "Time to first token"));
    const seconds = timing.streamMs / 1000;
    const rate = seconds > 0.001 ? (done.usage.output_tokens / seconds).toFixed(1) + " tok/s" : "– tok/s";
    meta.append(badge(rate, "figure", "Output tokens per second while the text streamed"));
    meta.append(badge(usageText(done.usage), "figure", "Token usage"));
    if (done.persisted === false) meta.append(badge("not stored", "warn", "The answer could not be stored in the thread"));
  }

  function showError(answer, text) {
    answer.item.classList.add("failed");
    answer.meta.append(element("p", "error", text));
  }

  function setBusy(busy) {
    $("send").hidden = busy;
    $("stop").hidden = !busy;
    $("new-chat").disabled = busy;
  }

  function chatBody(text) {
    const body = { stream: true };
    const model = $("model").value;
    if (model) body.model = model;
    const system = $("system").value;
    if (system.trim()) body.system = system;
    const zone = $("timezone").value.trim();
    if (zone) body.timezone = zone;
    if ($("use-thread").checked) {
      if (!state.threadId) state.threadId = newThreadId();
      body.thread_id = state.threadId;
      const user = $("user-id").value.trim();
      if (user) body.user_id = user;
      body.messages = [{ role: "user", content: text }];
    } else {
      body.messages = [...state.history, { role: "user", content: text }];
    }
    return body;
  }

  async function send() {
    const text = $("prompt").value;
    if (!text.trim() || state.controller) return;
    $("prompt").value = "";
    const body = chatBody(text);
    showThreadBar();
    addMessage("user", text);
    const answer = addMessage("assistant", "");
    answer.item.classList.add("streaming");
    const controller = new AbortController();
    state.controller = controller;
    setBusy(true);
    const started = performance.now();
    let firstAt = null;
    let received = "";
    let ended = false;
    try {
      const resp = await fetch("/ai/stream/chat", {
        method: "POST", headers: headers(true), body: JSON.stringify(body), signal: controller.signal,
      });
      if (!resp.ok) {
        const text = await sentence(resp);
        if (resp.status === 401) askForKey(text);
        showError(answer, text);
        return;
      }
      // A thread's answer goes on when its request ends: Stop has to cancel it by its id.
      if (body.thread_id) state.resumable = resp.headers.get("X-Answer-ID");
      for await (const event of readEvents(resp.body)) {
        if (event.type === "content") {
          if (firstAt === null) firstAt = performance.now();
          received += event.text;
          answer.body.textContent = received;
        } else if (event.type === "done") {
          ended = true;
          const now = performance.now();
          showDone(answer, event, { ttftMs: firstAt === null ? null : firstAt - started, streamMs: firstAt === null ? 0 : now - firstAt });
          if (event.message_id) state.threadStored = true;
        } else if (event.type === "error") {
          ended = true;
          showError(answer, event.error);
        }
      }
      if (!ended) showError(answer, "The stream ended before the answer was complete (the connection was cut).");
    } catch (err) {
      if (err.name === "AbortError") {
        answer.item.classList.add("stopped");
        answer.meta.append(badge("stopped", "warn", "You stopped this answer"));
      } else {
        showError(answer, "The connection to the service failed.");
      }
    } finally {
      answer.item.classList.remove("streaming");
      state.controller = null;
      state.resumable = null;
      setBusy(false);
      if (!$("use-thread").checked) {
        state.history.push({ role: "user", content: text });
        if (received.trim()) state.history.push({ role: "assistant", content: received });
      }
      showThreadBar();
      refreshStatus();
      if ($("use-thread").checked) loadThreads();
    }
  }

  function stop() {
    if (state.resumable) {
      const url = "/ai/stream/answers/" + encodeURIComponent(state.resumable) + "/cancel" + userQuery();
      fetch(url, { method: "POST", headers: headers(false) }).catch(() => {});
    }
    if (state.controller) state.controller.abort();
  }

  function newThreadId() {
    const bytes = crypto.getRandomValues(new Uint8Array(8));
    return "t-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function clearConversation() {
    state.history = [];
    state.threadId = null;
    state.threadStored = false;
    for (const item of [...$("messages").querySelectorAll(".message")]) item.remove();
    $("empty").hidden = false;
    $("thread-title").textContent = "New thread";
    showThreadBar();
    markCurrentThread();
  }

  function showThreadBar() {
    $("thread-bar").hidden = !$("use-thread").checked;
    $("rename").hidden = !state.threadStored;
  }

  // --- threads ----------------------------------------------------------------------------

  function when(iso) {
    const date = new Date(iso);
    return date.toLocaleString(undefined, { dateStyle: "short", timeStyle: "short" });
  }

  async function loadThreads(more = false) {
    const hint = $("threads-hint");
    const params = { limit: String(THREAD_PAGE) };
    if (more && state.threadsBefore) params.before = state.threadsBefore;
    let page;
    try {
      page = await api("/ai/threads" + userQuery(params));
    } catch (err) {
      if (!(err instanceof KeyNeeded)) hint.textContent = err.message;
      return;
    }
    const list = $("thread-list");
    if (!more) list.replaceChildren();
    for (const thread of page.threads) list.append(threadItem(thread));
    state.threadsBefore = page.next_before;
    $("more-threads").hidden = !page.has_more;
    hint.textContent = list.children.length ? "" : "No stored threads yet. Turn on \u201cStore the conversation as a thread\u201d in Settings.";
    markCurrentThread();
  }

  function threadItem(thread) {
    const item = element("li");
    const button = element("button", "thread");
    button.type = "button";
    button.dataset.threadId = thread.id;
    button.append(element("span", "title", thread.title || "Untitled"));
    button.append(element("span", "sub", thread.message_count + " messages · " + when(thread.updated_at)));
    button.addEventListener("click", () => openThread(thread));
    item.append(button);
    return item;
  }

  function markCurrentThread() {
    for (const button of $("thread-list").querySelectorAll("button.thread")) {
      const current = button.dataset.threadId === state.threadId;
      button.classList.toggle("current", current);
      if (current && $("rename-form").hidden) $("thread-title").textContent = button.querySelector(".title").textContent;
    }
  }

  async function openThread(thread) {
    if (state.controller) return;
    let page;
    try {
      page = await api("/ai/threads/" + encodeURIComponent(thread.id) + "/messages" + userQuery({ limit: "200" }));
    } catch (err) {
      if (!(err instanceof KeyNeeded)) $("threads-hint").textContent = err.message;
      return;
    }
    clearConversation();
    $("use-thread").checked = true;
    state.threadId = thread.id;
    state.threadStored = true;
    $("thread-title").textContent = thread.title || "Untitled";
    showThreadBar();
    if (page.has_more) $("messages").append(element("li", "note", "Older messages are not shown."));
    for (const message of page.messages) {
      const shown = addMessage(message.role, message.content);
      if (message.role !== "assistant") continue;
      if (message.model) shown.meta.append(badge(message.provider + "/" + message.model, "model", "The model that answered"));
      if (message.usage) shown.meta.append(badge(usageText(message.usage), "figure", "Token usage"));
      if (message.status !== "complete") shown.meta.append(badge(message.status, "warn", "How this answer ended"));
    }
    markCurrentThread();
    $("prompt").focus();
  }

  async function rename(event) {
    event.preventDefault();
    const title = $("rename-input").value;
    try {
      const thread = await api("/ai/threads/" + encodeURIComponent(state.threadId) + userQuery(), {
        method: "PATCH", body: JSON.stringify({ title }),
      });
      $("thread-title").textContent = thread.title;
      toggleRename(false);
      loadThreads();
    } catch (err) {
      if (!(err instanceof KeyNeeded)) $("thread-title").textContent = err.message;
    }
  }

  function toggleRename(open) {
    $("rename-form").hidden = !open;
    $("rename").hidden = open;
    if (open) {
      $("rename-input").value = $("thread-title").textContent;
      $("rename-input").focus();
    }
  }

  // --- status -----------------------------------------------------------------------------

  function circuitText(circuit) {
    if (!circuit) return "not in the chain";
    if (circuit.state === "open") return "open, retry in " + Math.ceil(circuit.retry_in_seconds) + " s";
    if (circuit.state === "half_open") return "half open";
    return "closed";
  }

  function drawChart(id, values, unit) {
    const svg = $(id);
    const NS = "http://www.w3.org/2000/svg";
    const numbers = values.map((v) => v || 0);
    const max = Math.max(1, ...numbers);
    const width = 300 / values.length;
    svg.replaceChildren();
    const axis = document.createElementNS(NS, "line");
    axis.setAttribute("x1", "0"); axis.setAttribute("x2", "300");
    axis.setAttribute("y1", "59.5"); axis.setAttribute("y2", "59.5");
    axis.setAttribute("class", "axis");
    svg.append(axis);
    values.forEach((value, i) => {
      if (!value) return;
      const height = Math.max(2, (value / max) * 56);
      const bar = document.createElementNS(NS, "rect");
      bar.setAttribute("x", String(i * width + 0.5));
      bar.setAttribute("y", String(60 - height));
      bar.setAttribute("width", String(Math.max(1, width - 1)));
      bar.setAttribute("height", String(height));
      const tip = document.createElementNS(NS, "title");
      tip.textContent = value + unit;
      bar.append(tip);
      svg.append(bar);
    });
    $(id + "-max").textContent = "max " + (numbers.some((v) => v > 0) ? Math.round(Math.max(...numbers)) + unit : "–");
  }

  async function refreshStatus() {
    if (state.needKey) return false;
    let status;
    try {
      status = await api("/ai/status");
    } catch (err) {
      if (!(err instanceof KeyNeeded)) $("status-updated").textContent = err.message;
      return false;
    }
    const storage = status.storage;
    const storageState = $("storage-state");
    storageState.textContent = storage.backend + (storage.ok ? " · ok" : " · not answering");
    storageState.className = storage.ok ? "good" : "bad";
    $("open-streams").textContent = String(status.open_streams);
    const models = $("model-status");
    models.replaceChildren();
    for (const model of status.models) {
      const item = element("li", "model-row");
      item.dataset.model = model.name;
      item.append(element("span", "name", model.name));
      const circuit = model.circuit ? model.circuit.state : "none";
      item.append(badge(circuitText(model.circuit), "circuit circuit-" + circuit, "Circuit breaker state"));
      item.append(badge(model.has_credentials ? "key set" : "no key", model.has_credentials ? "cred good" : "cred bad",
        "Whether the service has credentials for this model's provider"));
      models.append(item);
    }
    const intervals = status.recent.intervals;
    drawChart("chart-answers", intervals.map((i) => i.answers), "");
    drawChart("chart-ttft", intervals.map((i) => i.ttft_ms), " ms");
    drawChart("chart-fallbacks", intervals.map((i) => i.fallbacks), "");
    const minutes = Math.round((intervals.length * status.recent.interval_seconds) / 60);
    $("status-window").textContent = "Last " + minutes + " minutes, per " + status.recent.interval_seconds + " s.";
    $("status-updated").textContent = "updated " + new Date().toLocaleTimeString();
    return true;
  }

  // --- start ------------------------------------------------------------------------------

  async function loadModels() {
    let health;
    try {
      const resp = await fetch("/health");
      health = await resp.json();
    } catch (_) {
      return;
    }
    const select = $("model");
    for (const model of health.models || []) {
      const option = element("option", "", model.name + (model.has_credentials ? "" : " (no key)"));
      option.value = model.name;
      select.append(option);
    }
  }

  function start() {
    $("timezone").value = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
    $("composer").addEventListener("submit", (event) => { event.preventDefault(); send(); });
    $("prompt").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        send();
      }
    });
    $("stop").addEventListener("click", stop);
    $("new-chat").addEventListener("click", clearConversation);
    $("use-thread").addEventListener("change", clearConversation);
    $("user-id").addEventListener("change", () => { clearConversation(); loadThreads(); });
    $("refresh-threads").addEventListener("click", () => loadThreads());
    $("more-threads").addEventListener("click", () => loadThreads(true));
    $("rename").addEventListener("click", () => toggleRename(true));
    $("rename-cancel").addEventListener("click", () => toggleRename(false));
    $("rename-form").addEventListener("submit", rename);
    $("key-form").addEventListener("submit", useKey);
    $("key-button").addEventListener("click", () => askForKey(""));
    $("key-dialog").addEventListener("cancel", (event) => event.preventDefault());
    if (state.key) $("key-button").hidden = false;
    if (window.matchMedia("(min-width: 900px)").matches) $("settings").open = true;
    loadModels();
    refreshStatus().then((ok) => ok && loadThreads());
    setInterval(refreshStatus, STATUS_EVERY_MS);
  }

  start();
})();

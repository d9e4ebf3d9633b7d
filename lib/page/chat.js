// sluice's chat page. Plain browser JavaScript modules, no framework: it talks to
// POST /conversations, POST /chat and GET /chat/streams/{id} on the server that served it, and
// reads the answer as small SSE events (start, text, done, error). Markdown: markdown.js;
// reading and resuming the stream: stream.js; the libraries: vendor.js (deno task build:page).
import { renderMarkdown, StreamingMarkdown } from "./markdown.js";
import { readAnswer, StreamError } from "./stream.js";
import { createFollower } from "./follow.js";

const $ = (id) => document.getElementById(id);
const log = $("log");
const form = $("composer");
const prompt = $("prompt");
const sendButton = $("send");
const stopButton = $("stop");
const status = $("status");
const settings = $("settings");
const keyInput = $("key");
const modelInput = $("model");

const KEY = "sluice.key";
const MODEL = "sluice.model";
const CONVERSATION = "sluice.conversation";

/** The answer in progress: `{ controller, streamId }`, or null. */
let running = null;
/**
 * The history, kept here only when the server has no conversation store (no KV): then the
 * whole history goes with each message instead of a conversation id.
 */
let localHistory = null;
const follower = createFollower({ button: $("jump") });

keyInput.value = localStorage.getItem(KEY) ?? "";
modelInput.value = localStorage.getItem(MODEL) ?? "";
keyInput.addEventListener("change", () => localStorage.setItem(KEY, keyInput.value.trim()));
modelInput.addEventListener("change", () => localStorage.setItem(MODEL, modelInput.value.trim()));

function authHeaders() {
  const key = keyInput.value.trim();
  return key ? { authorization: `Bearer ${key}` } : {};
}

function headers(accept) {
  return { "content-type": "application/json", accept, ...authHeaders() };
}

/** Reads an error body in Anthropic's shape: `{ status, type, message }`. */
async function readError(response) {
  let type = "http_error";
  let message = `HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (body?.error?.message) ({ type, message } = body.error);
  } catch {
    // not JSON: keep the status
  }
  return { status: response.status, type, message };
}

class ApiError extends Error {
  constructor(error) {
    super(`${error.type}: ${error.message}`);
    this.status = error.status;
    this.type = error.type;
  }
}

function setStatus(text) {
  status.textContent = text;
}

function addTurn(role, text) {
  const item = document.createElement("li");
  item.className = `turn ${role}`;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "Claude";
  const badge = document.createElement("span");
  badge.className = "badge";
  who.append(badge);
  const body = document.createElement("div");
  body.className = role === "user" ? "text plain" : "text markdown";
  if (role === "user") body.textContent = text;
  else if (text) renderMarkdown(body, text);
  const meta = document.createElement("div");
  meta.className = "meta";
  item.append(who, body, meta);
  log.append(item);
  $("empty").hidden = true;
  return { item, body, meta, badge };
}

function formatMs(ms) {
  if (ms === null || ms === undefined) return "n/a";
  return ms < 10000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/** "TTFT 612 ms · 18 in / 54 out tokens · 1840 ms · 31 tok/s · $0.0012". */
function describeDone(done) {
  const parts = [
    `TTFT ${formatMs(done.ttft_ms)}`,
    `${done.usage.input_tokens} in / ${done.usage.output_tokens} out tokens`,
    formatMs(done.total_ms),
  ];
  if (typeof done.output_tokens_per_second === "number") {
    parts.push(`${Math.round(done.output_tokens_per_second)} tok/s`);
  }
  // Every sluice's `done` carries `cost_usd`; it is null when the model has no price, and then no
  // cost is shown.
  const cost = done.cost_usd ?? done.cost?.usd;
  if (typeof cost === "number") parts.push(`$${cost < 0.01 ? cost.toFixed(4) : cost.toFixed(2)}`);
  if (done.stop_reason && done.stop_reason !== "end_turn") parts.push(done.stop_reason);
  if (done.stored === false) parts.push("not kept: conversation full");
  return parts.join(" · ");
}

/**
 * The tutorial's point, per answer: how much of the whole time went to waiting for the first
 * token (the rest is the answer being written while you read it).
 */
function timingBar(done) {
  if (typeof done.ttft_ms !== "number" || !(done.total_ms > 0)) return null;
  const share = Math.min(1, Math.max(0, done.ttft_ms / done.total_ms));
  const bar = document.createElement("div");
  bar.className = "timing";
  bar.setAttribute("role", "img");
  bar.setAttribute(
    "aria-label",
    `first token after ${formatMs(done.ttft_ms)} of ${formatMs(done.total_ms)}`,
  );
  bar.title = `waiting ${formatMs(done.ttft_ms)}, then streaming until ${formatMs(done.total_ms)}`;
  const wait = document.createElement("span");
  wait.className = "wait";
  wait.style.width = `${(share * 100).toFixed(1)}%`;
  const stream = document.createElement("span");
  stream.className = "stream";
  bar.append(wait, stream);
  return bar;
}

/** Shows an error where the answer would be, with what to do about it. */
function showError(answer, error, retry) {
  answer.item.dataset.state = "error";
  const box = document.createElement("div");
  box.className = "error";
  box.setAttribute("role", "alert");
  const text = document.createElement("p");
  const actions = document.createElement("p");
  actions.className = "actions";
  const button = (label, onClick) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.addEventListener("click", onClick);
    actions.append(b);
    return b;
  };
  if (error.status === 401) {
    const entered = keyInput.value.trim() !== "";
    text.textContent = entered
      ? "This server refused the gateway key in Settings. Check it and ask again."
      : "This server needs a gateway key. Enter it in Settings, then ask again.";
    button("Open Settings", () => {
      settings.open = true;
      keyInput.focus();
      keyInput.select();
    });
  } else {
    text.textContent = error instanceof ApiError
      ? `${error.type}: ${error.message.replace(/^[a-z_]+: /, "")}`
      : error.message;
  }
  if (retry) button("Ask again", retry);
  box.append(text, actions);
  answer.meta.replaceChildren(box);
}

async function createConversation() {
  const response = await fetch("/conversations", {
    method: "POST",
    headers: headers("application/json"),
    body: "{}",
  });
  if (response.status === 503) {
    localHistory = [];
    return null;
  }
  if (!response.ok) throw new ApiError(await readError(response));
  const { id } = await response.json();
  localStorage.setItem(CONVERSATION, id);
  return id;
}

/** Shows the stored conversation after a reload. */
async function restore() {
  const id = localStorage.getItem(CONVERSATION);
  if (!id) return;
  const response = await fetch(`/conversations/${encodeURIComponent(id)}`, {
    headers: headers("application/json"),
  });
  if (!response.ok) {
    localStorage.removeItem(CONVERSATION);
    return;
  }
  const conversation = await response.json();
  for (const message of conversation.messages) addTurn(message.role, message.content);
  follower.toEnd();
}

function setRunning(value) {
  running = value;
  stopButton.disabled = !value;
  sendButton.disabled = Boolean(value);
}

/** Posts the message (starting a conversation first if needed); returns the SSE response. */
async function postChat(text, signal) {
  let conversationId = localStorage.getItem(CONVERSATION);
  if (!conversationId && !localHistory) conversationId = await createConversation();
  for (let attempt = 0;; attempt++) {
    const request = localHistory
      ? { messages: [...localHistory, { role: "user", content: text }] }
      : { message: text, conversation_id: conversationId };
    const model = modelInput.value.trim();
    if (model) request.model = model;
    // No x-sluice-on-disconnect: a dropped connection lets the server finish the answer, which
    // this page then resumes. Stop asks the server to stop it (DELETE /chat/streams/{id}).
    const response = await fetch("/chat", {
      method: "POST",
      headers: headers("text/event-stream"),
      body: JSON.stringify(request),
      signal,
    });
    // The conversation expired or was deleted: start a new one and ask again, once.
    if (response.status === 404 && !localHistory && attempt === 0) {
      localStorage.removeItem(CONVERSATION);
      conversationId = await createConversation();
      continue;
    }
    if (!response.ok) throw new ApiError(await readError(response));
    return response;
  }
}

async function send(text) {
  setStatus("");
  const question = addTurn("user", text);
  const answer = addTurn("assistant", "");
  answer.item.dataset.state = "waiting";
  follower.start(question.item);
  // Screen readers announce the answer once it is whole, not every piece of it.
  log.setAttribute("aria-busy", "true");
  const controller = new AbortController();
  const current = { controller, streamId: null, stopping: false };
  setRunning(current);
  const markdown = new StreamingMarkdown(answer.body, { onRender: () => follower.follow() });
  let received = "";
  try {
    const response = await postChat(text, controller.signal);
    current.streamId = response.headers.get("x-sluice-stream-id");
    const final = await readAnswer(response, {
      headers: authHeaders(),
      signal: controller.signal,
      onReconnecting(attempt) {
        answer.item.dataset.state = "reconnecting";
        answer.badge.textContent = attempt > 1 ? `reconnecting (try ${attempt})…` : "reconnecting…";
      },
      onEvent({ event, data }) {
        if (answer.item.dataset.state === "reconnecting") answer.badge.textContent = "";
        if (event === "text") {
          answer.item.dataset.state = "streaming";
          markdown.append(data.text);
          received += data.text;
        }
      },
    });
    markdown.flush();
    // Stop pressed: the server ends the stream with an error event saying so; that is no error.
    if (current.stopping) throw new DOMException("stopped", "AbortError");
    if (final.event === "done") {
      answer.item.dataset.state = "done";
      const bar = timingBar(final.data);
      const line = document.createElement("span");
      line.className = "stats";
      line.textContent = describeDone(final.data);
      answer.meta.replaceChildren(...(bar ? [bar] : []), line);
      if (localHistory) {
        localHistory.push({ role: "user", content: text }, {
          role: "assistant",
          content: received,
        });
      }
    } else {
      const { type, message } = final.data.error;
      showError(answer, new ApiError({ status: 200, type, message }), null);
    }
  } catch (error) {
    markdown.flush();
    answer.badge.textContent = "";
    if (controller.signal.aborted || current.stopping) {
      answer.item.dataset.state = "stopped";
      answer.meta.textContent = "Stopped. This exchange is not kept in the conversation.";
    } else {
      const refused = error instanceof StreamError && error.response;
      const shown = refused ? new ApiError(await readError(error.response)) : error;
      const retry = () => {
        question.item.remove();
        answer.item.remove();
        send(text);
      };
      showError(answer, shown, retry);
    }
  } finally {
    log.setAttribute("aria-busy", "false");
    setRunning(null);
    follower.follow();
    prompt.focus({ preventScroll: true });
  }
}

/** Stops the answer: the server is told first (it would finish a dropped answer otherwise). */
async function stop() {
  const current = running;
  if (!current || current.stopping) return;
  current.stopping = true;
  if (current.streamId) {
    await fetch(`/chat/streams/${encodeURIComponent(current.streamId)}`, {
      method: "DELETE",
      headers: authHeaders(),
    }).catch(() => {});
  }
  current.controller.abort();
}

// The copy buttons of code blocks (markdown.js makes them; one listener serves them all).
log.addEventListener("click", async (event) => {
  const button = event.target.closest?.("button.copy");
  if (!button) return;
  const code = button.closest(".code")?.querySelector("pre code")?.textContent ?? "";
  try {
    await navigator.clipboard.writeText(code);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Copy failed";
  }
  setTimeout(() => (button.textContent = "Copy"), 1500);
});

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = prompt.value.trim();
  if (!text || running) return;
  prompt.value = "";
  send(text);
});

prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  }
});

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && running) stop();
});

stopButton.addEventListener("click", () => stop());

$("new-chat").addEventListener("click", () => {
  stop();
  localStorage.removeItem(CONVERSATION);
  localHistory = localHistory ? [] : null;
  log.replaceChildren();
  $("empty").hidden = false;
  setStatus("");
  prompt.focus();
});

restore().catch((error) => setStatus(`Could not load the conversation: ${error.message}`));
prompt.focus();

// sluice's chat page. Plain browser JavaScript, no build step and no dependencies: it talks to
// POST /conversations and POST /chat on the server that served it, and reads the answer as
// small SSE events (start, text, done, error).

const $ = (id) => document.getElementById(id);
const log = $("log");
const form = $("composer");
const prompt = $("prompt");
const sendButton = $("send");
const stopButton = $("stop");
const status = $("status");
const keyInput = $("key");
const modelInput = $("model");

const KEY = "sluice.key";
const MODEL = "sluice.model";
const CONVERSATION = "sluice.conversation";

/** The answer in progress: its AbortController, or null. */
let running = null;
/**
 * The history, kept here only when the server has no conversation store (no KV): then the
 * whole history goes with each message instead of a conversation id.
 */
let localHistory = null;

keyInput.value = localStorage.getItem(KEY) ?? "";
modelInput.value = localStorage.getItem(MODEL) ?? "";
keyInput.addEventListener("change", () => localStorage.setItem(KEY, keyInput.value.trim()));
modelInput.addEventListener("change", () => localStorage.setItem(MODEL, modelInput.value.trim()));

function headers(accept) {
  const h = { "content-type": "application/json", accept };
  const key = keyInput.value.trim();
  if (key) h.authorization = `Bearer ${key}`;
  return h;
}

/** Reads an error body in Anthropic's shape into one line. */
async function describeError(response) {
  try {
    const body = await response.json();
    if (body?.error?.message) return `${body.error.type}: ${body.error.message}`;
  } catch {
    // not JSON: fall through
  }
  return `HTTP ${response.status}`;
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
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  const meta = document.createElement("span");
  meta.className = "meta";
  item.append(who, body, meta);
  log.append(item);
  $("empty").hidden = true;
  item.scrollIntoView({ block: "end" });
  return { item, body, meta };
}

function formatMs(ms) {
  if (ms === null || ms === undefined) return "n/a";
  return ms < 10000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/** "TTFT 612 ms · 18 in / 54 out tokens · 1840 ms". */
function describeDone(done) {
  const parts = [
    `TTFT ${formatMs(done.ttft_ms)}`,
    `${done.usage.input_tokens} in / ${done.usage.output_tokens} out tokens`,
    formatMs(done.total_ms),
  ];
  if (done.stop_reason && done.stop_reason !== "end_turn") parts.push(done.stop_reason);
  if (done.stored === false) parts.push("not kept: conversation full");
  return parts.join(" · ");
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
  if (!response.ok) throw new Error(await describeError(response));
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
}

/**
 * Splits an SSE byte stream into events. Hand-written (a dozen lines) because the page has no
 * build step to bring a parser in, and the server's events are simple: `event:` and one `data:`.
 */
async function* readEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
    }
  }
}

function setRunning(controller) {
  running = controller;
  stopButton.disabled = !controller;
  sendButton.disabled = Boolean(controller);
}

async function send(text) {
  setStatus("");
  addTurn("user", text);
  const answer = addTurn("assistant", "");
  answer.item.dataset.state = "waiting";
  // Screen readers announce the answer once it is whole, not every piece of it.
  log.setAttribute("aria-busy", "true");
  const controller = new AbortController();
  setRunning(controller);
  const textNode = document.createTextNode("");
  answer.body.append(textNode);
  let received = "";
  try {
    let conversationId = localStorage.getItem(CONVERSATION);
    if (!conversationId && !localHistory) conversationId = await createConversation();
    let response;
    for (let attempt = 0; attempt < 2; attempt++) {
      const request = localHistory
        ? { messages: [...localHistory, { role: "user", content: text }] }
        : { message: text, conversation_id: conversationId };
      const model = modelInput.value.trim();
      if (model) request.model = model;
      // Stop means stop: the answer is not finished and stored after the page lets go of it.
      const chatHeaders = headers("text/event-stream");
      chatHeaders["x-sluice-on-disconnect"] = "abort";
      response = await fetch("/chat", {
        method: "POST",
        headers: chatHeaders,
        body: JSON.stringify(request),
        signal: controller.signal,
      });
      // The conversation expired or was deleted: start a new one and ask again, once.
      if (response.status === 404 && !localHistory && attempt === 0) {
        localStorage.removeItem(CONVERSATION);
        conversationId = await createConversation();
        continue;
      }
      break;
    }
    if (!response.ok) throw new Error(await describeError(response));
    for await (const { event, data } of readEvents(response.body)) {
      if (event === "text") {
        if (answer.item.dataset.state === "waiting") answer.item.dataset.state = "streaming";
        // Follow the answer as it grows, unless the reader scrolled up to read something else.
        const following = innerHeight + scrollY >= document.body.scrollHeight - 48;
        textNode.appendData(data.text);
        if (following) answer.item.scrollIntoView({ block: "end" });
        received += data.text;
      } else if (event === "done") {
        answer.item.dataset.state = "done";
        answer.meta.textContent = describeDone(data);
        if (localHistory) {
          localHistory.push({ role: "user", content: text }, {
            role: "assistant",
            content: received,
          });
        }
      } else if (event === "error") {
        answer.item.dataset.state = "error";
        answer.meta.textContent = `Error: ${data.error.type}: ${data.error.message}`;
      }
    }
    if (answer.item.dataset.state !== "done" && answer.item.dataset.state !== "error") {
      answer.item.dataset.state = "error";
      answer.meta.textContent = "The answer ended early (connection lost).";
    }
  } catch (error) {
    if (controller.signal.aborted) {
      answer.item.dataset.state = "stopped";
      answer.meta.textContent = "Stopped. This exchange is not kept in the conversation.";
    } else {
      answer.item.dataset.state = "error";
      answer.meta.textContent = `Error: ${error.message}`;
      setStatus(error.message);
    }
  } finally {
    log.setAttribute("aria-busy", "false");
    setRunning(null);
    prompt.focus();
  }
}

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
  if (event.key === "Escape" && running) running.abort();
});

stopButton.addEventListener("click", () => running?.abort());

$("new-chat").addEventListener("click", () => {
  running?.abort();
  localStorage.removeItem(CONVERSATION);
  localHistory = localHistory ? [] : null;
  log.replaceChildren();
  $("empty").hidden = false;
  setStatus("");
  prompt.focus();
});

restore().catch((error) => setStatus(`Could not load the conversation: ${error.message}`));
prompt.focus();

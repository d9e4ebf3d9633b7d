// Reading /chat's SSE answer, and resuming it from GET /chat/streams/{id} when the connection
// drops. Every event of a resumable answer has an `id:`; the page remembers the last one it saw,
// asks for the events after it, and skips any it already has, so each piece of text is shown once.
import { EventSourceParserStream } from "./vendor.js";

/** The SSE events of a body (eventsource-parser), each `{ id, event, data }` with `data` parsed. */
export async function* readEvents(body) {
  const reader = body
    .pipeThrough(new TextDecoderStream())
    .pipeThrough(new EventSourceParserStream())
    .getReader();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      const id = value.id === undefined || value.id === "" ? undefined : Number(value.id);
      yield { id, event: value.event ?? "message", data: JSON.parse(value.data) };
    }
  } finally {
    reader.releaseLock();
  }
}

/** An answer that cannot be read any further; `response` when the server refused. */
export class StreamError extends Error {
  constructor(message, response) {
    super(message);
    this.response = response;
  }
}

/** Waits `ms`, or less when the browser says it is back online; rejects when `signal` aborts. */
function pause(ms, signal) {
  return new Promise((resolve, reject) => {
    const done = () => {
      clearTimeout(timer);
      removeEventListener("online", done);
      signal.removeEventListener("abort", stop);
      resolve();
    };
    const stop = () => {
      done();
      reject(signal.reason);
    };
    const timer = setTimeout(done, ms);
    addEventListener("online", done);
    signal.addEventListener("abort", stop, { once: true });
  });
}

/**
 * Reads an answer to its final event (`done` or `error`), which it returns. Each event is handed
 * to `onEvent` once. When the connection drops first, it reconnects to GET /chat/streams/{id}
 * with `Last-Event-ID`, calling `onReconnecting(attempt)` before each try; it gives up after
 * `maxAttempts` failed tries in a row, or at once when the server says the stream is gone.
 */
export async function readAnswer(response, options) {
  const { headers, signal, onEvent, onReconnecting, maxAttempts = 8 } = options;
  const streamId = response.headers.get("x-sluice-stream-id");
  let body = response.body;
  let lastId = 0;
  let failures = 0;
  for (;;) {
    try {
      for await (const event of readEvents(body)) {
        if (event.id !== undefined) {
          if (event.id <= lastId) continue; // already shown before the connection dropped
          lastId = event.id;
        }
        failures = 0;
        onEvent(event);
        if (event.event === "done" || event.event === "error") return event;
      }
    } catch (error) {
      if (signal.aborted) throw error;
      // A network error mid-answer: resume below.
    }
    if (!streamId) throw new StreamError("The connection was lost before the answer ended.");
    body = null;
    while (!body) {
      if (failures >= maxAttempts) {
        throw new StreamError("The connection was lost and reconnecting failed. Ask again.");
      }
      onReconnecting(failures + 1);
      await pause(Math.min(250 * 2 ** failures, 4000), signal);
      failures++;
      let resumed;
      try {
        resumed = await fetch(`/chat/streams/${encodeURIComponent(streamId)}`, {
          headers: { ...headers, "last-event-id": String(lastId) },
          signal,
        });
      } catch (error) {
        if (signal.aborted) throw error;
        continue; // still offline: try again
      }
      if (resumed.ok) body = resumed.body;
      else if (resumed.status < 500) {
        throw new StreamError("The answer could not be resumed.", resumed);
      }
    }
  }
}

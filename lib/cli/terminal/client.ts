/**
 * A client for sluice's `/chat` and `/conversations`, used by the terminal client. It asks for
 * the SSE view (`Accept: text/event-stream`) and hands each piece of text to a callback as it
 * arrives.
 */
import type { ChatDone } from "../../chat/encoding.ts";
import { createSseDecoder } from "../../stream/sse.ts";

/** Where sluice is and how to reach it. */
export interface ChatClientOptions {
  /** sluice's base URL, e.g. `http://localhost:8000`. */
  url: string;
  /** A gateway key, sent as `Authorization: Bearer`. */
  key?: string;
  fetch?: typeof fetch;
}

/** An error sluice (or the upstream through it) answered, in Anthropic's shape. */
export class ChatApiError extends Error {
  readonly status: number;
  readonly type: string;

  constructor(status: number, type: string, message: string) {
    super(message);
    this.name = "ChatApiError";
    this.status = status;
    this.type = type;
  }
}

/** A `/chat` request body (docs/chat.md lists every field). */
export interface ChatRequest {
  message: string;
  conversation_id?: string;
  model?: string;
  system?: string;
  max_tokens?: number;
}

function endpoint(options: ChatClientOptions, path: string): string {
  return new URL(path, options.url.endsWith("/") ? options.url : `${options.url}/`).href;
}

function headers(options: ChatClientOptions, accept: string): Headers {
  const result = new Headers({ "content-type": "application/json", accept });
  if (options.key) result.set("authorization", `Bearer ${options.key}`);
  return result;
}

async function apiError(response: Response): Promise<ChatApiError> {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body?.error?.message) {
      return new ChatApiError(response.status, String(body.error.type), body.error.message);
    }
  } catch {
    // Not JSON (a proxy's page): report the status.
  }
  return new ChatApiError(response.status, "http_error", `HTTP ${response.status}`);
}

/**
 * Creates a conversation and returns its id, or null when the server keeps none (no KV: 503),
 * in which case the caller keeps the history itself.
 */
export async function createConversation(
  options: ChatClientOptions,
  init: { system?: string; model?: string } = {},
): Promise<string | null> {
  const response = await (options.fetch ?? fetch)(endpoint(options, "conversations"), {
    method: "POST",
    headers: headers(options, "application/json"),
    body: JSON.stringify(init),
  });
  if (response.status === 503) {
    await response.body?.cancel();
    return null;
  }
  if (!response.ok) throw await apiError(response);
  const body = await response.json();
  return String(body.id);
}

/** Callbacks of {@link streamChat}. */
export interface StreamChatHandlers {
  onText(text: string): void;
  /**
   * The connection dropped mid-answer: called before each reconnect (attempt 1, 2, …), and with
   * 0 once events flow again.
   */
  onReconnecting?(attempt: number): void;
  signal?: AbortSignal;
  /** Failed reconnects in a row before giving up (default 8). */
  maxAttempts?: number;
  /** Waits before a reconnect; injectable so tests need not wait. */
  pause?: (ms: number) => Promise<void>;
}

const pauseFor = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** What one connection's events came to: the final event, or a drop before it. */
type Read = { done: ChatDone } | { failure: ChatApiError } | { dropped: true };

/**
 * Sends one message and streams the answer. Resolves with the final `done` payload; rejects
 * with a {@link ChatApiError} for an error answer (before or during the stream), or with the
 * signal's reason when aborted. When the connection drops mid-answer, it resumes from
 * `GET /chat/streams/{id}` with `Last-Event-ID` (events already seen are skipped, so each piece
 * of text is handed over once). Aborting asks the server to stop the answer
 * (`DELETE /chat/streams/{id}`): the server would otherwise finish it, as for a dropped client.
 */
export async function streamChat(
  options: ChatClientOptions,
  request: ChatRequest | { messages: unknown[]; model?: string; system?: string },
  handlers: StreamChatHandlers,
): Promise<ChatDone> {
  const doFetch = options.fetch ?? fetch;
  const { signal } = handlers;
  signal?.throwIfAborted();
  // Our own controller: on the caller's abort the server is told to stop first, then the
  // connection goes.
  const connection = new AbortController();
  let streamId: string | null = null;
  let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  const onAbort = async () => {
    if (streamId) {
      await doFetch(endpoint(options, `chat/streams/${encodeURIComponent(streamId)}`), {
        method: "DELETE",
        headers: headers(options, "application/json"),
      }).then((r) => r.body?.cancel()).catch(() => {});
    }
    connection.abort(signal?.reason);
    // A fetch that is not a network call (an in-process app) only sees its body cancelled.
    reader?.cancel(signal?.reason).catch(() => {});
  };
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    const response = await doFetch(endpoint(options, "chat"), {
      method: "POST",
      headers: headers(options, "text/event-stream"),
      body: JSON.stringify(request),
      signal: connection.signal,
    });
    if (!response.ok || !response.body) throw await apiError(response);
    streamId = response.headers.get("x-sluice-stream-id");
    let body: ReadableStream<Uint8Array> = response.body;
    let lastId = 0;
    let failures = 0;
    for (;;) {
      reader = body.getReader();
      const read = await readEvents(reader, response.status, (id) => {
        if (id <= lastId) return false; // seen before the connection dropped
        lastId = id;
        if (failures > 0) handlers.onReconnecting?.(0);
        failures = 0;
        return true;
      }, handlers.onText).finally(() => reader?.releaseLock());
      signal?.throwIfAborted();
      if ("done" in read) return read.done;
      if ("failure" in read) throw read.failure;
      if (!streamId) {
        throw new ChatApiError(
          response.status,
          "incomplete",
          "the answer ended before it was done",
        );
      }
      body = await resume(options, streamId, lastId, failures, handlers, connection.signal);
      failures = 1;
    }
  } finally {
    signal?.removeEventListener("abort", onAbort);
  }
}

/** Reads one connection's events; `fresh(id)` says whether an event id is new. */
async function readEvents(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  status: number,
  fresh: (id: number) => boolean,
  onText: (text: string) => void,
): Promise<Read> {
  let final: Read | undefined;
  const decoder = createSseDecoder((event) => {
    if (final) return;
    if (event.id !== undefined && !fresh(Number(event.id))) return;
    const data = JSON.parse(event.data);
    if (event.event === "text") onText(String(data.text));
    else if (event.event === "done") final = { done: data };
    else if (event.event === "error") {
      final = { failure: new ChatApiError(status, data.error.type, data.error.message) };
    }
  });
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      decoder.feed(value);
      if (final) {
        await reader.cancel().catch(() => {});
        return final;
      }
    }
    decoder.end();
  } catch {
    // The connection dropped (a network error mid-body): the caller resumes.
  }
  return final ?? { dropped: true };
}

/** Reconnects to a stream after event `after`, retrying with backoff; returns its body. */
async function resume(
  options: ChatClientOptions,
  streamId: string,
  after: number,
  failuresSoFar: number,
  handlers: StreamChatHandlers,
  signal: AbortSignal,
): Promise<ReadableStream<Uint8Array>> {
  const max = handlers.maxAttempts ?? 8;
  for (let attempt = failuresSoFar + 1;; attempt++) {
    handlers.onReconnecting?.(attempt);
    await (handlers.pause ?? pauseFor)(Math.min(250 * 2 ** (attempt - 1), 4000));
    signal.throwIfAborted();
    let response: Response;
    try {
      const resumeHeaders = headers(options, "text/event-stream");
      resumeHeaders.set("last-event-id", String(after));
      response = await (options.fetch ?? fetch)(
        endpoint(options, `chat/streams/${encodeURIComponent(streamId)}`),
        { headers: resumeHeaders, signal },
      );
    } catch (error) {
      signal.throwIfAborted();
      if (attempt >= max) throw error;
      continue;
    }
    if (response.ok && response.body) return response.body;
    // Gone (404), refused (4xx): say why. A 5xx may pass: try again.
    if (response.status < 500 || attempt >= max) throw await apiError(response);
    await response.body?.cancel();
  }
}
